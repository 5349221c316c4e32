"""The U-Net of the paper: the conditional denoiser, and (without conditioning) Inv-Noise and the Inv-Id trunk."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genreid.training.networks.layers import NoiseEmbedding, ResidualBlock, broadcast


class Encoder(nn.Module):
    """Input conv, then per level `blocks` residual blocks and 2x average pooling, then the bottleneck.

    When `code_dim` > 0 the identity code is concatenated at the input and again after every pooling;
    when `embed_dim` > 0 the noise-variance embedding is concatenated at the input. The input conv is 1x1; with
    `stem_stride` s > 1 it reads s x s patches instead (a learned space-to-depth), so every level works at 1/s of
    the input's size: a 128x64 crop at the compute of a 64x32 one. `last_stride` 1 skips the pooling before the
    bottleneck (re-ID's "last stride 1"): the last map keeps twice the rows and columns, for the bottleneck's blocks
    at four times their cost.
    """

    def __init__(
        self, widths: tuple[int, ...], blocks: int, code_dim: int = 0, embed_dim: int = 0, *, stem_stride: int = 1,
        last_stride: int = 2,
    ):
        super().__init__()
        self.code_dim = code_dim
        self.last_stride = last_stride
        self.embedding = NoiseEmbedding(embed_dim) if embed_dim else None
        self.stem = nn.Conv2d(3, widths[0], stem_stride, stride=stem_stride)
        channels = widths[0] + embed_dim + code_dim
        self.levels = nn.ModuleList()
        for width in widths[:-1]:
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResidualBlock(channels, width))
                channels = width
            self.levels.append(level)
            channels += code_dim
        bottleneck = []
        for _ in range(blocks):
            bottleneck.append(ResidualBlock(channels, widths[-1]))
            channels = widths[-1]
        self.bottleneck = nn.Sequential(*bottleneck)
        self.out_channels = channels

    def forward(
        self, images: torch.Tensor, variance: torch.Tensor | None = None, code: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the bottleneck features and the skip tensors (one per residual block, coarse last)."""
        x = self.stem(images)
        extra = []
        if self.embedding is not None:
            extra.append(broadcast(self.embedding(variance), x))
        if self.code_dim:
            extra.append(broadcast(code, x))
        x = torch.cat([x, *extra], dim=1) if extra else x
        skips = []
        for index, level in enumerate(self.levels):
            for block in level:
                x = block(x)
                skips.append(x)
            stride = self.last_stride if index == len(self.levels) - 1 else 2
            x = F.avg_pool2d(x, stride) if stride > 1 else x
            if self.code_dim:
                x = torch.cat([x, broadcast(code, x)], dim=1)
        return self.bottleneck(x), skips


class UNet(nn.Module):
    """eps(x_t, noise variance, code) for the generator; with code_dim=0 and embed_dim=0, an image-to-image
    U-Net (Inv-Noise). Bilinear upsampling with skips and no conditioning on the way up; zero-initialised
    output so training starts from predicting zero."""

    def __init__(self, widths: tuple[int, ...], blocks: int, code_dim: int = 0, embed_dim: int = 0):
        super().__init__()
        self.encoder = Encoder(widths, blocks, code_dim, embed_dim)
        channels = self.encoder.out_channels
        self.up_levels = nn.ModuleList()
        for width in reversed(widths[:-1]):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResidualBlock(channels + width, width))
                channels = width
            self.up_levels.append(level)
        self.head = nn.Conv2d(channels, 3, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(
        self, images: torch.Tensor, variance: torch.Tensor | None = None, code: torch.Tensor | None = None
    ) -> torch.Tensor:
        x, skips = self.encoder(images, variance, code)
        for level in self.up_levels:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            for block in level:
                x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)
