"""What a trained detector makes of each ground-truth box: the class, length and centre of the best detection near it.

nuScenes matches detections to boxes of the same class only, so a bus found as a truck is a missed bus and a false
truck, and per-class AP cannot say which. This reads, for every ground-truth box of the chosen classes with at least
`--min-points` LiDAR points, the highest-scoring detection of any class whose centre lies within `--radius` metres
(BEV), after the first stage (the decoded heatmap peaks) and after the second (the refined, rescored boxes that
prediction writes), and reports per ground-truth class and stage:

- n, and none: how many boxes had no detection that near;
- classes: how many of the others got each class as their best detection;
- length: the median length of that detection and of the ground truth (metres);
- centre: the median BEV distance between their centres (metres).

With `--window-edges` it also splits each class's boxes by whether their BEV footprint crosses an edge of the
unshifted local windows (every `trunk_window` cells from the grid's corner: at the CPU default the point encoder's
layer, the fusion's local attention and, without `trunk_shift`, the trunk all cut the map there): "across" and
"within" rows. A long vehicle across an edge is seen in
two windows that the unshifted stages never join (docs/benchmarks.md, **Shifted windows in the trunk**).

Usage: python benchmarks/class_confusion.py --checkpoint outputs/latest/checkpoints/last.ckpt [--split mini_val]
[--classes truck,bus,trailer] [--window-edges]. Last line of output: one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from checkpoint_split import add_arguments, load  # benchmarks/checkpoint_split.py, beside this script

from fusion.data.types import DETECTION_CLASSES


def best_nearby(gt: torch.Tensor, det_boxes: torch.Tensor, det_scores: torch.Tensor, det_mask: torch.Tensor,
                radius: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """For ground-truth boxes <B, M, 7>, the highest-scoring detection <B, K, 7> (`det_mask` <B, K>) with its BEV
    centre within `radius` m: its index <int64: B, M> and whether there is one <B, M>."""
    dist = (gt[:, :, None, :2] - det_boxes[:, None, :, :2]).norm(dim=-1)  # (B, M, K)
    near = (dist <= radius) & det_mask[:, None, :]
    score = det_scores[:, None, :].expand_as(dist).masked_fill(~near, -torch.inf)
    return score.argmax(-1), near.any(-1)


def rows_of_batch(gt: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor, det,
                  radius: float) -> dict[str, np.ndarray]:  # fmt: skip
    """One row per kept ground-truth box (<B, M> `keep`, labels <B, M>) against `Detections` `det`: its class, the
    best detection's class within `radius` m (-1: none), both lengths and the centre distance."""
    index, found = best_nearby(gt, det.boxes, det.scores, det.mask, radius)
    best = det.boxes.gather(1, index[..., None].expand(-1, -1, 7))  # (B, M, 7)
    det_label = det.labels.gather(1, index).where(found, -1)
    return {
        "label": labels[keep].numpy(),
        "det_label": det_label[keep].numpy(),
        "length": best[..., 4][keep].float().numpy(),
        "gt_length": gt[..., 4][keep].float().numpy(),
        "centre": (best[..., :2] - gt[..., :2]).norm(dim=-1)[keep].float().numpy(),
    }


def crosses_window_edge(boxes: torch.Tensor, origin: tuple[float, float], period: float) -> torch.Tensor:
    """Whether the BEV footprint of boxes <..., 7> (x, y, z, w, l, h, yaw; l along the heading) crosses a window edge,
    the lines x = origin[0] + i * period and y = origin[1] + j * period: <bool: ...>. A rectangle is convex, so it
    crosses a line x = e exactly when e lies inside its x extent, the centre -+ (l |cos| + w |sin|) / 2."""
    c, s = boxes[..., 6].cos().abs(), boxes[..., 6].sin().abs()
    half = torch.stack([boxes[..., 4] * c + boxes[..., 3] * s, boxes[..., 4] * s + boxes[..., 3] * c], -1) / 2
    start = boxes.new_tensor(origin)
    low = torch.floor((boxes[..., :2] - half - start) / period)
    high = torch.floor((boxes[..., :2] + half - start) / period)
    return (low != high).any(-1)


def summarise(rows: dict[str, np.ndarray], classes: list[int]) -> dict[str, dict]:
    """Per ground-truth class of `classes`: n, none, classes {name: count}, length [detection, ground truth] medians,
    centre median (over the boxes with a detection near)."""
    report = {}
    for k in classes:
        of_class = rows["label"] == k
        if not of_class.any():
            continue
        found = of_class & (rows["det_label"] >= 0)
        names, counts = np.unique(rows["det_label"][found], return_counts=True)
        best = {DETECTION_CLASSES[int(c)]: int(n) for c, n in zip(names, counts, strict=True)}
        entry = {"n": int(of_class.sum()), "none": int((of_class & ~found).sum()), "classes": best}
        if found.any():
            entry["length"] = [float(np.median(rows["length"][found])), float(np.median(rows["gt_length"][found]))]
            entry["centre"] = float(np.median(rows["centre"][found]))
        report[DETECTION_CLASSES[k]] = entry
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--classes", default="truck,bus,trailer", help="ground-truth classes, comma-separated")
    parser.add_argument("--radius", type=float, default=4.0, help="metres, BEV centre to centre")
    parser.add_argument("--window-edges", action="store_true",
                        help="also split the boxes by whether they cross an edge of the trunk's windows")  # fmt: skip
    args = parser.parse_args()
    unknown = [c for c in args.classes.split(",") if c not in DETECTION_CLASSES]
    if unknown:  # before minutes of inference, not after
        raise SystemExit(f"--classes: {unknown} not among {list(DETECTION_CLASSES)}")
    classes = [DETECTION_CLASSES.index(c) for c in args.classes.split(",")]
    system, batches = load(args)
    cfg = system.hparams.model
    origin = (float(cfg["x_range"][0]), float(cfg["y_range"][0]))
    period = cfg["trunk_window"] * cfg.get("fusion_stride", 1) * cfg.get("bev_stride", 1) * cfg["cell"]  # metres
    stages: dict[str, list[dict]] = {"first": [], "final": []}
    with torch.no_grad():
        for batch in batches:
            out = system.model(batch)
            first = system.box_coder.decode(out.heatmap, out.regression, out.attributes, system.hparams.top_k,
                                            system.hparams.score_threshold)  # fmt: skip
            keep = batch.box_mask & (batch.num_points >= args.min_points)
            keep &= torch.isin(batch.labels, torch.tensor(classes))
            across = crosses_window_edge(batch.boxes, origin, period)[keep].numpy()
            for stage, det in (("first", first), ("final", system.detect(batch, out))):
                rows = rows_of_batch(batch.boxes, keep, batch.labels, det, args.radius)
                stages[stage].append(rows | {"across": across})
    report = {}
    if args.window_edges:
        print(f"window edges every {period:g} m from ({origin[0]:g}, {origin[1]:g})")
    print(f"{'class / stage':26s} {'n':>4s} {'none':>5s} {'length det / gt':>16s} {'centre':>7s}  best detections")
    for stage, parts in stages.items():
        rows = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        subsets = {"": np.ones(len(rows["label"]), bool)}
        if args.window_edges:
            subsets |= {" / across": rows["across"], " / within": ~rows["across"]}
        for suffix, pick in subsets.items():
            for name, entry in summarise({key: value[pick] for key, value in rows.items()}, classes).items():
                length = "{:.1f} / {:.1f}".format(*entry["length"]) if "length" in entry else "-"
                centre = f"{entry['centre']:.2f}" if "centre" in entry else "-"
                print(f"{name + ' / ' + stage + suffix:26s} {entry['n']:4d} {entry['none']:5d} {length:>16s} "
                      f"{centre:>7s}  {entry['classes']}")  # fmt: skip
                report[f"{name}/{stage}{suffix.replace(' / ', '/')}"] = entry
    result = {"checkpoint": args.checkpoint, "split": args.split, "radius": args.radius, "report": report}
    if args.window_edges:
        result["window_edges"] = {"period_m": period, "origin": origin}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
