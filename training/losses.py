"""Inv-Id's loss terms: code regression, the softmax over training identities, the batch-hard triplet and
distillation from a teacher's codes, and how a step's batch weighs them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from genreid.training.presets import Preset


def batch_hard_triplet(codes: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over anchors of relu(farthest positive - nearest negative + margin) (Hermans et al., 2017)."""
    dist = torch.cdist(codes, codes)
    same = labels[:, None] == labels[None, :]
    hardest_positive = dist.masked_fill(~same, 0.0).max(1).values
    hardest_negative = dist.masked_fill(same, math.inf).min(1).values
    return F.relu(hardest_positive - hardest_negative + margin).mean()


def cosine_distillation(codes: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance to the teacher's codes of the same crops: retrieval compares codes by direction."""
    return (1.0 - F.cosine_similarity(codes, teacher, dim=1)).mean()


def inv_id_loss(
    predicted: torch.Tensor,
    *,
    targets: torch.Tensor | None,
    labels: torch.Tensor | None,
    generated: int,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    margin: float,
    preset: Preset,
    teacher: torch.Tensor | None = None,
    feature: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE to the regressed codes (when there are any); for the real crops (the rows after the first `generated`),
    label-smoothed cross-entropy over the training identities, the weighted batch-hard triplet loss (on `feature`,
    the rows before a BNNeck, when given) and, with a `teacher`'s codes of them, the weighted cosine distillation.
    Returns the loss and each term's value."""
    loss = predicted.new_zeros(())
    metrics: dict[str, float] = {}
    if targets is not None:
        mse = F.mse_loss(predicted, targets)
        loss = loss + mse
        metrics["mse"] = mse.item()
    if labels is not None:
        real_codes = predicted[generated:]
        ce = F.cross_entropy(logits_fn(real_codes), labels, label_smoothing=preset.label_smoothing)
        loss = loss + ce
        metrics["ce"] = ce.item()
        if preset.triplet_weight:
            triplet = batch_hard_triplet((predicted if feature is None else feature)[generated:], labels, margin=margin)
            loss = loss + preset.triplet_weight * triplet
            metrics["triplet"] = triplet.item()
    if teacher is not None:
        distill = cosine_distillation(predicted[generated:], teacher)
        loss = loss + preset.distill_weight * distill
        metrics["distill"] = distill.item()
    return loss, metrics
