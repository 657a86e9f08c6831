"""Benchmark of `fusion evaluate` against the devkit's `DetectionEval` and a shapely AP@IoU loop.

    python benchmarks/evaluate.py --mini /tmp/mini --work /tmp/eval_bench

1. the synthetic mini world (mini_val, 40 samples) and 2. a scaled-up tables-only dataroot: the 150 scene
names of the devkit's `val` split, each a time-shifted copy of mini scenes (40 samples each: 6,000 samples),
with >= 40 predictions per sample (perturbed GT + false positives). The devkit only reads the tables.

Time and peak memory (VmHWM) of the devkit (NuScenes load + DetectionEval init + evaluate) and of ours (GT
cache warm, and cold) are measured in fresh subprocesses on the same files in the same run; AP@IoU (`iou_ap`
on the loaded boxes) against an OpenCOOD-style shapely per-pair loop in this process. The last line printed
is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

THREADS = {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
DETECTION = {
    "vehicle.car": "car", "vehicle.truck": "truck", "vehicle.bus.rigid": "bus", "vehicle.bus.bendy": "bus",
    "vehicle.trailer": "trailer", "vehicle.construction": "construction_vehicle",
    "human.pedestrian.adult": "pedestrian", "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian", "human.pedestrian.police_officer": "pedestrian",
    "vehicle.motorcycle": "motorcycle", "vehicle.bicycle": "bicycle", "movable_object.trafficcone": "traffic_cone",
    "movable_object.barrier": "barrier",
}  # fmt: skip
META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}


def vm_hwm_mb() -> float:
    """Peak resident memory of this process (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _token(*parts) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def make_predictions(samples: list[dict], anns_of: dict, category_of: dict, attr_name: dict, seed: int) -> dict:
    """Perturbed GT (10% dropped) plus false positives up to >= 40 boxes per sample, random scores."""
    rng = np.random.default_rng(seed)
    names = sorted(set(DETECTION.values()))
    results = {}
    for s in samples:
        boxes = []
        for a in anns_of[s["token"]]:
            name = DETECTION.get(category_of[a["instance_token"]])
            if name is None or rng.random() < 0.1:
                continue
            yaw = rng.normal(0, 0.15)
            w, x, y, z = a["rotation"]
            c, sn = math.cos(yaw / 2), math.sin(yaw / 2)
            boxes.append(
                {
                    "sample_token": s["token"],
                    "translation": (np.array(a["translation"]) + rng.normal(0, 0.3, 3)).tolist(),
                    "size": (np.array(a["size"]) * np.exp(rng.normal(0, 0.05, 3))).tolist(),
                    "rotation": [c * w - sn * z, c * x - sn * y, c * y + sn * x, c * z + sn * w],
                    "velocity": rng.normal(0, 1.0, 2).tolist(),
                    "detection_name": name,
                    "detection_score": float(rng.random()),
                    "attribute_name": attr_name.get(a["attribute_tokens"][0], "") if a["attribute_tokens"] else "",
                }
            )
        ego = s["_ego"]
        while len(boxes) < 40 or rng.random() < 0.3:
            r, ang = rng.uniform(0, 55), rng.uniform(-math.pi, math.pi)
            boxes.append(
                {
                    "sample_token": s["token"],
                    "translation": [ego[0] + r * math.cos(ang), ego[1] + r * math.sin(ang), 1.0],
                    "size": [1.8, 4.2, 1.6],
                    "rotation": [math.cos(ang / 2), 0.0, 0.0, math.sin(ang / 2)],
                    "velocity": [0.0, 0.0],
                    "detection_name": names[int(rng.integers(len(names)))],
                    "detection_score": float(rng.random()) * 0.6,
                    "attribute_name": "",
                }
            )
        results[s["token"]] = boxes
    return {"meta": dict(META), "results": results}


def _load_tables(root: Path, version: str) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in (root / version).glob("*.json")}


def _index(tables: dict):
    ego = {e["token"]: e for e in tables["ego_pose"]}
    lidar = {
        sd["sample_token"]: sd for sd in tables["sample_data"] if sd["is_key_frame"] and "LIDAR_TOP" in sd["filename"]
    }
    anns_of: dict = {s["token"]: [] for s in tables["sample"]}
    for a in tables["sample_annotation"]:
        anns_of[a["sample_token"]].append(a)
    cat = {c["token"]: c["name"] for c in tables["category"]}
    category_of = {i["token"]: cat[i["category_token"]] for i in tables["instance"]}
    attr_name = {a["token"]: a["name"] for a in tables["attribute"]}
    return ego, lidar, anns_of, category_of, attr_name


def mini_predictions(mini: Path, split_scenes: list[str], out: Path, seed: int) -> None:
    tables = _load_tables(mini, "v1.0-mini")
    ego, lidar, anns_of, category_of, attr_name = _index(tables)
    scene_names = {sc["token"]: sc["name"] for sc in tables["scene"]}
    samples = [s for s in tables["sample"] if scene_names[s["scene_token"]] in split_scenes]
    for s in samples:
        s["_ego"] = ego[lidar[s["token"]]["ego_pose_token"]]["translation"]
    out.write_text(json.dumps(make_predictions(samples, anns_of, category_of, attr_name, seed)))


def build_scaled(mini: Path, dst: Path, scene_names: list[str], copies: int = 2) -> None:
    """A tables-only v1.0-trainval dataroot: scene k = `copies` time-shifted copies of mini scene k % 10."""
    tables = _load_tables(mini, "v1.0-mini")
    ego, lidar, anns_of, category_of, attr_name = _index(tables)
    by_scene: dict = {}
    for s in tables["sample"]:
        by_scene.setdefault(s["scene_token"], []).append(s)
    src_scenes = tables["scene"]
    category_new: dict = {}
    out = {name: [] for name in ("scene", "sample", "sample_data", "ego_pose", "instance", "sample_annotation")}
    samples_out = []
    for k, name in enumerate(scene_names):
        src = src_scenes[k % len(src_scenes)]
        order, tok = [], by_scene[src["token"]]
        first = next(s for s in tok if s["prev"] == "")
        nxt = {s["token"]: s for s in tok}
        while first is not None:
            order.append(first)
            first = nxt.get(first["next"])
        scene_tok = _token("scene", k)
        new_tokens = [_token("sample", k, r, s["token"]) for r in range(copies) for s in order]
        span = order[-1]["timestamp"] - order[0]["timestamp"] + 500_000
        for r in range(copies):
            shift = k * 10**9 + r * span
            for i, s in enumerate(order):
                j = r * len(order) + i
                st = new_tokens[j]
                sd, pose = lidar[s["token"]], ego[lidar[s["token"]]["ego_pose_token"]]
                pose_tok, sd_tok = _token("ego", st), _token("sd", st)
                out["ego_pose"].append({**pose, "token": pose_tok, "timestamp": pose["timestamp"] + shift})
                out["sample_data"].append(
                    {
                        **sd,
                        "token": sd_tok,
                        "sample_token": st,
                        "ego_pose_token": pose_tok,
                        "timestamp": sd["timestamp"] + shift,
                        "prev": "",
                        "next": "",
                    }
                )
                prev = new_tokens[j - 1] if j > 0 else ""
                following = new_tokens[j + 1] if j + 1 < len(new_tokens) else ""
                rec = {"token": st, "timestamp": s["timestamp"] + shift, "scene_token": scene_tok}
                rec |= {"prev": prev, "next": following}
                out["sample"].append(rec)
                samples_out.append({**rec, "_ego": pose["translation"], "_src": s["token"]})
                for a in anns_of[s["token"]]:
                    out["sample_annotation"].append(
                        {
                            **a,
                            "token": _token("ann", k, r, a["token"]),
                            "sample_token": st,
                            "instance_token": _token("inst", k, r, a["instance_token"]),
                            "prev": _token("ann", k, r, a["prev"]) if a["prev"] else "",
                            "next": _token("ann", k, r, a["next"]) if a["next"] else "",
                        }
                    )
            src_instances = {a["instance_token"] for s in order for a in anns_of[s["token"]]}
            for inst in tables["instance"]:
                if inst["token"] in src_instances:
                    category_new[_token("inst", k, r, inst["token"])] = category_of[inst["token"]]
                    out["instance"].append(
                        {
                            **inst,
                            "token": _token("inst", k, r, inst["token"]),
                            "first_annotation_token": _token("ann", k, r, inst["first_annotation_token"]),
                            "last_annotation_token": _token("ann", k, r, inst["last_annotation_token"]),
                        }
                    )
        out["scene"].append(
            {
                **src,
                "token": scene_tok,
                "name": name,
                "nbr_samples": len(new_tokens),
                "first_sample_token": new_tokens[0],
                "last_sample_token": new_tokens[-1],
            }
        )
    version = dst / "v1.0-trainval"
    version.mkdir(parents=True, exist_ok=True)
    for name in ("category", "attribute", "visibility", "sensor", "calibrated_sensor", "log", "map"):
        (version / f"{name}.json").write_text(json.dumps(tables[name]))
    for name, records in out.items():
        (version / f"{name}.json").write_text(json.dumps(records))
    if not (dst / "maps").exists():
        (dst / "maps").symlink_to((mini / "maps").resolve())
    anns_src = {s["token"]: [] for s in samples_out}
    for a in out["sample_annotation"]:
        anns_src[a["sample_token"]].append(a)
    preds = make_predictions(samples_out, anns_src, category_new, attr_name, seed=1)
    (dst / "results.json").write_text(json.dumps(preds))


def worker(args: argparse.Namespace) -> None:
    """One measured run in a fresh process; prints a JSON line."""
    start = time.perf_counter()
    if args.worker == "devkit":
        import tempfile

        from nuscenes.eval.common.config import config_factory
        from nuscenes.eval.detection.evaluate import DetectionEval
        from nuscenes.nuscenes import NuScenes

        nusc = NuScenes(args.version, dataroot=args.dataroot, verbose=False)
        loaded = time.perf_counter()
        ev = DetectionEval(
            nusc, config_factory("detection_cvpr_2019"), args.results, args.split, tempfile.mkdtemp(), verbose=False
        )
        metrics, _ = ev.evaluate()
        summary = json.loads(json.dumps(metrics.serialize()))
        phases = {"load_s": loaded - start, "init_evaluate_s": time.perf_counter() - loaded}
    else:
        from fusion.evaluation import run_evaluation

        summary = run_evaluation(args.dataroot, args.version, args.split, args.results, cache_dir=args.cache_dir)
        summary = summary.metrics["nuscenes"]
        phases = {}
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": vm_hwm_mb(), "summary": summary, **phases}))


def run_worker(kind: str, dataroot: Path, version: str, split: str, results: Path, cache: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--dataroot", str(dataroot), "--version", version]
    cmd += ["--split", split, "--results", str(results), "--cache-dir", str(cache)]
    env = {**os.environ, **THREADS, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_abs_diff(a, b) -> float:
    """Largest difference between the figures of two summaries (NaN == NaN; inf if a key or value differs)."""
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) - {"eval_time"} - set(b):
            return math.inf
        return max([max_abs_diff(a[k], b[k]) for k in a if k != "eval_time"] or [0.0])
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
        return abs(a - b)
    return 0.0 if a == b else math.inf


def compare_devkit(
    name: str, dataroot: Path, version: str, split: str, results: Path, cache: Path, repeats: int, devkit_repeats: int
) -> dict:
    """Devkit vs ours (warm cache, and once cold), interleaved in fresh processes."""
    shutil.rmtree(cache, ignore_errors=True)
    cold = run_worker("ours", dataroot, version, split, results, cache)
    devkit, ours = [], []
    for i in range(max(repeats, devkit_repeats)):
        if i < devkit_repeats:
            devkit.append(run_worker("devkit", dataroot, version, split, results, cache))
        if i < repeats:
            ours.append(run_worker("ours", dataroot, version, split, results, cache))
        print(
            f"{name}: repeat {i + 1}: devkit {[round(d['seconds'], 2) for d in devkit]} s, "
            f"ours {[round(o['seconds'], 3) for o in ours]} s",
            file=sys.stderr,
            flush=True,
        )
    diff = max(max_abs_diff(d["summary"], o["summary"]) for d in devkit for o in [*ours, cold])
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    return {
        "devkit_s": med(devkit, "seconds"),
        "devkit_load_s": med(devkit, "load_s"),
        "devkit_init_evaluate_s": med(devkit, "init_evaluate_s"),
        "devkit_peak_mb": med(devkit, "peak_mb"),
        "devkit_repeats": len(devkit),
        "ours_warm_s": med(ours, "seconds"),
        "ours_warm_peak_mb": med(ours, "peak_mb"),
        "ours_repeats": len(ours),
        "ours_cold_s": cold["seconds"],
        "ours_cold_peak_mb": cold["peak_mb"],
        "speedup_vs_devkit": med(devkit, "seconds") / med(ours, "seconds"),
        "speedup_cold_vs_devkit": med(devkit, "seconds") / cold["seconds"],
        "memory_ratio": med(ours, "peak_mb") / med(devkit, "peak_mb"),
        "memory_ratio_cold": cold["peak_mb"] / med(devkit, "peak_mb"),
        "max_abs_diff": diff,
        "bit_identical": diff == 0.0,
        "identical": diff <= 1e-9,
    }


def shapely_iou_ap(gt, pred, num_samples: int) -> dict:
    """OpenCOOD-style AP@IoU: shapely polygons, each prediction against every GT box of its class and sample."""
    from shapely.geometry import Polygon

    from fusion.evaluation.boxes import quaternion_yaw
    from fusion.evaluation.config import DETECTION_NAMES, IOU_THRESHOLDS
    from fusion.evaluation.iou_ap import voc_ap
    from fusion.evaluation.rotated_iou import bev_corners

    def polygons(b):
        return [Polygon(c) for c in bev_corners(b.translation[:, :2], b.size, quaternion_yaw(b.rotation))]

    gp, pp = polygons(gt), polygons(pred)
    gt_of: dict = {}
    for j in range(len(gt)):
        gt_of.setdefault((int(gt.sample[j]), int(gt.label[j])), []).append(j)
    pred_of: dict = {}
    for i in sorted(range(len(pred)), key=lambda i: -pred.score[i]):  # stable: ties in results order
        pred_of.setdefault((int(pred.sample[i]), int(pred.label[i])), []).append(i)
    out = {"bev": {"global": {}, "local": {}}, "3d": {"global": {}, "local": {}}}
    tp = {(k, t): np.zeros(len(pred), bool) for k in range(2) for t in range(len(IOU_THRESHOLDS))}
    for key, preds in pred_of.items():
        gts = gt_of.get(key, [])
        taken = {(k, t): set() for k in range(2) for t in range(len(IOU_THRESHOLDS))}
        for i in preds:
            ious = []
            for j in gts:
                inter = pp[i].intersection(gp[j]).area
                bev = inter / pp[i].union(gp[j]).area
                top = min(pred.translation[i, 2] + pred.size[i, 2] / 2, gt.translation[j, 2] + gt.size[j, 2] / 2)
                bottom = max(pred.translation[i, 2] - pred.size[i, 2] / 2, gt.translation[j, 2] - gt.size[j, 2] / 2)
                i3 = inter * max(0.0, top - bottom)
                ious.append((bev, i3 / (pp[i].area * pred.size[i, 2] + gp[j].area * gt.size[j, 2] - i3)))
            for k in range(2):
                for t, th in enumerate(IOU_THRESHOLDS):
                    best, best_j = -1.0, -1
                    for n, j in enumerate(gts):
                        if j not in taken[(k, t)] and ious[n][k] > best:
                            best, best_j = ious[n][k], j
                    if best_j >= 0 and best >= th:
                        taken[(k, t)].add(best_j)
                        tp[(k, t)][i] = True
    idx = np.arange(len(pred))
    orders = {
        "local": np.lexsort((idx, -pred.score, pred.sample)),
        "global": np.lexsort((idx, pred.sample, -pred.score)),
    }
    for k, kind in enumerate(("bev", "3d")):
        for ordering, order in orders.items():
            for t, th in enumerate(IOU_THRESHOLDS):
                table = {}
                for c, name in enumerate(DETECTION_NAMES):
                    n_gt = int(np.count_nonzero(gt.label == c))
                    ranked = [i for i in order if pred.label[i] == c]
                    table[name] = voc_ap(tp[(k, t)][ranked], n_gt)[0] if n_gt else None
                present = [v for v in table.values() if v is not None]
                table["mean"] = float(np.mean(present)) if present else None
                out[kind][ordering][str(th)] = table
    return out


def compare_shapely(
    dataroot: Path, version: str, split: str, results: Path, cache: Path, repeats: int, baseline_repeats: int
) -> dict:
    from fusion.evaluation import run_evaluation
    from fusion.evaluation.iou_ap import iou_ap

    ev = run_evaluation(dataroot, version, split, results, cache_dir=cache)
    n = len(ev.gt.sample_tokens)
    ours, base = [], []
    for i in range(max(repeats, baseline_repeats)):
        t = time.perf_counter()
        summary, _ = iou_ap(ev.gt.boxes, ev.pred, n)
        ours.append(time.perf_counter() - t)
        if i < baseline_repeats:
            t = time.perf_counter()
            ref = shapely_iou_ap(ev.gt.boxes, ev.pred, n)
            base.append(time.perf_counter() - t)
    diff = max_abs_diff(
        {
            k: {
                o: {t: {c: (v if v is not None else -1.0) for c, v in tab.items()} for t, tab in x.items()}
                for o, x in y.items()
            }
            for k, y in summary.items()
        },
        {
            k: {
                o: {t: {c: (v if v is not None else -1.0) for c, v in tab.items()} for t, tab in x.items()}
                for o, x in y.items()
            }
            for k, y in ref.items()
        },
    )
    return {
        "ours_s": statistics.median(ours),
        "shapely_s": statistics.median(base),
        "repeats": len(ours),
        "shapely_repeats": len(base),
        "speedup_vs_shapely": statistics.median(base) / statistics.median(ours),
        "max_abs_diff": diff,
        "identical": diff <= 1e-9,
        "predictions": len(ev.pred),
        "gt_boxes": len(ev.gt.boxes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mini", default="/tmp/mini", help="a `fusion synth --preset mini` dataroot")
    parser.add_argument("--work", default="/tmp/eval_bench", help="scratch folder (scaled dataroot, caches)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--devkit-repeats-scaled", type=int, default=1)
    parser.add_argument("--shapely-repeats-scaled", type=int, default=1)
    parser.add_argument("--worker", choices=["devkit", "ours"], help=argparse.SUPPRESS)
    for a in ("--dataroot", "--version", "--split", "--results", "--cache-dir"):
        parser.add_argument(a, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import shapely
    from nuscenes.utils.splits import create_splits_scenes

    work, mini = Path(args.work), Path(args.mini)
    work.mkdir(parents=True, exist_ok=True)
    mini_results = work / "mini_results.json"
    mini_predictions(mini, create_splits_scenes()["mini_val"], mini_results, seed=0)
    scaled = work / "scaled"
    if not (scaled / "results.json").exists():
        t = time.perf_counter()
        build_scaled(mini, scaled, create_splits_scenes()["val"])
        print(f"built the scaled dataroot in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    per_sample = [len(v) for v in json.loads((scaled / "results.json").read_text())["results"].values()]
    figures = {
        "mini": compare_devkit(
            "mini", mini, "v1.0-mini", "mini_val", mini_results, work / "cache_mini", args.repeats, args.repeats
        ),
        "mini_iou": compare_shapely(
            mini, "v1.0-mini", "mini_val", mini_results, work / "cache_mini", args.repeats, args.repeats
        ),
        "scaled": compare_devkit(
            "scaled",
            scaled,
            "v1.0-trainval",
            "val",
            scaled / "results.json",
            work / "cache_scaled",
            args.repeats,
            args.devkit_repeats_scaled,
        ),
        "scaled_iou": compare_shapely(
            scaled,
            "v1.0-trainval",
            "val",
            scaled / "results.json",
            work / "cache_scaled",
            args.repeats,
            args.shapely_repeats_scaled,
        ),
        "scaled_samples": len(per_sample),
        "scaled_min_predictions_per_sample": min(per_sample),
        "shapely": shapely.__version__,
        "geos": shapely.geos_version_string,
        "numpy": np.__version__,
        "cpu_threads": 2,
    }
    print(json.dumps(figures, indent=1), file=sys.stderr)
    s = figures["scaled"]
    last = {
        "speedup_vs_devkit": s["speedup_vs_devkit"],
        "memory_ratio": s["memory_ratio"],
        "speedup_vs_shapely": figures["scaled_iou"]["speedup_vs_shapely"],
        "identical": all(figures[k]["identical"] for k in ("mini", "mini_iou", "scaled", "scaled_iou")),
        "bit_identical_nuscenes": figures["mini"]["bit_identical"] and s["bit_identical"],
        "speedup_cold_vs_devkit": s["speedup_cold_vs_devkit"],
        "memory_ratio_cold": s["memory_ratio_cold"],
        "mini_speedup_vs_devkit": figures["mini"]["speedup_vs_devkit"],
        "mini_memory_ratio": figures["mini"]["memory_ratio"],
        "mini_speedup_vs_shapely": figures["mini_iou"]["speedup_vs_shapely"],
        "scaled_samples": figures["scaled_samples"],
        "details": figures,
    }
    print(json.dumps(last))


if __name__ == "__main__":
    main()
