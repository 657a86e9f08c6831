"""What the benchmarks that read a trained detector on a split share: their command-line options and the batches.

`benchmarks/heading_velocity.py` and `benchmarks/class_confusion.py` both load a checkpoint (`load_system`) and run it
over every sample of a split, served as the checkpoint's data settings (image size, sweeps) say, without augmentation.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch

from fusion.data.dataset import LoaderConfig, NuScenesDataset
from fusion.data.index import load_index
from fusion.data.types import Batch, collate
from fusion.system import load_system


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint, the split and how to run it."""
    parser.add_argument("--checkpoint", default="outputs/latest/checkpoints/last.ckpt")
    parser.add_argument("--dataroot", default="data/synthetic")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--split", default="mini_val")
    parser.add_argument("--min-points", type=int, default=5, help="boxes with fewer LiDAR points are left out")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)


def load(args: argparse.Namespace):
    """(the `DetectionSystem` in eval mode, an iterator over the split's batches in order), from `add_arguments`'
    options; sets the torch threads."""
    torch.set_num_threads(args.threads)
    system, data = load_system(args.checkpoint)
    width, height = data.get("image_size", (320, 180))
    dataset = NuScenesDataset(load_index(args.dataroot, args.version, args.split),
                              LoaderConfig(image_size=(width, height), sweeps=data.get("sweeps", 3)))  # fmt: skip

    def batches() -> Iterator[Batch]:
        for start in range(0, len(dataset), args.batch_size):
            yield collate([dataset[i] for i in range(start, min(start + args.batch_size, len(dataset)))])

    return system.eval(), batches()
