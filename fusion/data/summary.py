"""A readable summary of a nuScenes dataroot (real or synthetic), read through the devkit."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A dataroot or version that is not a loadable nuScenes layout; the message names the path."""


def check_layout(dataroot: str | os.PathLike, version: str) -> Path:
    """Fail early, naming the path, when `dataroot/version` is not a nuScenes table folder."""
    root = Path(dataroot)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataroot does not exist")
    table_root = root / version
    if not table_root.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "sample.json").exists())
        raise DatasetError(f"{table_root}: no such version folder (found: {', '.join(found) or 'none'})")
    from fusion.data.synth.generate import TABLES

    missing = [t for t in TABLES if not (table_root / f"{t}.json").is_file()]
    if missing:
        raise DatasetError(f"{table_root}: missing tables {', '.join(m + '.json' for m in missing)}")
    return table_root


def summarize(dataroot: str | os.PathLike, version: str) -> str:
    table_root = check_layout(dataroot, version)
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.nuscenes import NuScenes

    try:
        nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (AssertionError, KeyError, json.JSONDecodeError) as e:
        raise DatasetError(f"{table_root}: the devkit cannot load it: {e!r}") from e

    lines = [f"nuScenes {version} at {dataroot}"]
    world_file = table_root / "synth_world.json"
    if world_file.exists():
        gen = json.loads(world_file.read_text())["generator"]
        buildings = f", buildings of seed {gen['buildings_seed']}" if "buildings_seed" in gen else ""
        lines[0] += f"  (synthetic: preset {gen['preset']['name']!r}, seed {gen['seed']}{buildings})"
    lines.append(f"{len(nusc.scene)} scenes, {len(nusc.sample)} samples, {len(nusc.sample_data)} sample_data, "
                 f"{len(nusc.instance)} instances, {len(nusc.sample_annotation)} annotations")  # fmt: skip
    lines.append("")
    lines.append(f"{'scene':<12}{'location':<26}{'samples':>8}  description")
    for sc in nusc.scene:
        loc = nusc.get("log", sc["log_token"])["location"]
        lines.append(f"{sc['name']:<12}{loc:<26}{sc['nbr_samples']:>8}  {sc['description']}")

    channels = Counter((sd["channel"], sd["is_key_frame"]) for sd in nusc.sample_data)
    lines.append("")
    lines.append("sensor files: " + ", ".join(
        f"{ch} {channels[(ch, True)]} keyframes + {channels[(ch, False)]} sweeps" if channels[(ch, False)]
        else f"{ch} {channels[(ch, True)]}" for ch in sorted({c for c, _ in channels})))  # fmt: skip
    cam = next((sd for sd in nusc.sample_data if sd["sensor_modality"] == "camera"), None)
    lidar = [sd for sd in nusc.sample_data if sd["sensor_modality"] == "lidar" and sd["is_key_frame"]]
    if cam is not None:
        lines.append(f"images {cam['width']}x{cam['height']}")
    if lidar:
        sizes = [os.path.getsize(Path(dataroot) / sd["filename"]) // 20 for sd in lidar[:200]]
        lines.append(f"LiDAR points per keyframe sweep: mean {np.mean(sizes):.0f}")

    det = Counter(category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation)
    pts = {}
    for a in nusc.sample_annotation:
        pts.setdefault(category_to_detection_name(a["category_name"]), []).append(a["num_lidar_pts"])
    lines.append("")
    lines.append(f"{'detection class':<22}{'annotations':>12}{'median pts':>12}{'with 0 pts':>12}")
    for name, n in sorted(det.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
        p = np.asarray(pts[name])
        lines.append(f"{name or '(not a detection class)':<22}{n:>12}{np.median(p):>12.0f}{(p == 0).mean():>12.0%}")
    vis = Counter(nusc.get("visibility", a["visibility_token"])["level"] for a in nusc.sample_annotation)
    lines.append("visibility: " + ", ".join(f"{k} {vis[k]}" for k in sorted(vis)))
    total = sum(f.stat().st_size for f in Path(dataroot).rglob("*") if f.is_file())
    lines.append(f"size on disk: {total / 1e6:.0f} MB")
    return "\n".join(lines)
