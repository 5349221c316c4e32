"""Inv-Id trunks, one registry: a preset names its trunk (`inv_id_trunk`), and export, INT8, model.json, the card
and the service work for any entry unchanged (they see an image -> code network).

A trunk maps images (N, 3, H, W) in [0, 1] to a feature map (N, out_channels, H / reduction, W / reduction); Inv-Id
puts its head (stripes, dense layers to the code, optional BNNeck) on top. A new trunk is a builder registered
here with `@register_trunk("name")` taking the preset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from genreid.training.networks.osnet import OmniScaleNet
from genreid.training.networks.unet import Encoder

if TYPE_CHECKING:
    from genreid.training.presets import Preset


class Trunk(nn.Module):
    """What Inv-Id needs of a trunk: its output channels and how many times it shrinks the input."""

    out_channels: int
    reduction: int


TrunkBuilder = Callable[["Preset"], Trunk]
TRUNKS: dict[str, TrunkBuilder] = {}


def register_trunk(name: str) -> Callable[[TrunkBuilder], TrunkBuilder]:
    def register(builder: TrunkBuilder) -> TrunkBuilder:
        if name in TRUNKS:
            raise ValueError(f"trunk {name!r} is registered twice")
        TRUNKS[name] = builder
        return builder

    return register


def build_trunk(preset: Preset) -> Trunk:
    if preset.inv_id_trunk not in TRUNKS:
        raise ValueError(f"inv_id_trunk {preset.inv_id_trunk!r}: choose one of {sorted(TRUNKS)}")
    return TRUNKS[preset.inv_id_trunk](preset)


class EncoderTrunk(Encoder, Trunk):
    """The generator's U-Net encoder without its skips (the paper's Inv-Id trunk); parameter names as Encoder's,
    so every Inv-Id trained before the registry loads unchanged."""

    def __init__(self, widths: tuple[int, ...], blocks: int, *, stem_stride: int, last_stride: int):
        if last_stride not in (1, 2):
            raise ValueError(f"inv_id_last_stride is 1 (no pooling before the bottleneck) or 2, not {last_stride}")
        super().__init__(widths, blocks, stem_stride=stem_stride, last_stride=last_stride)
        self.reduction = 2 ** (len(widths) - 2) * last_stride * stem_stride

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        features, _ = super().forward(images)
        return features


@register_trunk("unet")
def unet_trunk(preset: Preset) -> Trunk:
    return EncoderTrunk(preset.inv_id_widths or preset.inv_widths, preset.blocks, stem_stride=preset.inv_id_stem_stride,
                        last_stride=preset.inv_id_last_stride)


@register_trunk("osnet")
def osnet_trunk(preset: Preset) -> Trunk:
    return OmniScaleNet(width=preset.inv_id_trunk_width)


def multiply_adds(module: nn.Module, resolution: tuple[int, int]) -> int:
    """Multiply-adds of one crop through `module` (convolutions and dense layers, which are nearly all of it):
    what a trunk costs per crop, independent of the machine (the model card and the trunk bench report it)."""
    total = 0

    def count(layer: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            total += output[0].numel() * per_output
        elif isinstance(layer, nn.Linear):
            total += layer.in_features * layer.out_features

    counted = [layer for layer in module.modules() if isinstance(layer, nn.Conv2d | nn.Linear)]
    hooks = [layer.register_forward_hook(count) for layer in counted]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, 3, *resolution))
    finally:
        for hook in hooks:
            hook.remove()
    return total
