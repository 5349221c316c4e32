"""The hybrid Inv-Id's identity-balanced batches and batch-hard triplet loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genreid.training.stages.inverters import batch_hard_triplet, group_by_label, identity_batch


def test_identity_batch_draws_distinct_identities_with_k_crops_each():
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    picked = identity_batch(group_by_label(labels), identities=5, per_identity=4, rng=np.random.default_rng(0))
    assert picked.shape == (20,)
    groups = labels[picked].reshape(5, 4)
    assert (groups == groups[:, :1]).all()  # each block of 4 is one identity
    assert len(set(groups[:, 0])) == 5  # and the 5 identities differ
    for group, indices in zip(groups[:, 0], picked.reshape(5, 4), strict=True):
        if (labels == group).sum() >= 4:
            assert len(set(indices)) == 4  # crops repeat only when the identity has fewer than K


def test_identity_batch_is_a_function_of_the_generator():
    labels = np.repeat(np.arange(30), 5)
    groups = group_by_label(labels)
    first = identity_batch(groups, 8, 4, np.random.default_rng([3, 7]))
    again = identity_batch(groups, 8, 4, np.random.default_rng([3, 7]))
    other = identity_batch(groups, 8, 4, np.random.default_rng([3, 8]))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


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
