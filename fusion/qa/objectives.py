"""Training objectives of the QA encoder: the task losses (answer, grounding, relevance of every object to the
question) and 3D-VisTA's pre-training objectives — masked language modelling (MLM), masked object modelling (MOM:
predict the class of masked objects from their context and location) and scene-text matching (STM: questions paired
with another sample's objects are negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fusion.qa.answers import ATTRIBUTE_SIZES
from fusion.qa.tokenizer import MASK, PAD, SPECIALS


def mask_tokens(ids: torch.Tensor, mask: torch.Tensor, vocab_size: int, p: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """BERT masking: of the real tokens, a fraction p is chosen (at least one per non-empty row); 80 % become [MASK],
    10 % a random word, 10 % stay. Returns (masked ids, targets <B, T> with -100 where not chosen)."""
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    u = u.masked_fill(~mask, 2.0)
    chosen = (u < p) & mask
    first = u.argmin(1)  # the most eligible token of each row, so every non-empty row trains
    chosen[torch.arange(len(ids)), first] |= mask.any(1)
    targets = ids.masked_fill(~chosen, -100)
    r = torch.rand(ids.shape, generator=generator, device=ids.device)
    random_words = torch.randint(len(SPECIALS), vocab_size, ids.shape, generator=generator, device=ids.device)
    out = torch.where(chosen & (r < 0.8), torch.full_like(ids, MASK), ids)
    out = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_words, out)
    return out.masked_fill(~mask, PAD), targets


def mask_objects(object_mask: torch.Tensor, p: float = 0.15, generator: torch.Generator | None = None) -> torch.Tensor:
    """<B, M> the objects whose features are replaced by [MASK] (a fraction p of the real ones)."""
    u = torch.rand(object_mask.shape, generator=generator, device=object_mask.device)
    return (u < p) & object_mask


def mismatch(
    batch_size: int, p: float = 0.5, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """STM negatives: (scene index for each question <B>, matched flag <B>). A fraction p of the questions get the
    scene of another question of the batch (a derangement among them), the rest keep their own."""
    if batch_size < 2:
        return torch.arange(batch_size), torch.ones(batch_size, dtype=torch.bool)
    neg = torch.rand(batch_size, generator=generator) < p
    idx = torch.arange(batch_size)
    chosen = neg.nonzero()[:, 0]
    if len(chosen) == 1:  # one negative: borrow the next question's scene
        idx[chosen] = (chosen + 1) % batch_size
    elif len(chosen) > 1:
        idx[chosen] = chosen.roll(1)  # a cycle among the negatives: nobody keeps its own scene
    return idx, idx == torch.arange(batch_size)


def balanced_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with the positives and the negatives weighed equally (the mean of the two means)."""
    per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    pos = targets > 0.5
    parts = [per[side].mean() for side in (pos, ~pos) if side.any()]
    return sum(parts) / len(parts) if parts else logits.sum() * 0.0


def task_losses(out, answer: torch.Tensor, ground_target: torch.Tensor, relevance: torch.Tensor,
                relevance_valid: torch.Tensor, object_mask: torch.Tensor, balanced: bool = False,
                relevance_weight: float = 1.0, factors: torch.Tensor | None = None,
                factor_valid: torch.Tensor | None = None,
                factor_weight: float = 0.0, attributes: torch.Tensor | None = None,
                attribute_weight: float = 0.0, factors_b: torch.Tensor | None = None,
                factor_valid_b: torch.Tensor | None = None, relevance_b: torch.Tensor | None = None,
                compare: torch.Tensor | None = None,
                attribute_balanced: bool = False) -> dict[str, torch.Tensor]:  # fmt: skip
    """answer <B> (-1: outside the vocabulary); ground_target <B> object index (-1: not a grounding question);
    relevance <B, M> 0/1 (objects the question is about) used where `relevance_valid` <B>; factors <B, M, K> 0/1
    (which parts of the question's filter each object meets) used where factor_valid <B, M>, each part's binary
    cross-entropy balanced between objects that meet it and those that don't, weighed by `factor_weight` (0: off);
    attributes <B, M, 3> each object's class / status / colour (-1: none), one cross-entropy per attribute over the
    objects that have it (`attribute_balanced`: every value present weighs the same in total, as the questions'
    answers do), their mean weighed by `attribute_weight` (0: off). A comparison's second side: factors_b,
    used where factor_valid_b <B, M>, join the factor loss, and relevance_b <B, M> (there too) has its own relevance
    loss; compare <B> (index into `COMPARE`, -1: unknown) trains what a question compares."""
    zero = out.answer.sum() * 0.0
    has_answer = answer >= 0
    losses = {"answer": F.cross_entropy(out.answer[has_answer], answer[has_answer]) if has_answer.any() else zero}
    g = ground_target >= 0
    losses["ground"] = F.cross_entropy(out.ground[g], ground_target[g]) if g.any() else zero

    def relevance_loss(ground: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # relevant objects are ~5 % of all: `balanced` weighs the two sides equally, or "none" wins
        logits, target = ground.masked_fill(~object_mask, 0.0)[valid], target[valid]
        loss = balanced_bce(logits, target) if balanced else F.binary_cross_entropy_with_logits(logits, target)
        return relevance_weight * loss

    valid = relevance_valid[:, None] & object_mask
    losses["relevance"] = relevance_loss(out.ground, relevance, valid) if valid.any() else zero
    second = factors_b is not None and out.factors_b is not None
    vb = factor_valid_b & object_mask if second else None
    if second and relevance_b is not None and vb.any():
        losses["relevance_b"] = relevance_loss(out.ground_b, relevance_b, vb)
    if factor_weight > 0 and factors is not None:
        fv = factor_valid & object_mask
        pred, target = out.factors[fv], factors[fv]  # (N, K)
        if second:
            pred, target = torch.cat([pred, out.factors_b[vb]]), torch.cat([target, factors_b[vb]])
        parts = [balanced_bce(pred[:, k], target[:, k]) for k in range(factors.shape[-1])]
        losses["factors"] = factor_weight * sum(parts) / len(parts) if len(target) else zero
    if compare is not None and out.compare is not None:
        known = compare >= 0
        losses["compare"] = F.cross_entropy(out.compare[known], compare[known]) if known.any() else zero
    if attribute_weight > 0 and attributes is not None:
        parts = []
        for k, logits in enumerate(out.attributes.split(ATTRIBUTE_SIZES, -1)):
            has = object_mask & (attributes[..., k] >= 0)
            if not has.any():
                parts.append(zero)
                continue
            target = attributes[..., k][has]
            weight = None
            if attribute_balanced:  # each value present in the batch weighs the same in total
                n = torch.bincount(target, minlength=logits.shape[-1]).float()
                weight = torch.where(n > 0, 1.0 / n.clamp(min=1), torch.zeros_like(n))
            per = F.cross_entropy(logits[has], target, reduction="none")
            parts.append(per.mean() if weight is None else (per * weight[target]).sum() / weight[target].sum())
        losses["attributes"] = attribute_weight * sum(parts) / len(parts)
    return losses


def pretrain_losses(out, mlm_targets: torch.Tensor | None, masked_objects: torch.Tensor | None,
                    object_labels: torch.Tensor, matched: torch.Tensor | None) -> dict[str, torch.Tensor]:  # fmt: skip
    zero = out.answer.sum() * 0.0
    losses = {}
    if mlm_targets is not None:
        chosen = mlm_targets >= 0
        losses["mlm"] = F.cross_entropy(out.mlm[chosen], mlm_targets[chosen]) if chosen.any() else zero
    if masked_objects is not None:
        chosen = masked_objects & (object_labels >= 0)
        losses["mom"] = F.cross_entropy(out.mom[chosen], object_labels[chosen]) if chosen.any() else zero
    if matched is not None:
        losses["stm"] = F.binary_cross_entropy_with_logits(out.match, matched.float())
    return losses
