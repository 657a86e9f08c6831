"""The cluster recipes of docs/training.md on this CPU: two torchrun nodes, and a SLURM job that is signalled,
requeued and resumed. Each "node" is a process group of this machine with its own cache folder, talking gloo over
127.0.0.1; SLURM is its environment variables and a stand-in `scontrol` that records what it is asked."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
FUSION = str(Path(sys.executable).with_name("fusion"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit_args(tiny_root: str, out: Path, *extra: str) -> list[str]:
    return ["fit", "--config", CONFIG, "--data.dataroot", tiny_root, "--trainer.accelerator", "cpu",
            "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(out),
            "--trainer.logger.init_args.save_dir", str(out / "logs"), *extra]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    # one thread a process: the two "nodes" share this machine's cores, and the same reduction order in every
    # process makes two nodes of one process and one node of two give the same weights bit for bit
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _state(out: Path, name: str = "last.ckpt") -> dict:
    (path,) = sorted(out.rglob(name), key=lambda p: p.stat().st_mtime)[-1:]
    return torch.load(path, map_location="cpu", weights_only=True)


def test_two_torchrun_nodes_train_as_one_node_of_two_processes(tiny_root, tmp_path):
    """docs/training.md's torchrun recipe with `--nnodes 2` (one process a node, c10d rendezvous): each node builds
    the split indexes into its own cache (`prepare_data` once per node), and the weights after two steps equal a
    `--trainer.devices 2` fit's on one node."""
    port = _free_port()
    two_nodes = tmp_path / "two_nodes"
    cmd = ["torchrun", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
           "--rdzv_endpoint", f"127.0.0.1:{port}", FUSION,
           *_fit_args(tiny_root, two_nodes / "out", "--trainer.devices", "1", "--trainer.num_nodes", "2",
                      "--trainer.strategy", "ddp", "--trainer.max_epochs", "2")]  # fmt: skip
    cmd[0] = str(Path(sys.executable).with_name("torchrun"))
    nodes = [subprocess.Popen(cmd, env=_env(FUSION_CACHE_DIR=str(two_nodes / f"cache{n}")), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for n in range(2)]  # fmt: skip
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [log[-3000:] for log in logs]
    assert "MEMBER: 2/2" in "".join(logs), logs[0][-2000:]
    for n in range(2):  # each node's local rank 0 wrote its own node's cache
        assert len(list((two_nodes / f"cache{n}").glob("index-*.npz"))) == 2, n

    one_node = tmp_path / "one_node"
    cmd = [FUSION, *_fit_args(tiny_root, one_node / "out", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                              "--trainer.max_epochs", "2")]  # fmt: skip
    done = subprocess.run(cmd, env=_env(FUSION_CACHE_DIR=str(one_node / "cache")), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    a, b = _state(two_nodes / "out"), _state(one_node / "out")
    assert a["global_step"] == b["global_step"] > 0
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def _slurm_tasks(tiny_root: str, out: Path, port: int, epochs: int) -> list[subprocess.Popen]:
    """Two SLURM tasks on two "nodes" (`srun` with --nodes=2 --ntasks-per-node=1), one data worker each. Each task
    leads its own process group, as slurmstepd signals every process of a step, data workers included."""
    stand_in = out / "bin"
    stand_in.mkdir(parents=True, exist_ok=True)
    scontrol = stand_in / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {out / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    args = _fit_args(tiny_root, out / "run", "--trainer.devices", "1", "--trainer.num_nodes", "2",
                     "--trainer.strategy", "ddp_find_unused_parameters_true", "--trainer.max_epochs", str(epochs),
                     "--data.num_workers", "1")  # fmt: skip
    tasks = []
    for n in range(2):
        env = _env(PATH=f"{stand_in}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_JOB_NAME="train",
                   SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", SLURM_NNODES="2", SLURM_PROCID=str(n),
                   SLURM_NODEID=str(n), SLURM_LOCALID="0", SLURM_NODELIST="127.0.0.1", MASTER_PORT=str(port),
                   FUSION_CACHE_DIR=str(out / f"cache{n}"))  # fmt: skip
        with open(out / f"task{n}_{len(list(out.glob(f'task{n}_*.log')))}.log", "w") as log:  # the task's copy stays
            tasks.append(subprocess.Popen([FUSION, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))  # fmt: skip
    return tasks


@contextlib.contextmanager
def _ended(tasks: list[subprocess.Popen], timeout: float):
    """Runs the block, then waits for the tasks to end by themselves; what is left after `timeout` is killed (and
    the test fails on its exit code), as SLURM would at the job's time limit."""
    try:
        yield
        deadline = time.monotonic() + timeout
        while any(t.poll() is None for t in tasks) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for task in tasks:
            if task.poll() is None:
                os.killpg(task.pid, signal.SIGKILL)
            task.wait(timeout=60)


def _wait_for(condition, tasks: list[subprocess.Popen], what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        ended = [t.returncode for t in tasks if t.poll() is not None]
        assert not ended, f"a task ended (exit {ended}) while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.2)


def test_a_signalled_slurm_job_saves_requeues_and_resumes(tiny_root, tmp_path):
    """The SLURM recipe's `--signal=SIGUSR1@90`, sent to every process of both tasks: at the end of a step both ranks
    save `hpc_ckpt_1.ckpt` (the same weights as the `last.ckpt` of the step they stop at), rank 0 requeues the job
    once, and both end cleanly; the data workers, signalled too, live through it. The requeued job, the same
    command, resumes from that checkpoint and finishes."""
    out, port = tmp_path / "job", _free_port()
    out.mkdir()
    logs = lambda: "".join(p.read_text() for p in sorted(out.glob("task*.log")))  # noqa: E731
    tasks = _slurm_tasks(tiny_root, out, port, epochs=1000)
    with _ended(tasks, timeout=120):
        _wait_for(lambda: any((out / "run").rglob("last.ckpt")), tasks, "first epoch")  # the workers are running
        for task in tasks:
            os.killpg(task.pid, signal.SIGUSR1)
    assert [t.returncode for t in tasks] == [0, 0], logs()[-3000:]
    assert "Traceback" not in logs(), logs()[-3000:]
    assert (out / "scontrol.log").read_text() == "requeue 4242\n"  # rank 0 alone asks, once
    hpc = out / "run" / "hpc_ckpt_1.ckpt"
    saved, last = _state(out / "run", hpc.name), _state(out / "run")
    assert saved["global_step"] == last["global_step"] > 0
    assert all(torch.equal(saved["state_dict"][k], last["state_dict"][k]) for k in saved["state_dict"])

    epochs = saved["epoch"] + 3
    tasks = _slurm_tasks(tiny_root, out, _free_port(), epochs=epochs)
    with _ended(tasks, timeout=300):
        pass
    assert [t.returncode for t in tasks] == [0, 0], logs()[-3000:]
    assert f"Restored all states from the checkpoint at {hpc}" in (out / "task0_1.log").read_text()
    resumed = _state(out / "run")
    assert resumed["epoch"] == epochs - 1 and resumed["global_step"] > saved["global_step"]
