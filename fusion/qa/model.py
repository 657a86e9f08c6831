"""The 3D-VisTA-style unified encoder (Zhu et al. 2023, "3D-VisTA"): [CLS] + question tokens + object tokens
through ONE transformer — the detector's shared trunk, with type embeddings telling words from objects — and small
heads: answer classification, grounding (one score per object), scene-text matching, and the pre-training heads
(masked language modelling, masked object modelling).

The answer head reads the grounding scores too: besides [CLS], it sees the objects pooled by their grounding softmax
(what an object / status question asks about), both as the trunk left them and as they entered it (their attributes
unmixed: status accuracy 0.60 -> 0.69 over three seeds), and a soft count of the objects the question is about (sum
of their sigmoid scores, as radial-basis features), since attention pools by averaging and cannot count by itself
(Zhang et al. 2018, "Learning to Count Objects in Natural Images for VQA").

The grounding score of an object is the conjunction of four factors, the parts of the question's filter it meets
(`fusion.qa.dataset.FACTORS`): class, colour and status from the object after the trunk and before it (its attributes
unmixed), each against a question summary of [CLS] and attention pools over the words; the relation from that summary
and the box position (raw geometry and radial-basis codes). Its sigmoid is also the object's relevance to the question
(the objects an exist / count question is about), trained with a binary cross-entropy that weighs relevant and other
objects equally (`relevance_balanced`); each factor has its own target from the question's program (`factor_weight`).

A per-object attribute head reads each object's class, status and colour, trained on every object of the scene (dense
targets from the annotations, `attribute_weight`); with `colour_cues`, the colours come from the objects' appearance
features alone, raw and lighting-free (`fusion.qa.objects.colour_cues`). The "what" factors see its probabilities
and their product with the attributes the question asks for, and `decide` answers counts, classes and statuses off
the grounded objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fusion.models.node_types import OBJECT, TEXT
from fusion.models.transformer import Block
from fusion.models.trunk import Trunk
from fusion.qa.answers import ANSWER_INDEX, ATTRIBUTE_SIZES, CLASS_ANSWERS, COUNTS, MAX_COUNT, STATUS_ANSWERS
from fusion.qa.dataset import COMPARE, FACTORS
from fusion.qa.embeddings import GEOMETRY, POSITION_CODE, ObjectEmbedding, TextEmbedding, geometry, position_code
from fusion.qa.objects import APPEARANCE, CUES
from fusion.qa.objects import colour_cues as appearance_cues
from fusion.qa.tokenizer import CLS


@dataclass(frozen=True)
class QAOutput:
    """answer <B, A> logits; ground <B, M> logits (-inf at padding); match <B> logit; mlm <B, T, V> logits over the
    question tokens; mom <B, M, K> class logits of the objects; factors <B, M, 4> logits of the parts of the question's
    filter each object meets; attributes <B, M, sum(ATTRIBUTE_SIZES)> each object's class, status and colour logits;
    ground_b / factors_b the same as ground / factors for a comparison's second side; compare <B, len(COMPARE)>
    logits of what the question compares."""

    answer: torch.Tensor
    ground: torch.Tensor
    match: torch.Tensor
    mlm: torch.Tensor
    mom: torch.Tensor
    factors: torch.Tensor
    attributes: torch.Tensor
    ground_b: torch.Tensor | None = None
    factors_b: torch.Tensor | None = None
    compare: torch.Tensor | None = None


def conjunction(factors: torch.Tensor, floor: float = 1e-4) -> torch.Tensor:
    """Logit of the product of the factors' sigmoids <..., K> -> <...>: an object is relevant when it meets every
    part of the filter. The product is kept at most 1 - `floor` so that its logit stays finite."""
    log_p = F.logsigmoid(factors).sum(-1).clamp(max=math.log1p(-floor))  # log p
    return log_p - torch.log(-torch.expm1(log_p))  # log p - log(1 - p)


def count_distribution(p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Distribution of the number of relevant objects <B, M + 1> when object m is relevant with probability p <B, M>
    independently (Poisson-binomial), masked objects excluded: the inverse DFT of the characteristic function
    prod_m (1 - p_m + p_m w^j), w = exp(2 pi i / (M + 1)), all in one vectorised product."""
    m = p.shape[-1]
    p = (p * mask).double()  # a masked object is never relevant: its factor is 1
    w = torch.exp(2j * math.pi * torch.arange(m + 1, device=p.device, dtype=torch.float64) / (m + 1))  # (M + 1,)
    char = (1 - p[:, None, :] + p[:, None, :] * w[None, :, None]).prod(-1)  # (B, M + 1)
    return torch.fft.fft(char, dim=-1).real.div(m + 1).clamp(min=0.0).float()


def relevant(ground: torch.Tensor, object_mask: torch.Tensor) -> torch.Tensor:
    """<B, M> the objects the grounding marks relevant (sigmoid >= 0.5): the objects counted and shown."""
    return (ground.sigmoid() >= 0.5) & object_mask


def read_off(ground: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """<..., A> one attribute of the grounded object: the attribute head's distributions <..., M, A> pooled by the
    grounding softmax <..., M> (a scene without objects reads nothing: zeros)."""
    weights = ground.softmax(-1).nan_to_num(0.0)
    return torch.einsum("...m,...ma->...a", weights, logits.softmax(-1))


RULES = ("head", "count", "attribute", "compare")  # what decided an answer (`decide_with_rule`)


def decide(out: QAOutput, object_mask: torch.Tensor, count_from_grounding: bool = True,
           attributes_from_grounding: bool = True, compare_from_grounding: bool = True) -> torch.Tensor:  # fmt: skip
    """The answer class of each question <B>: the answer head's argmax, except where it answers from the grounded
    objects instead (the answer then agrees with the objects shown):

    - a count, with `count_from_grounding`: the number of objects the grounding marks relevant (sigmoid >= 0.5, at
      most MAX_COUNT). The head's own count reads a soft count through radial-basis features learnt from 160
      training scenes; on `mini_val` it was right 0.39-0.51 of the time where counting the grounded objects was
      right 0.60-0.71.
    - a class or a status, with `attributes_from_grounding`: what the per-object attribute head reads from the
      objects, pooled by the grounding softmax (the object the question is about). That head learns from every
      object of every training scene; the answer head, reading pooled tokens, learnt only from the questions and
      memorised them (right 0.73 of the time on `mini_val` where it had found the right object).
    - yes / no to a comparison, with `compare_from_grounding` (the compare head says what is compared): "more A
      than B?" is yes when more objects are relevant to the first side than to the second; "the same colour /
      status?" is yes when the attribute head reads the same value off the two sides' grounded objects."""
    return decide_with_rule(out, object_mask, count_from_grounding, attributes_from_grounding,
                            compare_from_grounding)[0]  # fmt: skip


def decide_with_rule(out: QAOutput, object_mask: torch.Tensor, count_from_grounding: bool = True,
                     attributes_from_grounding: bool = True,
                     compare_from_grounding: bool = True) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`decide`, and which rule gave each answer <B> (index into `RULES`)."""
    k = out.answer.argmax(-1)
    rule = torch.zeros_like(k)

    def apply(which: torch.Tensor, value: torch.Tensor, name: str) -> None:
        nonlocal k, rule
        k = torch.where(which, value, k)
        rule = torch.where(which, torch.full_like(rule, RULES.index(name)), rule)

    if count_from_grounding:
        counts = torch.as_tensor(COUNTS, device=k.device)
        apply(torch.isin(k, counts), counts[relevant(out.ground, object_mask).sum(-1).clamp(max=MAX_COUNT)], "count")
    if attributes_from_grounding:
        for logits, choices in zip(
            out.attributes.split(ATTRIBUTE_SIZES, -1)[:2], (CLASS_ANSWERS, STATUS_ANSWERS), strict=True
        ):
            choices = torch.as_tensor(choices, device=k.device)
            apply(torch.isin(k, choices), choices[read_off(out.ground, logits).argmax(-1)], "attribute")
    if compare_from_grounding and out.compare is not None:
        kind = out.compare.argmax(-1)  # index into COMPARE; 0: not a comparison
        yes = relevant(out.ground, object_mask).sum(-1) > relevant(out.ground_b, object_mask).sum(-1)  # counts
        _, status_logits, colour_logits = out.attributes.split(ATTRIBUTE_SIZES, -1)
        for name, logits in (("status", status_logits), ("colour", colour_logits)):
            same = read_off(out.ground, logits).argmax(-1) == read_off(out.ground_b, logits).argmax(-1)
            yes = torch.where(kind == COMPARE.index(name), same, yes)
        yes_no = torch.as_tensor((ANSWER_INDEX["yes"], ANSWER_INDEX["no"]), device=k.device)
        apply((kind > 0) & torch.isin(k, yes_no), torch.where(yes, yes_no[0], yes_no[1]), "compare")
    return k, rule


def mixed_forward(trunk: Trunk, x: torch.Tensor, kinds: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """`Trunk.forward` over a sequence mixing token kinds: <N, T, C> with kind ids <T> (into `trunk.kinds`).

    The trunk adds one kind's type embedding to every token; adding each token's difference to that kind first gives
    every token its own type embedding through the trunk's public forward (same weights, same gradients).
    """
    base = trunk.type_embed.weight[trunk.kinds.index(TEXT)]
    return trunk(x + trunk.type_embed(kinds) - base, TEXT, key_mask)


class SceneQAModel(nn.Module):
    def __init__(self, text: TextEmbedding, objects: ObjectEmbedding, trunk: Trunk, num_answers: int,
                 vocab_size: int, num_classes: int = 10, extra_depth: int = 0, heads: int = 2,
                 pools: int = 4, answer_cls_dropout: float = 0.0, colour_cues: bool = False):  # fmt: skip
        super().__init__()
        dim = trunk.out_dim
        self.text, self.objects, self.trunk = text, objects, trunk
        self.extra = nn.ModuleList(Block(dim, heads) for _ in range(extra_depth))  # QA-only layers after the trunk
        self.extra_norm = nn.LayerNorm(dim) if extra_depth else nn.Identity()
        self.register_buffer("count_centres", torch.arange(MAX_COUNT + 1, dtype=torch.float32), persistent=False)
        self.answer_head = nn.Sequential(nn.Linear(3 * dim + MAX_COUNT + 1, 2 * dim), nn.GELU(),
                                         nn.Linear(2 * dim, num_answers))  # fmt: skip
        # what the object is (class, colour, status) and where it is (the relation, last), each from its own evidence
        assert FACTORS[-1] == "relation"
        n_attr = sum(ATTRIBUTE_SIZES)
        self.what_head = nn.Sequential(nn.Linear(5 * dim + 2 * n_attr, 2 * dim), nn.GELU(),
                                       nn.Linear(2 * dim, len(FACTORS) - 1))  # fmt: skip
        self.asked = nn.Linear(dim, n_attr)  # which class / status / colour the question asks for
        self.where_head = nn.Sequential(nn.Linear(dim + GEOMETRY + POSITION_CODE, 2 * dim), nn.GELU(),
                                        nn.Linear(2 * dim, 1))  # fmt: skip
        # what each object is, from its own token as the trunk left it and as it entered: class, status, colour
        # (with `colour_cues`, class and status only: the colour is the object's appearance alone, raw and
        # lighting-free. Read from the whole token, colours were right 0.69-0.71 of the time on `mini_val` objects and
        # 0.87 on `mini_train`'s, where a tree ensemble on the appearance values alone reached 0.81 on `mini_val`.)
        n_app = objects.appearance_dim
        if colour_cues and n_app != 4 + APPEARANCE:
            raise ValueError(f"colour_cues reads the objects' appearance features (`fusion.qa.objects`): "
                             f"appearance_dim must be {4 + APPEARANCE}, got {n_app}")  # fmt: skip
        n_attr_head = sum(ATTRIBUTE_SIZES) - (ATTRIBUTE_SIZES[2] if colour_cues else 0)
        self.attribute_head = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, n_attr_head))
        self.colour_head = (
            nn.Sequential(nn.Linear(n_app + CUES, 2 * dim), nn.GELU(), nn.Linear(2 * dim, ATTRIBUTE_SIZES[2]))
            if colour_cues
            else None
        )
        self.word_pool = nn.Linear(dim, pools)  # attention pools over the question's words only
        self.query = nn.Sequential(nn.Linear((pools + 1) * dim, dim), nn.LayerNorm(dim))
        # a comparison's second side ("... than cars", "... as the red bus") has its own pools and summary, scored by
        # the same factor heads; and what a question compares (`COMPARE`: nothing, counts, colours, statuses)
        self.word_pool_b = nn.Linear(dim, pools)
        self.query_b = nn.Sequential(nn.Linear((pools + 1) * dim, dim), nn.LayerNorm(dim))
        self.compare_head = nn.Linear(dim, len(COMPARE))
        self.answer_cls_drop = nn.Dropout(answer_cls_dropout)
        self.match_head = nn.Linear(dim, 1)
        self.mlm_head = nn.Linear(dim, vocab_size)
        self.mom_head = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor, text_mask: torch.Tensor, features: torch.Tensor, boxes: torch.Tensor,
                object_mask: torch.Tensor, masked_objects: torch.Tensor | None = None,
                second: torch.Tensor | None = None) -> QAOutput:  # fmt: skip
        """ids / text_mask <B, T> (no [CLS]); features <B, M, F>, boxes <B, M, 7>, object_mask <B, M>; second <B>
        the questions whose second side is scored (default: those the compare head calls comparisons; the others'
        ground_b is -inf, factors_b 0)."""
        b, t = ids.shape
        m = features.shape[1]
        cls = ids.new_full((b, 1), CLS)
        words = self.text(torch.cat([cls, ids], 1))  # (B, 1 + T, C)
        objs = self.objects(features, boxes, masked_objects)  # (B, M, C)
        x = torch.cat([words, objs], 1)  # (B, 1 + T + M, C)
        mask = torch.cat([text_mask.new_ones(b, 1), text_mask, object_mask], 1)
        kinds = torch.tensor([self.trunk.kinds.index(TEXT)] * (1 + t) + [self.trunk.kinds.index(OBJECT)] * m,
                             device=ids.device)  # fmt: skip
        x = mixed_forward(self.trunk, x, kinds, mask)
        for block in self.extra:
            x = block(x, mask)
        x = self.extra_norm(x)
        cls_out, word_out, obj_out = x[:, 0], x[:, 1 : 1 + t], x[:, 1 + t :]  # (B, C), (B, T, C), (B, M, C)
        query = self.summary(self.word_pool, self.query, cls_out, word_out, text_mask)  # (B, C)
        query_b = self.summary(self.word_pool_b, self.query_b, cls_out, word_out, text_mask)
        attributes = self.attribute_head(torch.cat([obj_out, objs], -1))  # (B, M, A)
        if self.colour_head is not None:
            appearance = features[..., -self.objects.appearance_dim :]
            colour = self.colour_head(torch.cat([appearance, appearance_cues(appearance)], -1))
            attributes = torch.cat([attributes, colour], -1)
        ground, factors = self.score(query, obj_out, objs, attributes, boxes, object_mask)
        compare = self.compare_head(query)
        rows = compare.argmax(-1) > 0 if second is None else second
        ground_b, factors_b = torch.full_like(ground, -torch.inf), torch.zeros_like(factors)
        if rows.any():  # only comparisons have a second side: scoring it for every question doubled the step time
            ground_b[rows], factors_b[rows] = self.score(query_b[rows], obj_out[rows], objs[rows], attributes[rows],
                                                         boxes[rows], object_mask[rows])  # fmt: skip
        soft_count = ground.sigmoid().sum(1, keepdim=True)  # (B, 1)
        count_rbf = torch.exp(-2.0 * (soft_count - self.count_centres) ** 2)  # (B, MAX_COUNT + 1)
        weights = ground.softmax(-1).nan_to_num(0.0)  # (B, M); a scene without objects pools nothing
        # the object(s) the question is about, as the trunk left them and as they entered it: <B, 2C>
        pooled = torch.einsum("bm,bmc->bc", weights, torch.cat([obj_out, objs], -1))
        answer = self.answer_head(torch.cat([self.answer_cls_drop(cls_out), pooled, count_rbf], -1))
        return QAOutput(answer=answer, ground=ground, match=self.match_head(cls_out)[:, 0],
                        mlm=self.mlm_head(word_out), mom=self.mom_head(obj_out), factors=factors,
                        attributes=attributes, ground_b=ground_b, factors_b=factors_b,
                        compare=compare)  # fmt: skip

    @staticmethod
    def summary(pool: nn.Linear, proj: nn.Module, cls_out: torch.Tensor, word_out: torch.Tensor,
                text_mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The question each object is scored against <B, C>: [CLS] plus attention pools over the words alone
        ([CLS] also attends to the objects; on its own a linear probe read the asked relation from it at 0.66)."""
        score = pool(word_out).masked_fill(~text_mask[..., None], -torch.inf)  # (B, T, P)
        words_pooled = torch.einsum("btp,btc->bpc", score.softmax(1).nan_to_num(0.0), word_out).flatten(1)
        return proj(torch.cat([cls_out, words_pooled], -1))

    def score(self, query: torch.Tensor, obj_out: torch.Tensor, objs: torch.Tensor, attributes: torch.Tensor,
              boxes: torch.Tensor, object_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Grounding logits <B, M> (-inf at padding) and factor logits <B, M, K> of every object against a question
        summary <B, C>. What: each object as the trunk left it and as it entered (its own attributes, unmixed), its
        attribute readings and their product with what the question asks for. Where: its position alone, raw and
        as radial-basis codes ("left of the ego car" is a half-plane in x that the normalised, attention-mixed
        tokens blur)."""
        query = query[:, None].expand_as(obj_out)  # (B, M, C)
        probs = torch.cat([a.softmax(-1) for a in attributes.split(ATTRIBUTE_SIZES, -1)], -1)
        what = self.what_head(torch.cat([obj_out, query, obj_out * query, objs, objs * query, probs,
                                         probs * self.asked(query)], -1))  # fmt: skip
        where = self.where_head(torch.cat([query, geometry(boxes), position_code(boxes)], -1))
        factors = torch.cat([what, where], -1)  # (B, M, K)
        return conjunction(factors).masked_fill(~object_mask, -torch.inf), factors


def load_trunk(trunk: Trunk, detector_trunk: Trunk) -> None:
    """Copy the detector's trunk into the QA trunk: the blocks and final norm as they are, the type embeddings by
    kind name (the detector knows camera and lidar only; text and object rows keep their initialisation)."""
    if trunk.out_dim != detector_trunk.out_dim or len(trunk.stacks[0]) != len(detector_trunk.stacks[0]):
        raise ValueError(f"QA trunk (dim {trunk.out_dim}, depth {len(trunk.stacks[0])}) does not match the detector "
                         f"trunk (dim {detector_trunk.out_dim}, depth {len(detector_trunk.stacks[0])})")  # fmt: skip
    src = detector_trunk.kinds.index("lidar") if not detector_trunk.shared else 0
    trunk.stacks[0].load_state_dict(detector_trunk.stacks[src].state_dict())
    trunk.norm.load_state_dict(detector_trunk.norm.state_dict())
    with torch.no_grad():
        for i, kind in enumerate(detector_trunk.kinds):
            if kind in trunk.kinds:
                trunk.type_embed.weight[trunk.kinds.index(kind)] = detector_trunk.type_embed.weight[i]
