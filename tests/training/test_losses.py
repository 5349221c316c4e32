"""Inv-Id's loss terms: the batch-hard triplet loss."""

from __future__ import annotations

import pytest
import torch

from genreid.training.losses import batch_hard_triplet


def test_triplet_loss_is_zero_when_identities_are_separated_by_the_margin():
    labels = torch.tensor([0, 0, 1, 1])
    codes = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0]])
    assert batch_hard_triplet(codes, labels, margin=1.0).item() == 0.0


def test_triplet_loss_uses_the_hardest_positive_and_negative():
    labels = torch.tensor([0, 0, 1, 1])
    codes = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    # anchor 0: positive 2, nearest negative 1 -> 2 - 1 + 0.5; anchor 1: positive 2, negative 1 -> 1.5;
    # anchor 2: positive 2, negative 1 -> 1.5; anchor 3: positive 2, negative 1 -> 1.5.
    assert batch_hard_triplet(codes, labels, margin=0.5).item() == pytest.approx(1.5)
    codes.requires_grad_(True)
    batch_hard_triplet(codes, labels, margin=0.5).backward()
    assert codes.grad.abs().sum() > 0
