"""Inv-Id (image -> identity code) and Inv-Noise (image -> generator noise). Both take raw [0, 1] images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from genreid.training.networks.trunks import Trunk, build_trunk
from genreid.training.networks.unet import UNet

if TYPE_CHECKING:
    from genreid.training.presets import Preset


class InvId(nn.Module):
    """A trunk from the registry (training/networks/trunks.py) and a head of dense layers 512 -> 128 -> code_dim.

    The head flattens the trunk's map (rather than pooling it globally) to keep where on the body a colour sits, as
    the reference does. `stripes` > 0 first averages the map into that many horizontal stripes (head, torso,
    legs...): the vertical layout survives with a fraction of the dense weights, which overfit less. `neck` ends in
    a BatchNorm (re-ID's BNNeck): the code is the normalised feature, and training can put its triplet term on the
    feature before the norm.
    """

    def __init__(self, trunk: Trunk, resolution: tuple[int, int], code_dim: int = 32, stripes: int = 0, *,
                 neck: bool = False):
        super().__init__()
        self.trunk = trunk
        rows, cols = resolution[0] // trunk.reduction, resolution[1] // trunk.reduction
        if stripes:
            if rows % stripes:
                raise ValueError(f"{stripes} stripes do not divide the {rows} rows of the feature map")
            rows, cols = stripes, 1
        flat = trunk.out_channels * rows * cols
        self.head = nn.Sequential(
            nn.AvgPool2d((resolution[0] // trunk.reduction // rows, resolution[1] // trunk.reduction))
            if stripes else nn.Identity(),
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(flat, 512),
            nn.SiLU(),
            nn.Linear(512, 128),
            nn.SiLU(),
            nn.Linear(128, code_dim),
        )
        self.neck = nn.BatchNorm1d(code_dim) if neck else nn.Identity()

    @classmethod
    def from_preset(cls, preset: Preset) -> InvId:
        return cls(build_trunk(preset), preset.inv_id_resolution, preset.code_dim, preset.inv_id_stripes,
                   neck=preset.inv_id_bnneck)

    def forward(self, images: torch.Tensor, *, with_feature: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The identity code; with `with_feature`, (feature before the neck, code): the same tensor twice without
        a neck."""
        feature = self.head(self.trunk(images))
        code = self.neck(feature)
        return (feature, code) if with_feature else code

    @torch.no_grad()
    def match_neck(self, codes: torch.Tensor) -> None:
        """Start the neck's output at the per-dimension mean and spread of `codes`, the table its codes regress onto:
        from BatchNorm's unit spread (about 40 times the generator table's) Adam's small steps would take thousands
        of steps to get there."""
        self.neck.weight.copy_(codes.std(0))
        self.neck.bias.copy_(codes.mean(0))

    def load_finished(self, state: dict[str, torch.Tensor]) -> None:
        """Start from a finished Inv-Id's weights (progressive resizing). For the U-Net trunk, a 1x1 input conv is
        spread evenly over this one's s x s patches, so the model starts out computing what the finished one does on
        the crop box-downsampled s times, and learns the detail from there."""
        saved = state.get("trunk.stem.weight")
        stem = getattr(self.trunk.stem, "weight", None)
        if saved is not None and stem is not None and saved.shape[-2:] == (1, 1) and stem.shape[-2:] != (1, 1):
            patch = stem.shape[-2] * stem.shape[-1]
            state = {**state, "trunk.stem.weight": saved.expand(*saved.shape[:2], *stem.shape[-2:]) / patch}
        self.load_state_dict(state)


class InvIdMean(nn.Module):
    """Inv-Ids of one generator whose codes are averaged. Each regresses crops onto the generator's code table, so
    their codes share one space and the mean is a code the generator can draw; it ranks better than any member
    (docs/METHOD.md, "Averaging Inv-Ids of one generator"), for one member's work per member."""

    def __init__(self, members: list[InvId]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(images) for member in self.members]).mean(0)


class InvNoise(UNet):
    """An unconditioned U-Net: image -> the noise the generator would start from to draw it."""

    def __init__(self, widths: tuple[int, ...], blocks: int):
        super().__init__(widths, blocks)
