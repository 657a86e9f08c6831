"""Probe the cached scene-QA object tokens: how well a small per-object MLP (trained on mini_train objects,
evaluated on mini_val) reads each object's class, status (attribute) and colour from the token features alone,
from features + box geometry, and from the colour part alone. Diagnoses what the QA encoder can know.

    nice .venv/bin/python benchmarks/qa_probe.py --detector-ckpt outputs/latest/checkpoints/last.ckpt

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch

from fusion.data.index import load_index
from fusion.data.qa import synthetic_colours
from fusion.qa.embeddings import geometry
from fusion.qa.objects import APPEARANCE, MOTION
from fusion.qa.samples import cached_split


def objects_with_labels(ckpt: str, dataroot: str, version: str, split: str, colours: dict[str, str]):
    """Features <N, F>, geometry <N, 9>, class, attribute + 1 (0: none) and colour index of every cached object."""
    index = load_index(dataroot, version, split)
    objects = cached_split(ckpt, dataroot, version, split)
    row = {str(t): k for k, t in enumerate(index.ann_tokens)}
    names = sorted(set(colours.values()))
    feats, geom, cls, attr, colour = [], [], [], [], []
    for o in objects.values():
        for j, token in enumerate(o.tokens):
            k = row[token]
            feats.append(o.features[j])
            geom.append(geometry(o.boxes[j]))
            cls.append(int(index.labels[k]))
            attr.append(int(index.attributes[k]) + 1)
            colour.append(names.index(colours[str(index.instance_tokens[k])]))
    return torch.stack(feats), torch.stack(geom), torch.tensor(cls), torch.tensor(attr), torch.tensor(colour)


def probe(x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, steps: int = 300) -> float:
    torch.manual_seed(0)
    n = int(max(y.max(), yv.max())) + 1
    mlp = torch.nn.Sequential(torch.nn.LayerNorm(x.shape[1]), torch.nn.Linear(x.shape[1], 64), torch.nn.GELU(),
                              torch.nn.Linear(64, n))  # fmt: skip
    opt = torch.optim.Adam(mlp.parameters(), 1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(mlp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((mlp(xv).argmax(1) == yv).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector-ckpt", required=True)
    p.add_argument("--dataroot", default="data/synthetic")
    p.add_argument("--version", default="v1.0-mini")
    a = p.parse_args()
    torch.set_num_threads(1)
    colours = synthetic_colours(a.dataroot, a.version)
    tr = objects_with_labels(a.detector_ckpt, a.dataroot, a.version, "mini_train", colours)
    va = objects_with_labels(a.detector_ckpt, a.dataroot, a.version, "mini_val", colours)
    inputs = {"features": lambda d: d[0], "features+geometry": lambda d: torch.cat([d[0], d[1]], 1),
              "colour part": lambda d: d[0][:, -(4 + APPEARANCE) :],
              "centre colour": lambda d: d[0][:, -(4 + APPEARANCE) : -APPEARANCE],
              "point appearance": lambda d: d[0][:, -APPEARANCE:-MOTION],
              "point motion": lambda d: d[0][:, -MOTION:]}  # fmt: skip
    out = {}
    for name, pick in inputs.items():
        out[name] = {
            t: probe(pick(tr), tr[i], pick(va), va[i]) for t, i in (("class", 2), ("status", 3), ("colour", 4))
        }
        print(f"{name:<18} " + "  ".join(f"{t} {v:.3f}" for t, v in out[name].items()), flush=True)
    out["majority"] = {
        t: float((va[i] == va[i].mode().values).float().mean()) for t, i in (("status", 3), ("colour", 4))
    }
    print(json.dumps({"probe": out, "objects": {"train": len(tr[2]), "val": len(va[2])}}))


if __name__ == "__main__":
    main()
