"""Building blocks shared by the U-Net, the inverters and the code MLP."""

from __future__ import annotations

import math

import torch
from torch import nn


class NoiseEmbedding(nn.Module):
    """sin/cos of `dim/2` log-spaced frequencies (1 to 1000) applied to the noise variance."""

    def __init__(self, dim: int = 64, min_frequency: float = 1.0, max_frequency: float = 1000.0):
        super().__init__()
        frequencies = torch.exp(torch.linspace(math.log(min_frequency), math.log(max_frequency), dim // 2))
        self.register_buffer("angular_speeds", 2.0 * math.pi * frequencies, persistent=False)
        self.dim = dim

    def forward(self, variance: torch.Tensor) -> torch.Tensor:
        """(N, 1) -> (N, dim)."""
        angles = variance.float() * self.angular_speeds
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResidualBlock(nn.Module):
    """shortcut (1x1 conv if channels change) + [BatchNorm (no affine) -> 3x3 conv + SiLU -> 3x3 conv]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.shortcut = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels, affine=False),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(x)


def broadcast(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, C, H, W) with the spatial size of `like`."""
    return vector[:, :, None, None].expand(-1, -1, like.shape[2], like.shape[3]).to(like.dtype)
