"""Benchmark `fusion synth`: generation time and size of a preset on this machine, and the devkit's load time.

Usage: python benchmarks/synth.py [--preset mini] [--workers 2] [--repeats 1]
Last line of output: one JSON object (seconds, bytes, samples, samples_per_s, devkit_load_s).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from fusion.data.synth.generate import synthesize
from fusion.data.synth.presets import get_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    preset = get_preset(args.preset)
    seconds, summary = [], {}
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parents[1] / "data") as tmp:
        for _ in range(args.repeats):
            out = Path(tmp) / "world"
            started = time.perf_counter()
            summary = synthesize(out, preset, seed=0, overwrite=True, workers=args.workers)
            seconds.append(time.perf_counter() - started)
        from nuscenes.nuscenes import NuScenes

        started = time.perf_counter()
        NuScenes(preset.version, dataroot=str(out), verbose=False)
        load = time.perf_counter() - started
        shutil.rmtree(out)
    median = statistics.median(seconds)
    result = {
        "preset": preset.name,
        "workers": args.workers,
        "seconds": round(median, 1),
        "seconds_all": [round(s, 1) for s in seconds],
        "bytes": summary["bytes"],
        "samples": summary["samples"],
        "annotations": summary["annotations"],
        "mean_points_per_sweep": round(summary["mean_points_per_sweep"]),
        "samples_per_s": round(summary["samples"] / median, 2),
        "devkit_load_s": round(load, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
