"""Benchmark the app on this machine: how fast one sample's views render, and detector frames/s at the demo config.

- render_s: `render_sample` of one sample (six cameras with GT and predicted boxes, the LiDAR BEV, the 3D .glb, the
  detections and annotations tables), median over samples (target <= 1 s on 2 CPU cores).
- projection ratio: the vectorised box projection of the six cameras against the devkit's per-box
  `get_sample_data` + `view_points` loop on the same sample, same boxes (a same-process baseline).
- inference_fps: 1 / median time of the detector's forward + box decoding (result records, as `fusion predict`
  writes them; both also reported apart) on one prepared sample, batch 1, at the
  demo config (`configs/synthetic_cpu.yaml`, the model `make run` trains; target >= 5 frames/s on 2 threads);
  predict_fps also counts loading the sample from disk (what the app does on a cache miss). On a loaded machine
  wall time includes waiting for the CPU; inference_fps_from_cpu_time (1 / CPU seconds the process spent per frame,
  all threads) is roughly what one otherwise idle core would reach.

Usage: python benchmarks/app.py [--dataroot data/synthetic] [--checkpoint CKPT] [--samples 10] [--repeats 5]
Without a checkpoint a freshly initialised model of the demo config is timed (same sizes, same cost). Last line of
output: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch
import yaml


def demo_checkpoint(config: str, path: str) -> str:
    """A weights-only checkpoint of a freshly initialised detector at the config's sizes."""
    from fusion.models.model import ModelConfig
    from fusion.system import DetectionSystem

    cfg = yaml.safe_load(open(config))
    m = cfg["model"]
    w, h = cfg["data"]["image_size"]
    model = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in m["model"].items()},
                        image_size=(h, w))  # fmt: skip
    system = DetectionSystem(model=model, top_k=m.get("top_k", 200), score_threshold=m.get("score_threshold", 0.05))
    data = {"image_size": [w, h], "sweeps": cfg["data"]["sweeps"]}
    torch.save({"hyper_parameters": dict(system.hparams), "state_dict": system.state_dict(),
                "datamodule_hyper_parameters": data}, path)  # fmt: skip
    return path


def devkit_projection(browser, token: str) -> int:
    from nuscenes.utils.geometry_utils import BoxVisibility, view_points

    n = 0
    for channel in ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"):
        sd = browser.nusc.get("sample", token)["data"][channel]
        _, boxes, k = browser.nusc.get_sample_data(sd, box_vis_level=BoxVisibility.ANY)
        n += sum(view_points(b.corners(), np.asarray(k), normalize=True).shape[1] > 0 for b in boxes)
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataroot", default="data/synthetic")
    p.add_argument("--version", default="v1.0-mini")
    p.add_argument("--config", default="configs/synthetic_cpu.yaml")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from fusion.app.predictor import Predictor
    from fusion.app.views import Overlay, render_sample
    from fusion.data.browse import CAMERA_ORDER, Boxes3D, Browser

    tmp = tempfile.mkdtemp(prefix="fusion-app-bench-")
    ckpt = a.checkpoint or demo_checkpoint(a.config, os.path.join(tmp, "demo.ckpt"))
    browser = Browser(a.dataroot, a.version)
    predictor = Predictor.from_checkpoint(ckpt, a.dataroot, a.version)
    tokens = [t for s in browser.scenes() for t in browser.samples(s["token"])]
    tokens = [tokens[i] for i in np.linspace(0, len(tokens) - 1, a.samples).astype(int)]

    # Detector: forward + decoding on a prepared batch, then a full uncached predict (loading included).
    batches = [predictor.batch(t) for t in tokens[: a.repeats]]
    system = predictor.system
    with torch.inference_mode():
        system.results(batches[0], system.model(batches[0]))  # warm-up
        model_s, model_cpu_s, forward_s, decode_s = [], [], [], []
        for b in batches * 2:
            start, cpu = time.perf_counter(), time.process_time()
            out = system.model(b)
            mid = time.perf_counter()
            system.results(b, out)
            end = time.perf_counter()
            model_s.append(end - start)
            model_cpu_s.append(time.process_time() - cpu)
            forward_s.append(mid - start)
            decode_s.append(end - mid)
    predict_s = []
    for t in tokens:
        start = time.perf_counter()
        predictor.predict(t, "fused")  # not cached yet: loads the sample and runs the model
        predict_s.append(time.perf_counter() - start)

    # Views: everything the app draws for a sample, with the detector's 50 best boxes as predictions.
    render_s, proj_s, devkit_s, n_pred = [], [], [], []
    for t in tokens:
        boxes = Boxes3D.from_records(predictor.predict(t, "fused"))
        best = np.zeros(len(boxes), bool)
        best[np.argsort(-boxes.scores)[:50]] = True
        boxes = boxes.select(best)
        n_pred.append(len(boxes))
        start = time.perf_counter()
        render_sample(browser, t, Overlay(boxes), nsweeps=1, glb_dir=tmp)
        render_s.append(time.perf_counter() - start)
        gt = browser.annotation_boxes(t)
        for _ in range(3):  # interleaved: vectorised projection vs the devkit's per-box loop
            start = time.perf_counter()
            for channel in CAMERA_ORDER:
                browser.project(t, channel, gt)
            proj_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            devkit_projection(browser, t)
            devkit_s.append(time.perf_counter() - start)
    out = {
        "samples": len(tokens), "threads": a.threads, "checkpoint": a.checkpoint or "fresh demo-config model",
        "render_s_median": round(statistics.median(render_s), 4), "render_s_max": round(max(render_s), 4),
        "predictions_drawn_median": int(statistics.median(n_pred)),
        "projection_s": round(statistics.median(proj_s), 5),
        "devkit_projection_s": round(statistics.median(devkit_s), 5),
        "projection_speedup": round(statistics.median(devkit_s) / statistics.median(proj_s), 1),
        "inference_s_median": round(statistics.median(model_s), 4),
        "forward_s_median": round(statistics.median(forward_s), 4),
        "decode_s_median": round(statistics.median(decode_s), 4),
        "inference_fps": round(1 / statistics.median(model_s), 2),
        "inference_cpu_s_median": round(statistics.median(model_cpu_s), 4),
        "inference_fps_from_cpu_time": round(1 / statistics.median(model_cpu_s), 2),
        "predict_fps_with_loading": round(1 / statistics.median(predict_s), 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
