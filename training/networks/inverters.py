"""Inv-Id (image -> identity code) and Inv-Noise (image -> generator noise). Both take raw [0, 1] images."""

from __future__ import annotations

import torch
from torch import nn

from training.networks.unet import Encoder, UNet


class InvId(nn.Module):
    """The U-Net encoder trunk (no skips) flattened into dense layers 512 -> 128 -> code_dim.

    Flattening (rather than global pooling) keeps where on the body a colour sits, as the reference does.
    `stripes` > 0 first averages the feature map into that many horizontal stripes (head, torso, legs...):
    the vertical layout survives with a fraction of the dense weights, which overfit less.
    """

    def __init__(
        self, widths: tuple[int, ...], blocks: int, resolution: tuple[int, int], code_dim: int = 32, stripes: int = 0
    ):
        super().__init__()
        self.trunk = Encoder(widths, blocks)
        scale = 2 ** (len(widths) - 1)
        rows, cols = resolution[0] // scale, resolution[1] // scale
        if stripes:
            if rows % stripes:
                raise ValueError(f"{stripes} stripes do not divide the {rows} rows of the feature map")
            rows, cols = stripes, 1
        flat = self.trunk.out_channels * rows * cols
        self.head = nn.Sequential(
            nn.AvgPool2d((resolution[0] // scale // rows, resolution[1] // scale)) if stripes else nn.Identity(),
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(flat, 512),
            nn.SiLU(),
            nn.Linear(512, 128),
            nn.SiLU(),
            nn.Linear(128, code_dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features, _ = self.trunk(images)
        return self.head(features)


class InvNoise(UNet):
    """An unconditioned U-Net: image -> the noise the generator would start from to draw it."""

    def __init__(self, widths: tuple[int, ...], blocks: int):
        super().__init__(widths, blocks)
