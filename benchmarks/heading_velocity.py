"""What a trained detector's head says about heading and velocity, at the ground-truth centres.

nuScenes scores orientation over the full turn (AOE) and velocity (AVE) on matched boxes, so a detector that finds
every car but not which way it faces, or that predicts every car parked, keeps its AP and loses NDS. This reads the
first stage's regression at the centre cell of every ground-truth box of a split (the cell the loss trains) and
reports, per class, for static (< 1 m/s) and moving boxes:

- heading_norm: median length of the predicted (sin, cos) heading vector (1: sure; about 0: the L1 fit shrank it,
  front and back look alike to the model);
- heading_right: share of boxes whose heading vector points the ground truth's way (0.5: chance; the decoder turns
  the box by pi where it does not, `decode_yaw`);
- speed_ratio (moving boxes): median |predicted velocity| / |ground-truth velocity| (0: predicted parked);
- velocity_right (moving boxes): share whose predicted velocity points within 90 degrees of the ground truth's.

A second table reads the final detections (both stages: with `refine_motion` the second stage turns and moves the
boxes): each ground-truth box is matched to the detection of its class with the nearest centre within 2 m (nuScenes'
matching threshold), and the same figures are computed from the detected yaw and velocity; `matched` is the share of
boxes that found one.

A third table bins the matched detections of each class by ground-truth speed (`--speed-bins`, m/s): `moving`, the
share predicted faster than 0.5 m/s (the second stage's `MOVING_SPEED`); the median predicted speed; the median
length of the velocity error (what nuScenes' AVE averages). Slow movers called parked show here as a low `moving`.

Boxes with fewer than `--min-points` LiDAR points are left out. Usage: python benchmarks/heading_velocity.py
--checkpoint outputs/latest/checkpoints/last.ckpt [--split mini_val]. Last line of output: one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import torch
from checkpoint_split import add_arguments, load  # benchmarks/checkpoint_split.py, beside this script

from fusion.data.types import DETECTION_CLASSES
from fusion.models.box_coder import REGRESSION
from fusion.models.refine import MOVING_SPEED

MOVING = 1.0  # m/s


def head_at_centres(system, batch) -> dict[str, torch.Tensor]:
    """The regression of each real ground-truth box's class at its centre cell, with what it should be."""
    targets = system.box_coder.encode(batch.boxes, batch.velocity, batch.labels, batch.attributes, batch.box_mask)
    out = system.model(batch)
    x = out.regression.shape[-1]
    bi, mi = targets.mask.nonzero(as_tuple=True)  # (n,) every box inside the grid
    cell, label = targets.cell[bi, mi], batch.labels[bi, mi]
    reg = out.regression[bi, label, :, cell // x, cell % x]  # (n, R)
    at = REGRESSION.index
    return {"label": label, "yaw": batch.boxes[bi, mi, 6], "velocity": batch.velocity[bi, mi],
            "points": batch.num_points[bi, mi], "sin": reg[:, at("sin_yaw")], "cos": reg[:, at("cos_yaw")],
            "pred_velocity": reg[:, [at("vx"), at("vy")]]}  # fmt: skip


def detections_at_boxes(system, batch, out, max_distance: float = 2.0) -> dict[str, torch.Tensor]:
    """Each real ground-truth box's nearest detection of its class (within `max_distance` m): its yaw as a (sin, cos)
    heading and its velocity; NaN where none is that near."""
    det = system.detect(batch, out)
    bi, mi = batch.box_mask.nonzero(as_tuple=True)
    gt, label = batch.boxes[bi, mi], batch.labels[bi, mi]
    dist = (det.boxes[bi, :, None, :2] - gt[:, None, None, :2]).norm(dim=-1)[:, :, 0]  # (n, K)
    dist = dist.masked_fill(~det.mask[bi] | (det.labels[bi] != label[:, None]), float("inf"))
    nearest = dist.argmin(1)
    found = dist.gather(1, nearest[:, None])[:, 0] <= max_distance
    yaw = det.boxes[bi, nearest, 6].where(found, float("nan"))
    velocity = det.velocity[bi, nearest].where(found[:, None], float("nan"))
    return {"label": label, "yaw": gt[:, 6], "velocity": batch.velocity[bi, mi], "points": batch.num_points[bi, mi],
            "sin": yaw.sin(), "cos": yaw.cos(), "pred_velocity": velocity}  # fmt: skip


def summarise(rows: dict[str, np.ndarray], min_points: int, detections: bool = False) -> dict[str, dict[str, float]]:
    """Per class and motion; `detections`: rows of `detections_at_boxes` (NaN where no detection matched)."""
    found = np.isfinite(rows["sin"])
    norm = np.hypot(rows["sin"], rows["cos"])
    right = rows["cos"] * np.cos(rows["yaw"]) + rows["sin"] * np.sin(rows["yaw"]) > 0
    speed = np.linalg.norm(rows["velocity"], axis=1)
    pred_speed = np.linalg.norm(rows["pred_velocity"], axis=1)
    v_right = (rows["velocity"] * rows["pred_velocity"]).sum(1) > 0
    report = {}
    for k, name in enumerate(DETECTION_CLASSES):
        of_class = (rows["label"] == k) & (rows["points"] >= min_points)
        for motion, sel in (("static", of_class & (speed < MOVING)), ("moving", of_class & (speed >= MOVING))):
            if not sel.any():
                continue
            entry = {"n": int(sel.sum())}
            if detections:  # the figures are over the boxes that found one; a detection's heading has length 1
                entry["matched"] = float(found[sel].mean())
                sel = sel & found
                if not sel.any():
                    report[f"{name}/{motion}"] = entry
                    continue
            else:
                entry["heading_norm"] = float(np.median(norm[sel]))
            entry["heading_right"] = float(right[sel].mean())
            if motion == "moving":
                entry["speed_ratio"] = float(np.median(pred_speed[sel] / speed[sel]))
                entry["velocity_right"] = float(v_right[sel].mean())
            report[f"{name}/{motion}"] = entry
    return report


def speed_bins(rows: dict[str, np.ndarray], min_points: int, edges: list[float],
               moving: float = MOVING_SPEED) -> dict[str, dict[str, float]]:  # fmt: skip
    """Rows of `detections_at_boxes`, per class and ground-truth speed bin [edges[i], edges[i + 1]) (the last bin
    open): n (boxes that found a detection), moving (share predicted faster than `moving` m/s), median predicted
    speed and median |velocity error|, m/s."""
    found = np.isfinite(rows["pred_velocity"]).all(1)
    speed = np.linalg.norm(rows["velocity"], axis=1)
    pred = np.linalg.norm(np.nan_to_num(rows["pred_velocity"]), axis=1)
    error = np.linalg.norm(np.nan_to_num(rows["pred_velocity"]) - rows["velocity"], axis=1)
    bounds = [*edges, np.inf]
    report = {}
    for k, name in enumerate(DETECTION_CLASSES):
        of_class = (rows["label"] == k) & (rows["points"] >= min_points) & found
        for lo, hi in itertools.pairwise(bounds):
            sel = of_class & (speed >= lo) & (speed < hi)
            if sel.any():
                report[f"{name}/{lo:g}-{hi:g}"] = {"n": int(sel.sum()), "moving": float((pred[sel] > moving).mean()),
                                                   "speed": float(np.median(pred[sel])),
                                                   "error": float(np.median(error[sel]))}  # fmt: skip
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--speed-bins", default="0,0.5,2,5,9", help="ground-truth speed bin edges, m/s")
    args = parser.parse_args()
    try:  # before minutes of inference, not after
        edges = [float(e) for e in args.speed_bins.split(",")]
    except ValueError as e:
        raise SystemExit(f"--speed-bins {args.speed_bins!r}: not comma-separated numbers ({e})") from e
    system, batches = load(args)
    heads, dets = [], []
    with torch.no_grad():
        for batch in batches:
            heads.append(head_at_centres(system, batch))
            dets.append(detections_at_boxes(system, batch, system.model(batch)))
    result = {"checkpoint": args.checkpoint, "split": args.split}
    tables = {name: {k: torch.cat([p[k] for p in parts]).float().numpy() for k in parts[0]}
              for name, parts in (("head", heads), ("detections", dets))}  # fmt: skip
    for name, rows in tables.items():
        report = result[name] = summarise(rows, args.min_points, detections=name == "detections")
        print(f"{name}:")
        print(f"{'class / motion':28s} {'n':>5s} {'matched':>7s} {'|heading|':>9s} {'right way':>9s} "
              f"{'speed ratio':>11s} {'v right':>7s}")  # fmt: skip
        for key, e in report.items():
            line = f"{key:28s} {e['n']:5d} {e.get('matched', 1.0):7.2f}"
            if "heading_right" in e:
                line += f" {e.get('heading_norm', 1.0):9.2f} {e['heading_right']:9.2f}"
            if "speed_ratio" in e:
                line += f" {e['speed_ratio']:11.2f} {e['velocity_right']:7.2f}"
            print(line)
    result["speed_bins"] = speed_bins(tables["detections"], args.min_points, edges)
    print("detections by ground-truth speed (m/s):")
    print(f"{'class / speed':28s} {'n':>5s} {'moving':>7s} {'speed':>7s} {'|error|':>7s}")
    for key, e in result["speed_bins"].items():
        print(f"{key:28s} {e['n']:5d} {e['moving']:7.2f} {e['speed']:7.2f} {e['error']:7.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
