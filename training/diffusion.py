"""Training-side view of the diffusion scheduler (service/core/schedule.py holds the schedule and the DDIM loop,
shared with the service): per-sample rates, noising, and sampling with a torch denoiser."""

from __future__ import annotations

from collections.abc import Callable

import torch

from genreid.service.core.schedule import Schedule, ddim_sample

TorchDenoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Diffusion:
    """Offset-cosine schedule on continuous t in [0, 1], deterministic DDIM sampling."""

    def __init__(self, schedule: Schedule | None = None, steps: int = 10):
        self.schedule = schedule or Schedule()
        self.steps = steps

    def rates(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angle = self.schedule.angle(t)
        return torch.cos(angle), torch.sin(angle)

    def add_noise(
        self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t for per-sample times t (shape (N,)); also returns the noise variance (N, 1)."""
        signal, noise = self.rates(t)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        return signal.view(shape) * x0 + noise.view(shape) * eps, (noise**2).view(-1, 1)

    def sample(self, denoise: TorchDenoiser, noise: torch.Tensor, cond: torch.Tensor,
               steps: int | None = None) -> torch.Tensor:
        """Run the shared DDIM loop with a torch denoiser(x, variance (N, 1), cond)."""

        def step(x: torch.Tensor, variance: float, c: torch.Tensor) -> torch.Tensor:
            return denoise(x, torch.full((len(x), 1), variance, device=x.device), c).float()

        return ddim_sample(step, noise, cond, steps or self.steps, self.schedule)
