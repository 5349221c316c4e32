"""What each step's batch is drawn from and how its images are augmented. Every draw takes its RNG as an argument
(see runtime.step_generator), so a resumed run draws exactly the batches an uninterrupted one does."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def batch_indices(n: int, batch: int, step: int, seed: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Indices of this rank's batch at `step`: successive seeded permutations (epochs) of range(n)."""
    start = (step * world + rank) * batch
    positions = np.arange(start, start + batch)
    epochs = positions // n
    out = np.empty(batch, dtype=np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(n)
        mask = epochs == epoch
        out[mask] = order[positions[mask] % n]
    return out


def group_by_label(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of each distinct label's items, in label order (computed once, drawn from every step)."""
    return [np.flatnonzero(labels == label) for label in np.unique(labels)]


def identity_batch(
    groups: list[np.ndarray], identities: int, per_identity: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of `identities` distinct groups x `per_identity` items each (repeats only for smaller groups), so
    a batch holds positives and hard negatives for the triplet loss."""
    chosen = rng.choice(len(groups), size=identities, replace=False)
    return np.concatenate([rng.choice(groups[g], size=per_identity, replace=len(groups[g]) < per_identity)
                           for g in chosen])


def random_flip(images: torch.Tensor, generator: torch.Generator, *others: torch.Tensor) -> list[torch.Tensor]:
    """Flip a random half of the batch horizontally, and the same samples of `others` (e.g. their noise)."""
    flip = (torch.rand(len(images), generator=generator) < 0.5).to(images.device).view(-1, 1, 1, 1)
    return [torch.where(flip, t.flip(-1), t) for t in (images, *others)]


def augment_real(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Re-ID's usual augmentations: flip, a small random shift (reflect-padded crop), random erasing. Sizes are
    fractions of the crop (a 3-pixel shift and erasures of 8-32 x 4-16 pixels at 64x32), so any resolution gets
    the same augmentation."""
    (images,) = random_flip(images, gen)
    n, _, height, width = images.shape
    pad = round(height * 3 / 64)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    out = torch.stack([padded[i, :, y:y + height, x:x + width] for i, (y, x) in enumerate(zip(dy, dx, strict=True))])
    erase = torch.rand(n, generator=gen) < 0.5
    for i in erase.nonzero().flatten().tolist():
        eh = int(torch.randint(height // 8, height // 2, (1,), generator=gen))
        ew = int(torch.randint(width // 8, width // 2, (1,), generator=gen))
        y, x = int(torch.randint(0, height - eh, (1,), generator=gen)), int(torch.randint(0, width - ew, (1,),
                                                                                        generator=gen))
        out[i, :, y:y + eh, x:x + ew] = torch.rand((3, 1, 1), generator=gen).to(out.device)
    return out


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, *size), bilinear: generated samples brought to Inv-Id's input resolution (Inv-Id may
    read a higher resolution than the generator draws)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
