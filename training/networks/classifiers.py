"""Training-only heads that turn Inv-Id codes into per-identity logits (never exported: retrieval uses the codes).

`CodeTableHead` is the hybrid's: the generator's learned codes are fixed targets. The ablation's, with no
generator involved, is one learned vector per training identity: `CosineClassifier`, or a plain linear layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mean_nearest_distance(table: torch.Tensor) -> float:
    """Mean distance from each row to its nearest other row: the code table's natural unit of separation."""
    return torch.cdist(table, table).fill_diagonal_(math.inf).min(1).values.mean().item()


class CodeTableHead(nn.Module):
    """Logits = -scale x squared distance to each learned code, the scale set so that the nearest other code sits
    `gap` logits below one's own; `targets` are the codes themselves (the hybrid also regresses them)."""

    def __init__(self, table: torch.Tensor, gap: float):
        super().__init__()
        self.register_buffer("table", table, persistent=False)  # the generator's, not trained here
        self.nearest = mean_nearest_distance(table)
        self.scale = gap / self.nearest**2

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return -self.scale * torch.cdist(codes, self.table).pow(2)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table[labels]


class CosineClassifier(nn.Module):
    """Logits = `scale` x cosine between the code and each identity's learned vector. Retrieval compares codes
    by direction, so the classifier trains exactly what is compared; the code's length is left to the triplet loss."""

    def __init__(self, identities: int, code_dim: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(identities, code_dim))
        self.scale = scale

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return cosine_logits(codes, self.weight, self.scale)


def cosine_logits(codes: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, D) codes x (K, D) vectors -> (N, K) scaled cosines, in [-scale, scale] whatever the lengths."""
    return scale * F.normalize(codes, dim=1) @ F.normalize(weight, dim=1).T


CLASSIFIERS = ("cosine", "linear")


def new_classifier(kind: str, identities: int, code_dim: int, scale: float) -> nn.Module:
    """A learned table of one vector per identity: cosine (direction only, as retrieval compares codes) or linear
    (dot product + bias: the code's length counts too, so cross-entropy keeps codes from shrinking)."""
    if kind == "cosine":
        return CosineClassifier(identities, code_dim, scale)
    if kind == "linear":
        return nn.Linear(code_dim, identities)
    raise ValueError(f"unknown classifier {kind!r}; choose one of {CLASSIFIERS}")
