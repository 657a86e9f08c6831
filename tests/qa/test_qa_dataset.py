"""Factor targets: re-derived from each question's program, checked against the question's refs and, for the ego
relations, against a naive loop over the object boxes the model sees. Attribute targets: against the devkit's own
reading of the annotations."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fusion.data.qa import MARGIN, NAMES, NEAR, STATUS
from fusion.qa.answers import CLASS_WORDS, COLOUR_WORDS, STATUS_WORDS
from fusion.qa.dataset import COMPARE, FACTORS, QACollate


def test_factor_targets_meet_every_part_exactly_for_the_referred_objects(qa_dm):
    ds = qa_dm.datasets["mini_train"]
    checked = {t: 0 for t in ("exist", "count", "object", "status", "grounding", "comparison")}
    for i, r in enumerate(ds.records):
        item = ds[i]
        if r["type"] == "comparison":  # two sides, each with its own parts: together they meet exactly the refs
            assert item["factor_valid"].any() and torch.equal(item["factor_valid"], item["factor_valid_b"]), r
            assert COMPARE[item["compare"]] == r["program"]["compare"]
            either = item["factors"].all(-1) | item["factors_b"].all(-1)
            for m in item["factor_valid"].nonzero()[:, 0].tolist():
                assert bool(either[m]) == (item["gt_tokens"][m] in set(r["refs"])), (r["question"], m)
            checked["comparison"] += 1
            continue
        assert item["compare"] == 0 and not item["factor_valid_b"].any()
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


def test_attribute_targets_match_the_devkit_annotations(qa_dm, tiny_nusc, tiny_root):
    from nuscenes.eval.detection.utils import category_to_detection_name

    colours = {t: v["colour"] for t, v in json.loads((Path(tiny_root) / "v1.0-mini" / "synth_world.json")
                                                      .read_text())["instances"].items()}  # fmt: skip
    ds = qa_dm.datasets["mini_train"]
    n = 0
    for token, attrs in ds.attributes.items():
        assert attrs.shape == (len(ds.objects[token]), 3)
        for m, ann_token in enumerate(ds.gt_tokens[token]):
            row = ds.scenes[token][1][m]
            if row < 0:  # not one of the question generator's objects: no targets
                assert (attrs[m] == -1).all()
                continue
            ann = tiny_nusc.get("sample_annotation", ann_token)
            cls = NAMES[category_to_detection_name(ann["category_name"])]
            names = [tiny_nusc.get("attribute", a)["name"] for a in ann["attribute_tokens"]]
            status = STATUS[names[0]] if names else None
            colour = colours.get(ann["instance_token"]) or None
            assert CLASS_WORDS[attrs[m, 0]] == cls
            assert (STATUS_WORDS[attrs[m, 1]] if attrs[m, 1] >= 0 else None) == status, (ann_token, names)
            assert (COLOUR_WORDS[attrs[m, 2]] if attrs[m, 2] >= 0 else None) == colour
            n += 1
    assert n > 100
    b = QACollate(qa_dm.tokenizer)([ds[i] for i in range(8)])
    assert b.attributes.shape == (*b.object_mask.shape, 3) and (b.attributes[~b.object_mask] == -1).all()


def test_a_comparisons_relevance_is_split_into_its_two_sides(qa_dm):
    ds = qa_dm.datasets["mini_train"]
    picked = [i for i, r in enumerate(ds.records) if r["type"] == "comparison"][:6]
    picked += [i for i, r in enumerate(ds.records) if r["type"] == "count"][:4]
    items = [ds[i] for i in picked]
    b = QACollate(qa_dm.tokenizer)(items)
    for k, (i, it) in enumerate(zip(picked, items, strict=True)):
        n = len(it["objects"])
        refs = set(ds.records[i]["refs"])
        in_refs = torch.tensor([t in refs for t in it["gt_tokens"]], dtype=torch.float32)
        if ds.records[i]["type"] == "comparison":
            torch.testing.assert_close(b.relevance[k, :n], it["factors"].all(-1).float() * it["factor_valid"])
            torch.testing.assert_close(b.relevance_b[k, :n], it["factors_b"].all(-1).float() * it["factor_valid_b"])
            torch.testing.assert_close(torch.maximum(b.relevance[k, :n], b.relevance_b[k, :n]), in_refs)
        else:
            torch.testing.assert_close(b.relevance[k, :n], in_refs)
            assert not b.relevance_b[k].any() and not b.factor_valid_b[k].any()


def test_prepare_data_writes_what_every_rank_then_only_reads(tiny_root, tiny_det_ckpt, tmp_path, monkeypatch):
    """Under DDP Lightning runs `prepare_data` on one process per node and `setup` on every rank: the question files
    and the object tokens are made there, so that `setup` runs neither the generator nor the detector."""
    import fusion.qa.datamodule as datamodule
    import fusion.qa.samples as samples
    from fusion.qa.datamodule import QADataModule

    def make():
        return QADataModule(dataroot=tiny_root, detector_ckpt=tiny_det_ckpt, questions_dir=str(tmp_path / "q"),
                            train_per_sample=4, val_per_sample=2, cache_dir=str(tmp_path / "cache"))  # fmt: skip

    make().prepare_data()
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["mini_train.jsonl", "mini_val.jsonl"]

    def refuse(*_, **__):
        raise AssertionError("setup made what prepare_data had made")

    monkeypatch.setattr(datamodule, "generate", refuse)
    monkeypatch.setattr(samples, "load_detector", refuse)
    rank = make()
    rank.setup("fit")
    assert len(rank.datasets["mini_train"]) == 4 * 4 and len(rank.datasets["mini_val"]) == 4 * 2
    # The process that ran `prepare_data` keeps what it read or extracted: its `setup` reads no object file again,
    # and its objects are those the other ranks read.
    local = make()
    local.prepare_data()
    monkeypatch.setattr(samples.torch, "load", refuse)
    local.setup("fit")
    for split in ("mini_train", "mini_val"):
        ours, theirs = local.datasets[split].objects, rank.datasets[split].objects
        assert ours.keys() == theirs.keys()
        for token, obj in ours.items():
            assert all(torch.equal(getattr(obj, f), getattr(theirs[token], f)) for f in ("boxes", "features", "labels"))


def test_kept_items_and_token_ids_give_the_batches_made_afresh(qa_dm):
    """The dataset keeps each question's item and the collate its token ids after their first use: a later epoch's
    batch equals one made from freshly built items by a fresh collate."""
    ds = qa_dm.datasets["mini_train"]
    order = [5, 0, 17, 3, 9, 5]  # a question twice in one batch
    kept = QACollate(qa_dm.tokenizer)
    first, again = kept([ds[i] for i in order]), kept([ds[i] for i in order])
    fresh = QACollate(qa_dm.tokenizer)([ds._item(i) for i in order])
    assert all(ds[i] is ds[i] for i in order)
    for batch in (first, again):
        for name in fresh.__dataclass_fields__:
            a, b = getattr(batch, name), getattr(fresh, name)
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, name
    assert torch.equal(fresh.ids, qa_dm.tokenizer.encode([ds.records[i]["question"] for i in order])[0])
