"""Factor targets: re-derived from each question's program, checked against the question's refs and, for the ego
relations, against a naive loop over the object boxes the model sees."""

from __future__ import annotations

import torch

from fusion.data.qa import MARGIN, NEAR
from fusion.qa.dataset import FACTORS, QACollate


def test_factor_targets_meet_every_part_exactly_for_the_referred_objects(qa_dm):
    ds = qa_dm.datasets["mini_train"]
    checked = {t: 0 for t in ("exist", "count", "object", "status", "grounding")}
    for i, r in enumerate(ds.records):
        item = ds[i]
        if r["type"] == "comparison":
            assert not item["factor_valid"].any()  # two filters: no single set of parts
            continue
        valid = item["factor_valid"]
        assert valid.any(), r
        refs = set(r["refs"])
        meets_all = item["factors"].all(-1)
        for m in valid.nonzero()[:, 0].tolist():
            assert bool(meets_all[m]) == (item["gt_tokens"][m] in refs), (r["question"], m)
        checked[r["type"]] += 1
    assert all(n > 0 for n in checked.values()), checked


def test_ego_relation_factor_matches_a_naive_loop_over_the_model_boxes(qa_dm):
    ds = qa_dm.datasets["mini_val"]
    n = 0
    for i, r in enumerate(ds.records):
        f = r["program"].get("filter", {})
        if r["type"] == "comparison" or not f.get("relation") or f.get("anchor"):
            continue
        item = ds[i]
        boxes = item["objects"].boxes
        for m in item["factor_valid"].nonzero()[:, 0].tolist():
            x, y = float(boxes[m, 0]), float(boxes[m, 1])
            want = {"front": y > MARGIN, "back": y < -MARGIN, "left": x < -MARGIN, "right": x > MARGIN,
                    "near": (x * x + y * y) ** 0.5 < NEAR}[f["relation"]]  # fmt: skip
            assert float(item["factors"][m, FACTORS.index("relation")]) == float(want), (r["question"], x, y)
            n += 1
    assert n > 50


def test_collate_pads_factor_targets_as_invalid(qa_dm):
    ds = qa_dm.datasets["mini_val"]
    items = [ds[i] for i in range(8)]
    b = QACollate(qa_dm.tokenizer)(items)
    assert b.factors.shape == (*b.object_mask.shape, len(FACTORS))
    assert not (b.factor_valid & ~b.object_mask).any()
    for k, it in enumerate(items):
        n = len(it["objects"])
        torch.testing.assert_close(b.factors[k, :n], it["factors"])
        assert torch.equal(b.factor_valid[k, :n], it["factor_valid"])
