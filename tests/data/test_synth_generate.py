"""`fusion synth`: same seed same bytes, all-or-nothing output, clear errors."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest

from fusion.cli import main
from fusion.data.synth import generate
from fusion.data.synth.generate import SynthError, synthesize
from fusion.data.synth.presets import get_preset

QUIET = {"log": lambda *_: None}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def _small():
    return get_preset("tiny").with_sizes(samples_per_scene=2, image_scale=0.1, lidar_azimuth_steps=64)


def test_same_seed_same_bytes_whatever_the_worker_count(tiny_root, tmp_path):
    again = tmp_path / "again"
    synthesize(again, get_preset("tiny"), seed=0, workers=2, **QUIET)
    assert _digest(again) == _digest(Path(tiny_root))


def test_another_seed_another_world(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    synthesize(a, _small(), seed=1, workers=1, **QUIET)
    synthesize(b, _small(), seed=2, workers=1, **QUIET)
    da, db = _digest(a), _digest(b)
    assert da.keys() != db.keys() or da != db
    assert json.loads((a / "v1.0-mini" / "scene.json").read_text())[0]["name"] == "scene-0061"


def test_refuses_a_non_empty_folder_and_keeps_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(SynthError, match=r"not empty.*--overwrite"):
        synthesize(out, _small(), **QUIET)
    assert (out / "precious.txt").read_text() == "keep me"


def test_overwrite_replaces_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    synthesize(out, _small(), overwrite=True, workers=1, **QUIET)
    assert not (out / "old.txt").exists() and (out / "v1.0-mini" / "sample.json").exists()


def test_output_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SynthError, match="not a folder"):
        synthesize(f, _small(), **QUIET)


def test_disk_full_leaves_nothing_and_keeps_the_old_dataset(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(generate, "_dump", full)
    with pytest.raises(SynthError, match="disk full"):
        synthesize(out, _small(), overwrite=True, workers=1, **QUIET)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial folder left behind
    assert (out / "old.txt").read_text() == "old"


def test_not_enough_free_space_is_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.setattr(generate.shutil, "disk_usage", lambda _: type("U", (), {"free": 1000})())
    with pytest.raises(SynthError, match="not enough free disk space"):
        synthesize(tmp_path / "out", _small(), **QUIET)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "huge"], "invalid choice"),
        (["--samples-per-scene", "1"], "samples_per_scene"),
        (["--image-scale", "3"], "image_scale"),
        (["--scenes", "0"], "--scenes"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, capsys, args, message):
    out = ["synth", "--out", str(tmp_path / "o"), *args]
    if message == "invalid choice":  # argparse itself exits with status 2
        with pytest.raises(SystemExit) as e:
            main(out)
        assert e.value.code == 2
    else:
        assert main(out) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_writes_a_world_and_prints_its_summary(tmp_path, capsys):
    out = tmp_path / "w"
    args = ["synth", "--out", str(out), "--preset", "tiny", "--scenes", "2", "--samples-per-scene", "2",
            "--image-scale", "0.1", "--lidar-azimuth-steps", "64", "--workers", "1"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["samples"] == 4 and summary["scenes"] == 2 and summary["bytes"] > 0
    assert main(["info", "--dataroot", str(out), "--version", "v1.0-mini"]) == 0
    assert "scene-0103" in capsys.readouterr().out
    assert main(["info", "--dataroot", str(out), "--version", "v1.0-trainval"]) == 2
    assert "no such version folder" in capsys.readouterr().err
