"""An omni-scale trunk for re-identification, written here from its published description (Zhou et al., "Omni-Scale
Feature Learning for Person Re-Identification", ICCV 2019), not from any implementation.

Each block squeezes its input with a 1x1 conv, runs four streams of 1, 2, 3 and 4 "lite" 3x3 layers (pointwise then
depthwise convolution), so each stream sees a larger receptive field, weighs every stream's channels with one
shared gate (global pooling, a bottleneck MLP, a sigmoid) before summing them, and expands back with a 1x1 conv
around a residual connection. Depthwise convolutions make it about a tenth of the U-Net trunk's work per crop.

Layout: a 7x7 stride-2 stem and 3x3 max pooling, then three stages of two blocks (the first two followed by a 1x1
conv and 2x2 average pooling), then a 1x1 conv: 16 times smaller than the input. Channels 64, 256, 384, 512 at width
1.0; `width` scales them all (0.25: 16, 64, 96, 128).
"""

from __future__ import annotations

import torch
from torch import nn

BASE_CHANNELS = (64, 256, 384, 512)
STREAMS = 4
GATE_REDUCTION = 16


def conv_bn(in_channels: int, out_channels: int, kernel: int, *, stride: int = 1, groups: int = 1,
            relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LiteConv(nn.Sequential):
    """1x1 pointwise then 3x3 depthwise convolution, batch-normalised: a 3x3 receptive field for a fraction of a
    full 3x3 convolution's work."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ChannelGate(nn.Module):
    """Per-channel weights in (0, 1) from the globally pooled map; one gate is shared by every stream of a block,
    so the streams are weighed against each other by the same rule."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(channels // GATE_REDUCTION, 1)
        self.weights = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class OmniScaleBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        middle = out_channels // 4
        self.squeeze = conv_bn(in_channels, middle, 1)
        self.streams = nn.ModuleList(
            nn.Sequential(*(LiteConv(middle, middle) for _ in range(depth))) for depth in range(1, STREAMS + 1)
        )
        self.gate = ChannelGate(middle)
        self.expand = conv_bn(middle, out_channels, 1, relu=False)
        self.shortcut = (nn.Identity() if in_channels == out_channels
                         else conv_bn(in_channels, out_channels, 1, relu=False))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = self.squeeze(x)
        mixed = sum(self.gate(stream(squeezed)) for stream in self.streams)
        return self.relu(self.expand(mixed) + self.shortcut(x))


class OmniScaleNet(nn.Module):
    """The trunk: images (N, 3, H, W) -> features (N, out_channels, H / 16, W / 16)."""

    reduction = 16

    def __init__(self, width: float = 1.0, blocks_per_stage: int = 2):
        super().__init__()
        if width <= 0:
            raise ValueError(f"inv_id_trunk_width must be positive, not {width}")
        stem, *stages = (max(4, int(round(channels * width / 4)) * 4) for channels in BASE_CHANNELS)
        self.stem = nn.Sequential(conv_bn(3, stem, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1))
        layers: list[nn.Module] = []
        channels = stem
        for index, out_channels in enumerate(stages):
            for block in range(blocks_per_stage):
                layers.append(OmniScaleBlock(channels if block == 0 else out_channels, out_channels))
            channels = out_channels
            if index < len(stages) - 1:  # transition: mix channels, halve the map
                layers += [conv_bn(channels, channels, 1), nn.AvgPool2d(2, stride=2)]
        layers.append(conv_bn(channels, channels, 1))
        self.stages = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(images))
