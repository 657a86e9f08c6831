"""`fusion synth`: write a synthetic world in the nuScenes layout, all or nothing.

Scenes are generated in parallel worker processes into a hidden sibling folder, which is renamed into place only
once every table, map and sensor file is written. A failure (bad argument, full disk, interrupt) removes it.
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from fusion.data.synth.catalog import ATTRIBUTES, CATEGORIES, VISIBILITY
from fusion.data.synth.city import CityLayout
from fusion.data.synth.presets import LOCATIONS, Preset
from fusion.data.synth.rig import CAMERAS, LIDAR_CHANNEL
from fusion.data.synth.scene import SceneJob, generate_scene, token

TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
          "scene", "sample", "sample_data", "sample_annotation", "map")  # fmt: skip
WORLD_FILE = "synth_world.json"
SPLITS_FILE = "splits.json"


class SynthError(RuntimeError):
    """A synthetic world could not be written; nothing was left behind."""


def _logfile(index: int, location: str) -> tuple[str, int]:
    """A nuScenes-style log name and the first keyframe's timestamp (microseconds) for scene `index`."""
    boston = location == "boston-seaport"
    tz = timezone(timedelta(hours=-4 if boston else 8))
    start = datetime(2018, 7, 24, 11, 22, 45, tzinfo=tz) + timedelta(days=index % 60, minutes=7 * index)
    vehicle = "n008" if boston else "n015"
    return f"{vehicle}-{start:%Y-%m-%d-%H-%M-%S}{start:%z}", int(start.timestamp()) * 1_000_000 + 412_000


def scene_jobs(preset: Preset, seed: int, root: str | os.PathLike,
               buildings_seed: int | None = None) -> list[SceneJob]:  # fmt: skip
    """The generation job of every scene of `preset`; `scene.build_world(job)` rebuilds a scene's world."""
    jobs = []
    for i, (name, location, _) in enumerate(preset.scenes):
        logfile, start_us = _logfile(i, location)
        jobs.append(SceneJob(i, name, location, seed, preset, str(root), start_us, logfile, buildings_seed))
    return jobs


def estimate_bytes(preset: Preset) -> int:
    """A generous estimate of the dataset's size on disk, for the free-space check."""
    pixels = 1600 * 900 * preset.image_scale**2
    per_sample = 6 * pixels * 0.35 + preset.sweeps_per_sample * 32 * preset.lidar_azimuth_steps * 20
    return int(len(preset.scenes) * preset.samples_per_scene * per_sample * 1.3) + 20_000_000


def synthesize(out: str | os.PathLike, preset: Preset, seed: int = 0, overwrite: bool = False,
               workers: int | None = None, log=print, buildings_seed: int | None = None) -> dict:  # fmt: skip
    """Generate `preset` into `out`. Returns a summary (sizes, counts, seconds). Raises SynthError.

    `buildings_seed` draws the buildings of each location from another seed than everything else (routes, agents,
    rigs, light, noise, tokens): with the default world's seed, a world of new scenes among the same buildings."""
    out = Path(out)
    for name, value in (("--seed", seed), ("--buildings-seed", buildings_seed)):
        if value is not None and not 0 <= value < 2**31:
            raise SynthError(f"{name} must be in [0, 2**31), got {value}")
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SynthError(f"{out}: folder exists and is not empty; pass --overwrite to replace it")
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    need, free = estimate_bytes(preset), shutil.disk_usage(parent).free
    if free < need:
        raise SynthError(f"{parent}: not enough free disk space ({free / 1e6:.0f} MB free, about {need / 1e6:.0f} MB "
                         "needed)")  # fmt: skip
    tmp = parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    try:
        summary = _write(tmp, preset, seed, workers, log, buildings_seed)
        if out.exists():
            old = parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        what = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise SynthError(f"{e.filename or out}: {what}; nothing was written to {out}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return summary


def _write(root: Path, preset: Preset, seed: int, workers: int | None, log, buildings_seed: int | None = None) -> dict:
    channels = [LIDAR_CHANNEL] + [c[0] for c in CAMERAS]
    for ch in channels:
        (root / "samples" / ch).mkdir(parents=True)
    (root / "sweeps" / LIDAR_CHANNEL).mkdir(parents=True)
    (root / "maps").mkdir()
    (root / preset.version).mkdir()
    jobs = scene_jobs(preset, seed, root, buildings_seed)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    log(f"generating {len(jobs)} scenes x {preset.samples_per_scene} samples with {workers} worker(s) ...")
    if workers == 1:
        results = [generate_scene(j) for j in jobs]
    else:
        # One thread per worker process: spawned children read these before numpy and open3d start their pools.
        saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        os.environ.update(dict.fromkeys(_THREAD_VARS, "1"))
        try:
            with mp.get_context("spawn").Pool(workers, initializer=_single_threaded) as pool:
                results = pool.map(generate_scene, jobs, chunksize=1)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    tables: dict[str, list] = {t: [] for t in TABLES}
    tables["category"] = [{"token": token(seed, "category", name), "name": name, "description": desc, "index": i}
                          for i, (name, desc) in enumerate(CATEGORIES.items())]  # fmt: skip
    tables["attribute"] = [{"token": token(seed, "attribute", n), "name": n, "description": d}
                           for n, d in ATTRIBUTES.items()]  # fmt: skip
    tables["visibility"] = [{"token": t, "level": lvl, "description": d} for t, lvl, d in VISIBILITY]
    tables["sensor"] = [{"token": token(seed, "sensor", ch), "channel": ch,
                         "modality": "lidar" if ch == LIDAR_CHANNEL else "camera"} for ch in channels]  # fmt: skip
    generator = {"seed": seed, "preset": asdict(preset)}
    if buildings_seed is not None:
        generator["buildings_seed"] = buildings_seed
    world = {"generator": generator, "scenes": [], "instances": {}}
    for r in results:
        for name, records in r["tables"].items():
            tables[name].extend(records)
        world["scenes"].append(r["world"]["scene"])
        world["instances"].update(r["world"]["instances"])

    # One map per location (the nuScenes semantic prior: drivable surface and sidewalks, 0.1 m per pixel).
    for location in LOCATIONS:
        logs = [lg["token"] for lg in tables["log"] if lg["location"] == location]
        if not logs:
            continue
        map_token = token(seed, "map", location)
        filename = f"maps/{map_token}.png"
        city = CityLayout(right_hand_traffic=location == "boston-seaport")
        Image.fromarray(city.map_mask()).save(root / filename, optimize=True)
        tables["map"].append({"token": map_token, "log_tokens": logs, "category": "semantic_prior",
                              "filename": filename})  # fmt: skip

    for name in TABLES:
        _dump(tables[name], root / preset.version / f"{name}.json")
    splits = {f"synth_{s}": [n for n, _, sp in preset.scenes if sp == s] for s in ("train", "val")}
    _dump(splits, root / preset.version / SPLITS_FILE)
    _dump(world, root / preset.version / WORLD_FILE)
    n_points = [
        os.path.getsize(root / sd["filename"]) // 20 for sd in tables["sample_data"] if sd["fileformat"] == "pcd"
    ]
    return {
        "version": preset.version, "preset": preset.name, "seed": seed, "scenes": len(tables["scene"]),
        "samples": len(tables["sample"]), "sample_data": len(tables["sample_data"]),
        "annotations": len(tables["sample_annotation"]), "instances": len(tables["instance"]),
        "mean_points_per_sweep": float(np.mean(n_points)) if n_points else 0.0,
    }  # fmt: skip


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _single_threaded() -> None:
    from fusion.data.synth import render

    render.RAY_THREADS = 1


def _dump(obj, path: Path) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=0)
