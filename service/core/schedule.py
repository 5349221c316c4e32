"""The offset-cosine diffusion schedule and the deterministic DDIM sampler.

Written over plain arithmetic so the same code drives torch tensors in training and numpy arrays in the
service: whatever the trainer samples with is what /transfer renders with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

Array = TypeVar("Array")


@dataclass(frozen=True)
class Schedule:
    """x_t = signal(t) * x0 + noise(t) * eps, with angle linear in t in [0, 1]."""

    max_signal_rate: float = 0.95
    min_signal_rate: float = 0.02

    @property
    def start_angle(self) -> float:
        return math.acos(self.max_signal_rate)

    @property
    def end_angle(self) -> float:
        return math.acos(self.min_signal_rate)

    def angle(self, t: Any) -> Any:
        """Works for floats and for arrays/tensors of t."""
        return self.start_angle + t * (self.end_angle - self.start_angle)

    def rates(self, t: float) -> tuple[float, float]:
        """(signal rate, noise rate) at a scalar t."""
        angle = self.angle(t)
        return math.cos(angle), math.sin(angle)

    def as_dict(self) -> dict[str, float | str]:
        return {"kind": "offset_cosine", "max_signal_rate": self.max_signal_rate,
                "min_signal_rate": self.min_signal_rate}


# denoise(noisy images, noise variance as a float, codes) -> predicted noise, same shape as the images.
Denoiser = Callable[[Array, float, Array], Array]


def ddim_sample(denoise: Denoiser, noise: Array, codes: Array, steps: int, schedule: Schedule) -> Array:
    """Deterministic DDIM from pure noise at t=1: predict eps, form x0, re-noise at the next rate.

    Returns the last x0 estimate (in the generator's normalised image space).
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    images = noise
    x0 = noise
    for step in range(steps):
        signal, noise_rate = schedule.rates(1.0 - step / steps)
        eps = denoise(images, noise_rate**2, codes)
        x0 = (images - noise_rate * eps) / signal
        next_signal, next_noise = schedule.rates(1.0 - (step + 1) / steps)
        images = next_signal * x0 + next_noise * eps
    return x0
