"""The unified QA encoder: shapes, per-token type embeddings through the shared trunk, gradients, trunk loading."""

from __future__ import annotations

import pytest
import torch

from fusion.models.model import TINY, build_model
from fusion.models.node_types import NODE_TYPES, OBJECT, TEXT, TOKEN_KINDS
from fusion.models.trunk import Trunk
from fusion.qa.answers import ANSWER_INDEX, ANSWERS, ATTRIBUTE_SIZES, CLASS_WORDS, MAX_COUNT, STATUS_WORDS
from fusion.qa.dataset import COMPARE
from fusion.qa.embeddings import ObjectEmbedding, TextEmbedding
from fusion.qa.model import QAOutput, SceneQAModel, conjunction, count_distribution, decide, load_trunk, mixed_forward
from fusion.qa.objectives import mask_objects, mask_tokens, mismatch, pretrain_losses, task_losses
from fusion.qa.objects import APPEARANCE, MOTION

DIM, VOCAB, FEAT = 16, 50, 4 + APPEARANCE + 6  # the last 4 + APPEARANCE: the appearance


def _model(extra_depth: int = 1, colour_cues: bool = False) -> SceneQAModel:
    torch.manual_seed(0)
    trunk = Trunk(DIM, 1, 2, kinds=TOKEN_KINDS)
    objects = ObjectEmbedding(FEAT, DIM, appearance_dim=4 + APPEARANCE if colour_cues else 0)
    return SceneQAModel(TextEmbedding(VOCAB, DIM, 20), objects, trunk, len(ANSWERS), VOCAB, extra_depth=extra_depth,
                        heads=2, colour_cues=colour_cues)  # fmt: skip


def _inputs(b=3, t=7, m=5):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (b, t), generator=g)
    text_mask = torch.ones(b, t, dtype=torch.bool)
    text_mask[1, 4:] = False
    text_mask[2, :] = False  # an empty question
    ids = ids.masked_fill(~text_mask, 0)
    object_mask = torch.ones(b, m, dtype=torch.bool)
    object_mask[0, 3:] = False
    boxes = torch.cat([torch.randn(b, m, 3, generator=g) * 10, torch.rand(b, m, 3, generator=g) + 0.5,
                       torch.rand(b, m, 1, generator=g)], -1)  # fmt: skip
    return ids, text_mask, torch.randn(b, m, FEAT, generator=g), boxes, object_mask


def test_conjunction_is_the_product_of_the_factor_probabilities():
    factors = torch.randn(4, 6, 4, generator=torch.Generator().manual_seed(0)) * 3
    want = torch.ones(4, 6)
    for k in range(4):  # naive product
        want = want * torch.sigmoid(factors[..., k])
    torch.testing.assert_close(conjunction(factors).sigmoid(), want.clamp(max=1 - 1e-4))
    sure = conjunction(torch.full((2, 4), 30.0))  # every part certainly met: finite, at the ceiling
    assert torch.isfinite(sure).all() and torch.allclose(sure.sigmoid(), torch.tensor(1 - 1e-4))


def test_count_distribution_matches_a_naive_convolution_over_objects():
    g = torch.Generator().manual_seed(1)
    p, mask = torch.rand(5, 9, generator=g), torch.rand(5, 9, generator=g) > 0.3
    mask[0] = False  # no objects: surely zero
    got = count_distribution(p, mask)
    for b in range(5):
        want = torch.zeros(10, dtype=torch.float64)
        want[0] = 1.0
        for q, keep in zip(p[b].double().tolist(), mask[b].tolist(), strict=True):
            if keep:  # one more Bernoulli object: shift by one with probability q
                want = torch.cat([want[:1] * (1 - q), want[1:] * (1 - q) + want[:-1] * q])
        torch.testing.assert_close(got[b].double(), want, atol=1e-6, rtol=0)
    assert got[0, 0] == 1.0


def _decided(answer_words, ground, object_mask, attributes=None):
    """A QAOutput whose answer head picks `answer_words`, with the given grounding and attribute logits."""
    b, m = ground.shape
    answer = torch.full((b, len(ANSWERS)), -5.0)
    for i, w in enumerate(answer_words):
        answer[i, ANSWER_INDEX[w]] = 5.0
    if attributes is None:
        attributes = torch.zeros(b, m, sum(ATTRIBUTE_SIZES))
    zeros = torch.zeros(b)
    return QAOutput(answer=answer, ground=ground.masked_fill(~object_mask, -torch.inf), match=zeros, mlm=zeros,
                    mom=zeros, factors=zeros, attributes=attributes)  # fmt: skip


def test_decide_counts_the_grounded_objects_only_when_the_head_answers_a_count():
    ground = torch.tensor([[3.0, 3.0, -3.0], [3.0, -3.0, 0.5], [-1.0, -2.0, -3.0], [3.0, 3.0, 3.0]])
    object_mask = torch.tensor([[True] * 3, [True] * 3, [True] * 3, [True, True, False]])
    out = _decided(["yes", "7", "0", "2"], ground, object_mask)
    want = []
    for b in range(4):  # naive: the argmax, or the number of unmasked objects with sigmoid >= 0.5
        k = int(out.answer[b].argmax())
        if ANSWERS[k].isdigit():
            n = sum(float(torch.sigmoid(ground[b, j])) >= 0.5 and bool(object_mask[b, j]) for j in range(3))
            k = ANSWER_INDEX[str(min(n, MAX_COUNT))]
        want.append(k)
    assert decide(out, object_mask).tolist() == want
    assert [ANSWERS[k] for k in want] == ["yes", "2", "0", "2"]
    assert decide(out, object_mask, count_from_grounding=False).tolist() == out.answer.argmax(-1).tolist()


def test_decide_reads_class_and_status_off_the_grounded_object():
    g = torch.Generator().manual_seed(3)
    ground = torch.randn(4, 5, generator=g) * 3
    object_mask = torch.ones(4, 5, dtype=torch.bool)
    object_mask[1, 3:] = False
    attributes = torch.randn(4, 5, sum(ATTRIBUTE_SIZES), generator=g) * 2
    out = _decided(["car", "pedestrian", "parked", "yes"], ground, object_mask, attributes)
    got = [ANSWERS[k] for k in decide(out, object_mask).tolist()]
    n_cls, n_status, _ = ATTRIBUTE_SIZES
    for b, head in enumerate(["car", "pedestrian", "parked"]):  # naive: weigh each object's probabilities in turn
        words, lo = (CLASS_WORDS, 0) if head in CLASS_WORDS else (STATUS_WORDS, n_cls)
        w = torch.softmax(out.ground[b], -1)
        pooled = sum(w[j] * torch.softmax(attributes[b, j, lo : lo + len(words)], -1) for j in range(5))
        assert got[b] == words[int(pooled.argmax())]
    assert got[3] == "yes"  # neither a class nor a status: the head's own
    heads = decide(out, object_mask, attributes_from_grounding=False)
    assert [ANSWERS[k] for k in heads.tolist()] == ["car", "pedestrian", "parked", "yes"]
    sure = attributes.clone()
    sure[0, :, :n_cls] = -9.0
    sure[0, :, CLASS_WORDS.index("bus")] = 9.0  # every object a bus: the grounded one is a bus
    assert ANSWERS[int(decide(_decided(["car"], ground[:1], object_mask[:1], sure[:1]), object_mask[:1])[0])] == "bus"
    assert n_status == len(STATUS_WORDS)


def test_decide_answers_comparisons_from_both_sides():
    g = torch.Generator().manual_seed(4)
    b, m = 6, 6
    ground, ground_b = torch.randn(b, m, generator=g) * 3, torch.randn(b, m, generator=g) * 3
    object_mask = torch.ones(b, m, dtype=torch.bool)
    object_mask[2, 4:] = False
    attributes = torch.randn(b, m, sum(ATTRIBUTE_SIZES), generator=g) * 2
    attributes[3, :, ATTRIBUTE_SIZES[0] + 2] = 9.0  # every object the same status: "the same status?" is yes
    compare = torch.full((b, len(COMPARE)), -5.0)
    kinds = ["count", "count", "colour", "status", "", "count"]
    for i, kind in enumerate(kinds):
        compare[i, COMPARE.index(kind)] = 5.0
    out = _decided(["no", "yes", "yes", "no", "no", "<object>"], ground, object_mask, attributes)
    out = QAOutput(**{**out.__dict__, "ground_b": ground_b.masked_fill(~object_mask, -torch.inf), "compare": compare})
    got = [ANSWERS[k] for k in decide(out, object_mask).tolist()]
    for i, kind in enumerate(kinds[:4]):  # naive: count each side, or read the attribute off each side's object
        if kind == "count":
            n_a = sum(bool(object_mask[i, j]) and float(torch.sigmoid(ground[i, j])) >= 0.5 for j in range(m))
            n_b = sum(bool(object_mask[i, j]) and float(torch.sigmoid(ground_b[i, j])) >= 0.5 for j in range(m))
            want = n_a > n_b
        else:
            lo = ATTRIBUTE_SIZES[0] + (ATTRIBUTE_SIZES[1] if kind == "colour" else 0)
            n = ATTRIBUTE_SIZES[2] if kind == "colour" else ATTRIBUTE_SIZES[1]
            reads = []
            for side in (ground, ground_b):
                w = torch.softmax(side[i].masked_fill(~object_mask[i], -torch.inf), -1)
                reads.append(
                    int(sum(w[j] * torch.softmax(attributes[i, j, lo : lo + n], -1) for j in range(m)).argmax())
                )
            want = reads[0] == reads[1]
        assert got[i] == ("yes" if want else "no"), (i, kind)
    assert got[3] == "yes" and got[4] == "no" and got[5] == "<object>"  # not a comparison, or not yes / no: the head
    off = decide(out, object_mask, compare_from_grounding=False)
    assert [ANSWERS[k] for k in off.tolist()[:5]] == ["no", "yes", "yes", "no", "no"]


def test_second_side_scored_for_some_rows_equals_scoring_it_for_all():
    model = _model().eval()
    ids, text_mask, feats, boxes, object_mask = _inputs()
    every = model(ids, text_mask, feats, boxes, object_mask, second=torch.ones(3, dtype=torch.bool))
    some = model(ids, text_mask, feats, boxes, object_mask, second=torch.tensor([False, True, False]))
    torch.testing.assert_close(some.ground_b[1], every.ground_b[1])
    torch.testing.assert_close(some.factors_b[1], every.factors_b[1])
    assert torch.isinf(some.ground_b[[0, 2]]).all() and not some.factors_b[[0, 2]].any()
    torch.testing.assert_close(some.ground, every.ground)


def test_output_shapes_and_padding():
    model = _model()
    ids, text_mask, feats, boxes, object_mask = _inputs()
    out = model(ids, text_mask, feats, boxes, object_mask)
    assert out.answer.shape == (3, len(ANSWERS)) and out.match.shape == (3,)
    assert out.ground.shape == (3, 5) and out.mlm.shape == (3, 7, VOCAB) and out.mom.shape == (3, 5, 10)
    assert torch.isinf(out.ground[0, 3:]).all() and torch.isfinite(out.ground[object_mask]).all()
    assert torch.isfinite(out.answer).all()


def test_padding_objects_and_words_change_nothing():
    model = _model().eval()
    ids, text_mask, feats, boxes, object_mask = _inputs()
    out = model(ids[:1, :], text_mask[:1], feats[:1, :3], boxes[:1, :3], object_mask[:1, :3])
    padded = model(ids[:1], text_mask[:1], feats[:1], boxes[:1], object_mask[:1])
    torch.testing.assert_close(out.answer, padded.answer, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.ground, padded.ground[:, :3], atol=1e-5, rtol=1e-5)


def test_mixed_forward_gives_each_token_its_own_type_embedding():
    torch.manual_seed(0)
    trunk = Trunk(DIM, 2, 2, kinds=TOKEN_KINDS).eval()
    x = torch.randn(2, 6, DIM)
    kinds = torch.tensor([TOKEN_KINDS.index(TEXT)] * 2 + [TOKEN_KINDS.index(OBJECT)] * 4)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 5] = False
    want = x + trunk.type_embed.weight[kinds]  # the reference: type embeddings per token, then the blocks by hand
    for block in trunk.stacks[0]:
        want = block(want, mask)
    torch.testing.assert_close(mixed_forward(trunk, x, kinds, mask), trunk.norm(want), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("colour_cues", [False, True])
def test_every_parameter_gets_a_gradient_with_all_objectives(colour_cues):
    model = _model(colour_cues=colour_cues)
    ids, text_mask, feats, boxes, object_mask = _inputs()
    text_mask[2, 0] = True  # every row has a word, so MLM covers each row
    ids[2, 0] = 7
    out = model(ids, text_mask, feats, boxes, object_mask, second=torch.tensor([True, False, False]))
    rel = (torch.rand(3, 5) < 0.5).float()
    attrs = torch.stack([torch.randint(0, n, (3, 5)) for n in ATTRIBUTE_SIZES], -1)
    losses = task_losses(out, torch.tensor([0, 5, len(ANSWERS) - 1]), torch.tensor([-1, -1, 2]), rel,
                         torch.tensor([True, True, False]), object_mask, attributes=attrs,
                         attribute_weight=1.0, factors_b=(torch.rand(3, 5, 4) < 0.5).float(),
                         factor_valid_b=torch.tensor([[True] * 5, [False] * 5, [False] * 5]),
                         relevance_b=(torch.rand(3, 5) < 0.5).float(), compare=torch.tensor([1, 0, -1]))  # fmt: skip
    masked_ids, targets = mask_tokens(ids, text_mask, VOCAB, 0.5, torch.Generator().manual_seed(0))
    masked = mask_objects(object_mask, 0.5, torch.Generator().manual_seed(0))
    masked[0, 0] = True
    idx, matched = mismatch(3, 0.7, torch.Generator().manual_seed(0))
    pre = model(masked_ids, text_mask, feats[idx], boxes[idx], object_mask[idx], masked)
    losses |= pretrain_losses(pre, targets, masked, torch.randint(0, 10, (3, 5)), matched)
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # the type embeddings of camera / lidar are not used by QA tokens
    assert missing == ["trunk.type_embed.weight"] or not missing, missing
    assert model.trunk.type_embed.weight.grad[TOKEN_KINDS.index(TEXT)].abs().sum() > 0
    assert model.trunk.type_embed.weight.grad[TOKEN_KINDS.index(OBJECT)].abs().sum() > 0
    assert all(torch.isfinite(v) for v in losses.values())


def test_load_trunk_copies_the_detector_trunk_and_its_type_rows():
    detector = build_model(TINY).model
    assert detector.trunk.kinds == NODE_TYPES  # detector checkpoints keep their 2-row type embedding
    trunk = Trunk(TINY.dim, TINY.trunk_depth, TINY.heads, kinds=TOKEN_KINDS, window=TINY.trunk_window)
    load_trunk(trunk, detector.trunk)
    for (n, a), (_, b) in zip(trunk.stacks[0].state_dict().items(), detector.trunk.stacks[0].state_dict().items(),
                              strict=True):  # fmt: skip
        assert torch.equal(a, b), n
    for i, kind in enumerate(NODE_TYPES):
        assert torch.equal(trunk.type_embed.weight[TOKEN_KINDS.index(kind)], detector.trunk.type_embed.weight[i])
    # same weights, same output on BEV tokens of a detector kind
    x = torch.randn(2, 4, TINY.dim)
    torch.testing.assert_close(trunk(x, "lidar"), detector.trunk(x, "lidar"))


def test_comparison_probability_matches_brute_force_enumeration():
    import itertools

    from fusion.qa.system import QASystem

    g = torch.Generator().manual_seed(6)
    m = 4
    object_mask = torch.tensor([[True, True, True, False]])
    ground = (torch.randn(1, m, generator=g) * 2).masked_fill(~object_mask, -torch.inf)
    ground_b = (torch.randn(1, m, generator=g) * 2).masked_fill(~object_mask, -torch.inf)
    attributes = torch.randn(1, m, sum(ATTRIBUTE_SIZES), generator=g)
    out = _decided(["yes"], ground.nan_to_num(0.0, neginf=-9.0), object_mask, attributes)
    out = QAOutput(**{**out.__dict__, "ground": ground, "ground_b": ground_b})
    yes, no = ANSWER_INDEX["yes"], ANSWER_INDEX["no"]
    pa, pb = torch.sigmoid(ground[0, :3]).tolist(), torch.sigmoid(ground_b[0, :3]).tolist()
    want = 0.0  # naive: every way the objects can be relevant to each side
    for sa in itertools.product([0, 1], repeat=3):
        for sb in itertools.product([0, 1], repeat=3):
            p = 1.0
            for bit, q in zip(sa + sb, pa + pb, strict=True):
                p *= q if bit else 1 - q
            want += p * (sum(sa) > sum(sb))
    got = QASystem._comparison_probability(out, object_mask, COMPARE.index("count"), yes)
    assert abs(got - want) < 1e-5
    assert abs(QASystem._comparison_probability(out, object_mask, COMPARE.index("count"), no) - (1 - want)) < 1e-5
    lo, n = ATTRIBUTE_SIZES[0] + ATTRIBUTE_SIZES[1], ATTRIBUTE_SIZES[2]  # colour: same value read off both sides
    wa, wb = torch.softmax(ground[0], -1), torch.softmax(ground_b[0], -1)
    pc = torch.softmax(attributes[0, :, lo : lo + n], -1)
    same = sum(float(wa[i] * wb[j] * (pc[i] * pc[j]).sum()) for i in range(m) for j in range(m))
    assert abs(QASystem._comparison_probability(out, object_mask, COMPARE.index("colour"), yes) - same) < 1e-5


def test_colour_comes_from_the_appearance_alone_with_colour_cues():
    model = _model(colour_cues=True).eval()
    ids, text_mask, feats, boxes, object_mask = _inputs()
    out = model(ids, text_mask, feats, boxes, object_mask)
    assert out.attributes.shape == (3, 5, sum(ATTRIBUTE_SIZES))
    colour = slice(sum(ATTRIBUTE_SIZES[:2]), None)
    other = feats.clone()
    other[..., : -(4 + APPEARANCE)] += 1.0  # other detector features, another question, moved boxes: same colours
    moved = model(ids.flip(0), text_mask.flip(0), other, boxes + 1.0, object_mask)
    torch.testing.assert_close(moved.attributes[..., colour], out.attributes[..., colour])
    assert not torch.allclose(moved.attributes[..., : colour.start], out.attributes[..., : colour.start])
    look = feats.clone()
    look[..., -(4 + APPEARANCE) : -MOTION] += 0.3  # another look
    assert not torch.allclose(model(ids, text_mask, look, boxes, object_mask).attributes[..., colour],
                              out.attributes[..., colour])  # fmt: skip
    with pytest.raises(ValueError, match="appearance_dim"):
        SceneQAModel(TextEmbedding(VOCAB, DIM, 20), ObjectEmbedding(FEAT, DIM), Trunk(DIM, 1, 2, kinds=TOKEN_KINDS),
                     len(ANSWERS), VOCAB, colour_cues=True)  # fmt: skip
