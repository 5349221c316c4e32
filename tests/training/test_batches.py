"""Batch draws and augmentation: identity-balanced batches for the triplet loss, and the images' augmentations and
resizing to Inv-Id's input."""

from __future__ import annotations

import numpy as np
import torch

from genreid.training.batches import augment_real, group_by_label, identity_batch, resize_images


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


def test_resize_images_upsamples_bilinear_and_keeps_the_range():
    images = torch.rand((3, 3, 64, 32))
    assert resize_images(images, (64, 32)) is images
    up = resize_images(images, (128, 64))
    assert up.shape == (3, 3, 128, 64) and 0.0 <= up.min() and up.max() <= 1.0
    flat = torch.full((1, 3, 64, 32), 0.25)
    assert torch.allclose(resize_images(flat, (128, 64)), torch.full((1, 3, 128, 64), 0.25))
    # Bilinear: a horizontal ramp stays a ramp, each 2x2 block averaging back to its source pixel.
    ramp = torch.linspace(0.0, 1.0, 32).expand(1, 3, 64, 32)
    pooled = torch.nn.functional.avg_pool2d(resize_images(ramp, (128, 64)), 2)
    assert torch.allclose(pooled[..., 1:-1], ramp[..., 1:-1], atol=1e-6)


def test_augment_real_keeps_the_shape_at_any_resolution():
    for size in ((64, 32), (128, 64)):
        out = augment_real(torch.rand((6, 3, *size)), torch.Generator().manual_seed(0))
        assert out.shape == (6, 3, *size)
