"""Pre-training objectives: BERT masking of words, masking of objects, scene-text-matching negatives, task losses."""

from __future__ import annotations

import torch

from fusion.qa.answers import ATTRIBUTE_SIZES
from fusion.qa.objectives import mask_objects, mask_tokens, mismatch, task_losses
from fusion.qa.tokenizer import MASK, PAD


def test_mask_tokens_chooses_real_tokens_at_the_rate_with_bert_replacements():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (400, 40), generator=g)
    mask = torch.arange(40)[None] < torch.randint(0, 41, (400, 1), generator=g)  # rows of 0..40 words
    ids = ids.masked_fill(~mask, PAD)
    out, targets = mask_tokens(ids, mask, 100, p=0.15, generator=g)
    chosen = targets != -100
    assert not (chosen & ~mask).any(), "padding is never chosen"
    assert (out[~mask] == PAD).all()
    assert torch.equal(chosen.any(1), mask.any(1)), "every non-empty row has a masked word, empty rows none"
    assert torch.equal(targets[chosen], ids[chosen])
    assert torch.equal(out[~chosen], ids[~chosen]), "unchosen tokens are untouched"
    rate = chosen.sum() / mask.sum()
    assert 0.14 < rate < 0.19  # p plus the one forced per row
    replaced = out[chosen]
    as_mask = (replaced == MASK).float().mean()
    kept = (replaced == ids[chosen]).float().mean()
    assert 0.75 < as_mask < 0.85 and 0.06 < kept < 0.16


def test_mask_objects_only_masks_real_objects():
    g = torch.Generator().manual_seed(1)
    object_mask = torch.rand(200, 30, generator=g) < 0.6
    masked = mask_objects(object_mask, 0.2, g)
    assert not (masked & ~object_mask).any()
    assert 0.15 < masked.sum() / object_mask.sum() < 0.25


def test_mismatch_negatives_never_keep_their_own_scene():
    for seed in range(50):
        idx, matched = mismatch(8, 0.5, torch.Generator().manual_seed(seed))
        assert torch.equal(matched, idx == torch.arange(8))
        assert ((idx >= 0) & (idx < 8)).all()
    rates = [(~mismatch(64, 0.5, torch.Generator().manual_seed(s))[1]).float().mean() for s in range(20)]
    assert 0.4 < float(torch.stack(rates).mean()) < 0.6
    idx, matched = mismatch(1, 1.0)
    assert idx.tolist() == [0] and matched.tolist() == [True]


class _Out:
    def __init__(self, answer, ground):
        self.answer, self.ground = answer, ground


def test_task_losses_ignore_missing_targets():
    answer = torch.randn(3, 5, requires_grad=True)
    ground = torch.randn(3, 4).masked_fill(torch.tensor([[False, False, True, True]] * 3), -torch.inf)
    object_mask = torch.isfinite(ground)
    losses = task_losses(_Out(answer, ground), torch.tensor([1, -1, 2]), torch.tensor([-1, -1, 0]),
                         torch.zeros(3, 4), torch.tensor([True, True, False]), object_mask)  # fmt: skip
    want = torch.nn.functional.cross_entropy(answer[[0, 2]], torch.tensor([1, 2]))
    torch.testing.assert_close(losses["answer"], want)
    torch.testing.assert_close(losses["ground"], torch.nn.functional.cross_entropy(ground[2:3], torch.tensor([0])))
    assert all(torch.isfinite(v) for v in losses.values())
    none = task_losses(_Out(answer, ground), torch.tensor([-1, -1, -1]), torch.tensor([-1, -1, -1]),
                       torch.zeros(3, 4), torch.tensor([False] * 3), object_mask)  # fmt: skip
    assert all(float(v) == 0.0 for v in none.values())


def test_balanced_relevance_weighs_relevant_and_other_objects_equally():
    g = torch.Generator().manual_seed(0)
    ground = torch.randn(3, 5, generator=g)
    object_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]])
    relevance = torch.tensor([[1.0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    valid = torch.tensor([True, True, True])
    out = _Out(torch.randn(3, 5), ground.masked_fill(~object_mask, -torch.inf))
    losses = task_losses(out, torch.tensor([-1] * 3), torch.tensor([-1] * 3), relevance, valid, object_mask,
                         balanced=True, relevance_weight=2.0)  # fmt: skip
    pos, neg = [], []  # naive: every real object's BCE, by side
    for b in range(3):
        for m in range(5):
            if object_mask[b, m]:
                p = torch.sigmoid(ground[b, m])
                bce = -(relevance[b, m] * p.log() + (1 - relevance[b, m]) * (1 - p).log())
                (pos if relevance[b, m] > 0.5 else neg).append(bce)
    want = 2.0 * 0.5 * (torch.stack(pos).mean() + torch.stack(neg).mean())
    torch.testing.assert_close(losses["relevance"], want)
    plain = task_losses(out, torch.tensor([-1] * 3), torch.tensor([-1] * 3), relevance, valid, object_mask)
    torch.testing.assert_close(plain["relevance"], torch.stack(pos + neg).mean())


def test_factor_loss_balances_each_part_and_skips_invalid_objects():
    g = torch.Generator().manual_seed(1)
    b, m, k = 3, 5, 4
    logits = torch.randn(b, m, k, generator=g)
    targets = (torch.rand(b, m, k, generator=g) > 0.6).float()
    object_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]])
    valid = torch.tensor([[True] * 5, [True] * 5, [False] * 5])
    out = _Out(torch.randn(b, 5), torch.randn(b, m).masked_fill(~object_mask, -torch.inf))
    out.factors = logits
    losses = task_losses(out, torch.tensor([-1] * b), torch.tensor([-1] * b), torch.zeros(b, m),
                         torch.tensor([False] * b), object_mask, factors=targets, factor_valid=valid,
                         factor_weight=0.5)  # fmt: skip
    per_part = []
    for j in range(k):  # naive: per part, the mean BCE of each side over the valid real objects, then their mean
        sides = {True: [], False: []}
        for i in range(b):
            for o in range(m):
                if object_mask[i, o] and valid[i, o]:
                    p = torch.sigmoid(logits[i, o, j])
                    t = targets[i, o, j]
                    sides[bool(t > 0.5)].append(-(t * p.log() + (1 - t) * (1 - p).log()))
        means = [torch.stack(v).mean() for v in sides.values() if v]
        per_part.append(sum(means) / len(means))
    torch.testing.assert_close(losses["factors"], 0.5 * sum(per_part) / k)
    off = task_losses(out, torch.tensor([-1] * b), torch.tensor([-1] * b), torch.zeros(b, m),
                      torch.tensor([False] * b), object_mask, factors=targets, factor_valid=valid)  # fmt: skip
    assert "factors" not in off


def test_attribute_loss_is_one_cross_entropy_per_attribute_over_objects_that_have_it():
    g = torch.Generator().manual_seed(2)
    b, m = 3, 4
    object_mask = torch.tensor([[True] * 4, [True] * 2 + [False] * 2, [True] * 3 + [False]])
    targets = torch.stack([torch.randint(0, n, (b, m), generator=g) for n in ATTRIBUTE_SIZES], -1)
    targets[0, 1, 1] = targets[2, :, 2] = -1  # no status / no colour
    targets[1, 2:] = 5  # padding objects' values are ignored however they look
    out = _Out(torch.randn(b, 5), torch.randn(b, m).masked_fill(~object_mask, -torch.inf))
    out.attributes = torch.randn(b, m, sum(ATTRIBUTE_SIZES), generator=g)
    losses = task_losses(out, torch.tensor([-1] * b), torch.tensor([-1] * b), torch.zeros(b, m),
                         torch.tensor([False] * b), object_mask, attributes=targets, attribute_weight=2.0)  # fmt: skip
    per_attr, lo = [], 0
    for k, n in enumerate(ATTRIBUTE_SIZES):  # naive: -log softmax of the target, averaged over objects having it
        terms = [-torch.log_softmax(out.attributes[i, o, lo : lo + n], -1)[targets[i, o, k]]
                 for i in range(b) for o in range(m) if object_mask[i, o] and targets[i, o, k] >= 0]  # fmt: skip
        per_attr.append(torch.stack(terms).mean())
        lo += n
    torch.testing.assert_close(losses["attributes"], 2.0 * sum(per_attr) / len(per_attr))


def test_balanced_attribute_loss_weighs_every_value_present_equally():
    g = torch.Generator().manual_seed(5)
    b, m = 2, 6
    object_mask = torch.ones(b, m, dtype=torch.bool)
    targets = torch.zeros(b, m, 3, dtype=torch.long)
    targets[..., 1] = torch.tensor([[0, 0, 0, 0, 0, 1], [0, 0, 0, 2, -1, -1]])  # status: 8 x 0, 1 x 1, 1 x 2
    targets[..., 2] = torch.tensor([[3, 3, 3, 3, 3, 3], [3, 3, 3, 3, 3, 3]])  # colour: one value only
    out = _Out(torch.randn(b, 5), torch.randn(b, m))
    out.attributes = torch.randn(b, m, sum(ATTRIBUTE_SIZES), generator=g)
    losses = task_losses(out, torch.tensor([-1] * b), torch.tensor([-1] * b), torch.zeros(b, m),
                         torch.tensor([False] * b), object_mask, attributes=targets, attribute_weight=1.0,
                         attribute_balanced=True)  # fmt: skip
    per_attr, lo = [], 0
    for k, n in enumerate(ATTRIBUTE_SIZES):  # naive: the mean loss of each value present, then their mean
        by_value: dict[int, list] = {}
        for i in range(b):
            for o in range(m):
                t = int(targets[i, o, k])
                if t >= 0:
                    by_value.setdefault(t, []).append(-torch.log_softmax(out.attributes[i, o, lo : lo + n], -1)[t])
        per_attr.append(sum(torch.stack(v).mean() for v in by_value.values()) / len(by_value))
        lo += n
    torch.testing.assert_close(losses["attributes"], sum(per_attr) / len(per_attr))
