"""`fusion fit|predict` end to end on the tiny world: LightningCLI, checkpoints, results JSON, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fusion.cli import main
from fusion.data.datamodule import NuScenesDataModule

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def _args(tiny_root: str, out: Path, config: str = CONFIG) -> list[str]:
    return [
        *("--config", config, "--data.dataroot", tiny_root, "--data.cache_dir", str(out / "cache")),
        *("--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out / "logs")),
    ]


def test_fit_predict_and_resume(tiny_root, tmp_path, capsys):
    main(["fit", *_args(tiny_root, tmp_path), "--trainer.max_epochs", "1"])
    ckpts = sorted(tmp_path.rglob("last.ckpt"))
    assert ckpts, list(tmp_path.rglob("*"))
    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)  # plain data: no unpickling of objects
    steps = state["global_step"]  # one epoch's
    assert steps > 0 and "model" in state["hyper_parameters"]
    assert list(tmp_path.rglob("config.yaml")), "the resolved config is saved beside the run"
    # Resume the interrupted run from its last checkpoint for one more epoch.
    main(["fit", *_args(tiny_root, tmp_path), "--trainer.max_epochs", "2", "--ckpt_path", str(ckpts[0])])
    newest = max(tmp_path.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert torch.load(newest, map_location="cpu", weights_only=True)["global_step"] == 2 * steps
    # Predict writes the official results JSON for every sample of the split.
    results = tmp_path / "results.json"
    main(["predict", *_args(tiny_root, tmp_path), "--ckpt_path", str(ckpts[0]), "--results", str(results)])
    content = json.loads(results.read_text())
    assert len(content["results"]) == 4 and content["meta"]["use_lidar"] and content["meta"]["use_camera"]
    assert all(len(v) <= 500 for v in content["results"].values())
    # Lightning restores the checkpoint's hyper-parameters over the config and command line; a prediction setting
    # given there applies all the same, and a size that describes the weights stays the checkpoint's, both said.
    capsys.readouterr()
    again = tmp_path / "results_power1.json"
    main(["predict", *_args(tiny_root, tmp_path), "--ckpt_path", str(ckpts[0]), "--results", str(again),
          "--model.model.refine_score_power", "1.0", "--model.model.dim", "8"])  # fmt: skip
    err = capsys.readouterr().err
    assert "model.model.refine_score_power = 1.0 (the checkpoint's was 0.7)" in err, err
    assert "model.model.dim = 16 from the checkpoint, not 8" in err, err
    boxes = lambda c: sorted(tuple(b["translation"]) for v in c["results"].values() for b in v)  # noqa: E731
    scores = lambda c: sorted(b["detection_score"] for v in c["results"].values() for b in v)  # noqa: E731
    other = json.loads(again.read_text())
    assert boxes(other) == boxes(content)  # the same boxes (the power only rescores them) ...
    assert scores(other) != scores(content)  # ... scored by the predicted IoU alone
    # `fusion test` evaluates the test split (the validation split when the config names none) as validation does
    main(["test", *_args(tiny_root, tmp_path / "test"), "--ckpt_path", str(ckpts[0])])
    assert _logged(tmp_path / "test" / "logs", "test/loss") and _logged(tmp_path / "test" / "logs", "test/nds")
    # whether validation evaluates is the command's choice, not the checkpoint's
    capsys.readouterr()
    main(["validate", *_args(tiny_root, tmp_path / "quick"), "--ckpt_path", str(ckpts[0]),
          "--model.evaluate_every_epoch", "false"])  # fmt: skip
    assert "model.evaluate_every_epoch = False (the checkpoint's was True)" in capsys.readouterr().err
    assert _logged(tmp_path / "quick" / "logs", "val/loss") and not _logged(tmp_path / "quick" / "logs", "val/nds")


def test_a_fit_bounded_by_time_alone(tiny_root, tmp_path):
    """Neither max_steps nor max_epochs, only max_time: the learning-rate schedule follows the clock alone."""
    main(["fit", *_args(tiny_root, tmp_path), "--trainer.max_epochs", "null", "--trainer.max_time", "00:00:00:03",
          "--trainer.limit_val_batches", "0"])  # fmt: skip
    assert torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=True)["global_step"] > 0


def test_a_fit_stopped_between_validations_keeps_its_last_steps(tiny_root, tmp_path):
    """A fit that stops mid-epoch (`max_time` in the CPU configs; `max_steps` here, the same stop) after a validation
    leaves a last.ckpt at its final step, not at the last validation (the tiny world has 2 steps per epoch)."""
    main(["fit", *_args(tiny_root, tmp_path), "--trainer.max_epochs", "10", "--trainer.max_steps", "3"])
    last = next(tmp_path.rglob("last.ckpt"))
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fit_clips_gradients_at_each_precision(tiny_root, tmp_path, precision):
    """The optimiser (fused in full precision, multi-tensor under mixed precision, where Lightning refuses to clip
    a fused one's gradients) trains with the configs' gradient clipping at both precisions the configs use."""
    main(["fit", *_args(tiny_root, tmp_path), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
          "--trainer.precision", precision, "--trainer.gradient_clip_val", "1.0"])  # fmt: skip
    state = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def _monitoring(tmp_path: Path, metric: str, mode: str) -> str:
    """tiny.yaml with its best-checkpoint callback monitoring `metric` (the CPU configs monitor val/nds)."""
    was, now = "monitor: val/loss\n        mode: min", f"monitor: {metric}\n        mode: {mode}"
    text = Path(CONFIG).read_text().replace(was, now)
    assert f"monitor: {metric}" in text
    path = tmp_path / f"tiny_{metric.replace('/', '_')}.yaml"
    path.write_text(text)
    return str(path)


def _logged(root: Path, metric: str) -> list[float]:
    """The values of `metric` in the CSV logs under root."""
    import csv

    rows = [row for f in sorted(root.rglob("metrics.csv")) for row in csv.DictReader(f.open())]
    return [float(row[metric]) for row in rows if row.get(metric)]


def test_two_process_cpu_ddp(tiny_root, tmp_path):
    """`--trainer.strategy ddp --trainer.devices 2` on CPU (gloo): the launcher re-runs the command for rank 1. The
    validation metrics cover the whole split (each rank's part gathered, evaluated on rank 0, logged on both), so a
    checkpoint callback monitoring val/nds, as the CPU configs' does, finds it on every rank, and its value is the
    single-process `fusion validate` figure of the same weights."""
    import os
    import subprocess
    import sys

    fusion = str(Path(sys.executable).with_name("fusion"))
    env = dict(os.environ, FUSION_CACHE_DIR=str(tmp_path / "cache"))
    config = _monitoring(tmp_path, "val/nds", "max")
    cmd = [fusion, "fit", *_args(tiny_root, tmp_path, config), "--trainer.strategy", "ddp", "--trainer.devices", "2",
           "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world_size=2" in done.stderr or "MEMBER: 2/2" in done.stderr + done.stdout
    assert "self.log('val/nds'" not in done.stderr  # rank 0's figure on every rank: nothing to sync, no advice to
    assert list(tmp_path.rglob("last.ckpt")) and list(tmp_path.rglob("epoch=0*.ckpt")), list(tmp_path.rglob("*.ckpt"))
    (nds_ddp,) = _logged(tmp_path / "logs", "val/nds")
    single = tmp_path / "single"
    main(["validate", *_args(tiny_root, single, config), "--ckpt_path", str(next(tmp_path.rglob("last.ckpt")))])
    (nds_single,) = _logged(single / "logs", "val/nds")
    assert nds_ddp == pytest.approx(nds_single, abs=1e-6)
    # Prediction under DDP gathers both ranks' samples into one results file.
    results = tmp_path / "ddp_results.json"
    ckpt = str(next(tmp_path.rglob("last.ckpt")))
    cmd = [fusion, "predict", *_args(tiny_root, tmp_path), "--trainer.strategy", "ddp", "--trainer.devices", "2",
           "--trainer.accelerator", "cpu", "--ckpt_path", ckpt, "--results", str(results)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(json.loads(results.read_text())["results"]) == 4


def test_cpu_ddp_trains_through_batches_without_a_modality(tiny_root, tmp_path):
    """Every training sample LiDAR-only, so the image encoder gets no gradient on either rank: DDP that looks for
    unused parameters (the GPU config's strategy) trains three steps through it, where plain `ddp` stops at the
    second ("parameters that were not used in producing the loss")."""
    import os
    import subprocess
    import sys

    fusion = str(Path(sys.executable).with_name("fusion"))
    env = dict(os.environ, FUSION_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [fusion, "fit", *_args(tiny_root, tmp_path), "--trainer.strategy", "ddp_find_unused_parameters_true",
           "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.max_epochs", "3",
           "--data.camera_only_prob", "0", "--data.lidar_only_prob", "1"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    last = next(tmp_path.rglob("last.ckpt"))
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3


def test_the_training_configs_log_csv_and_tensorboard_side_by_side(tiny_root, tmp_path):
    """The default's two loggers (CSV and TensorBoard), moved into a run folder as `fusion run` moves them, both write
    the fit's figures under the run's logs/, each into its own version folder (their counters are their own)."""
    import struct

    import yaml
    from tensorboardX.proto import event_pb2

    from fusion.pipeline import relocate_outputs

    default = yaml.safe_load((Path(CONFIG).parent / "synthetic_cpu.yaml").read_text())
    loggers = default["trainer"]["logger"]
    assert [lg["class_path"].rsplit(".", 1)[1] for lg in loggers] == ["CSVLogger", "TensorBoardLogger"]
    cfg = yaml.safe_load(Path(CONFIG).read_text())
    cfg["trainer"]["logger"] = loggers
    relocate_outputs(cfg, tmp_path / "run", tmp_path / "run" / "checkpoints")
    config = tmp_path / "tiny_two_loggers.yaml"
    config.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(config), "--data.dataroot", tiny_root, "--data.cache_dir", str(tmp_path / "cache"),
          "--trainer.max_steps", "2"])  # fmt: skip
    csvs = list((tmp_path / "run" / "logs").rglob("metrics.csv"))
    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    assert [p.parent.relative_to(tmp_path / "run" / "logs") for p in (*csvs, *events)] == [
        Path("lightning_logs/version_0"), Path("tensorboard/version_0")], (csvs, events)  # fmt: skip
    assert _logged(tmp_path / "run" / "logs", "train/loss")
    # the event file holds the same scalars, read back with its own record format (length, crc, event, crc)
    data, tags = events[0].read_bytes(), set()
    while data:
        (n,) = struct.unpack("<Q", data[:8])
        event = event_pb2.Event.FromString(data[12 : 12 + n])
        tags.update(v.tag for v in event.summary.value)
        data = data[12 + n + 4 :]
    assert "train/loss" in tags, tags


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_parses(config, capsys):
    """`fusion fit --config X --print_config` for every file in configs/, so that none rots."""
    from fusion.train import run_lightning

    with pytest.raises(SystemExit) as done:
        run_lightning(["fit", "--config", str(config), "--print_config"])
    assert done.value.code in (0, None)
    assert "model:" in capsys.readouterr().out


@pytest.mark.parametrize("config", [c for c in CONFIGS if "class_path" not in c.read_text().split("model:")[1][:80]],
                         ids=lambda c: c.stem)  # fmt: skip
def test_detection_configs_instantiate(config, tmp_path):
    """The detection configs build their model, data module and trainer (on this CPU, one device)."""
    import yaml

    from fusion.pipeline import relocate_outputs
    from fusion.system import DetectionSystem
    from fusion.train import FusionCLI

    cfg = yaml.safe_load(config.read_text())
    relocate_outputs(cfg, tmp_path, tmp_path / "checkpoints")  # every logger's and checkpoint's folder
    (tmp_path / config.name).write_text(yaml.safe_dump(cfg))
    args = ["--config", str(tmp_path / config.name), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.num_nodes", "1", "--trainer.strategy", "auto", "--trainer.precision", "32-true"]  # fmt: skip
    cli = FusionCLI(DetectionSystem, NuScenesDataModule, args=args, run=False, save_config_callback=None)
    assert isinstance(cli.model, DetectionSystem)
    grid = cli.model.box_coder.grid
    if config.stem != "tiny":  # the tiny world is 25 m across
        assert grid.x_range[1] >= 50.0 and grid.y_range[1] >= 50.0, "the grid must reach the devkit's 50 m car range"
    assert cli.model.model.image_encoder.image_size == tuple(cli.datamodule.hparams.image_size)[::-1]


def test_a_fit_without_a_step_budget_follows_the_clock():
    """`total` None (`max_time` alone): warm-up and decay follow the clock; without a clock there is no schedule."""
    from fusion.system import lr_factor

    assert lr_factor(10, None, 0.1, time_fraction=0.05) == 0.5 and lr_factor(10, None, 0.1, time_fraction=1.0) == 0.01
    assert lr_factor(10, None, 0.1, time_fraction=0.55) == lr_factor(55, 100, 0.1)
    with pytest.raises(ValueError, match="budget"):
        lr_factor(10, None, 0.1)


def test_learning_rate_follows_steps_or_time_whichever_is_further():
    from fusion.system import lr_factor

    assert lr_factor(0, 100, 0.1) == 0.1 and lr_factor(9, 100, 0.1) == 1.0  # warm-up over 10 steps
    assert abs(lr_factor(55, 100, 0.1) - 0.505) < 1e-9  # half-way through the cosine
    assert abs(lr_factor(100, 100, 0.1) - 0.01) < 1e-9
    # the time budget is 55 % spent after 20 steps: the schedule follows the clock
    assert lr_factor(20, 100, 0.1, time_fraction=0.55) == lr_factor(55, 100, 0.1)
    assert abs(lr_factor(20, 100, 0.1, time_fraction=1.0) - 0.01) < 1e-9
    assert lr_factor(20, 100, 0.1, time_fraction=0.01) == lr_factor(20, 100, 0.1)


def test_ddp_ranks_share_rank_zeros_clock():
    """Two gloo ranks whose clocks read 30 % and 60 % of a `max_time` budget: both schedules follow rank 0's, so the
    replicas take equal steps (each on its own clock, rank 1's learning rate would be 0.69 of the peak, not 0.93)."""
    import os
    import socket
    import subprocess
    import sys

    from fusion.system import lr_factor

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = str(Path(__file__).with_name("ddp_clock_worker.py"))
    env = dict(os.environ, CLOCK_PORT=str(port))
    procs = [subprocess.Popen([sys.executable, worker, str(r)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    ranks = [[float(x) for x in out.split()] for out, _ in outs]
    assert ranks[0] == ranks[1] and len(ranks[0]) == 4
    assert (
        ranks[0][-1] == pytest.approx(lr_factor(3, 10_000, 0.05, 0.3)) != pytest.approx(lr_factor(3, 10_000, 0.05, 0.6))
    )


def test_the_loss_breakdown_is_logged_only_on_the_steps_lightning_writes(tiny_root, tmp_path, monkeypatch):
    """`writes_step_logs`: the training step skips the breakdown's `self.log` calls (~0.65 ms each) on steps whose
    on-step values Lightning does not write. The CSV log is the same as when every step logs everything."""
    import csv

    import fusion.system

    def fit(out: Path) -> list[dict]:
        main(["fit", *_args(tiny_root, out), "--trainer.max_steps", "5", "--trainer.max_epochs", "3",
              "--trainer.log_every_n_steps", "2", "--trainer.limit_val_batches", "0"])  # fmt: skip
        (log,) = out.rglob("metrics.csv")
        return list(csv.DictReader(log.open()))

    calls = []
    real = fusion.system.writes_step_logs
    monkeypatch.setattr(fusion.system, "writes_step_logs", lambda module: calls.append(real(module)) or calls[-1])
    gated = fit(tmp_path / "gated")
    assert calls == [False, True, False, True, False]  # steps 2 and 4 of 5 are written
    monkeypatch.setattr(fusion.system, "writes_step_logs", lambda module: True)
    everything = fit(tmp_path / "everything")
    assert gated == everything and len(gated) == 2
    assert {"train/loss", "train/heatmap"} <= {k for row in gated for k, v in row.items() if v}
