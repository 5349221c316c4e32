"""What the stages share: the run directory's files, the data, and loaders for earlier stages' results."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genreid.service.core.schedule import Schedule
from genreid.training.data.cache import ImageSet, hold_out_identities, load_split
from genreid.training.diffusion import Diffusion
from genreid.training.loop import StageLoop
from genreid.training.networks.code_mlp import CodeMLP
from genreid.training.networks.inverters import InvId, InvIdMean, InvNoise
from genreid.training.networks.unet import UNet
from genreid.training.presets import Preset
from genreid.training.run_files import Checkpointed
from genreid.training.runtime import Runtime


@dataclass
class StageContext:
    """One training run: preset, data folder, run directory and the process's runtime."""

    preset: Preset
    data_root: Path
    run_dir: Path
    runtime: Runtime
    cache_dir: Path | None = None
    stop_after: int | None = None  # run at most this many steps per stage, then checkpoint (for tests/slices)
    # An export whose denoiser this run's generator is (`genreid train --from MODELS_DIR`): its codes are recovered.
    generator_export: Path | None = None
    diffusion: Diffusion = field(default_factory=lambda: Diffusion(Schedule()))
    # Stage -> wall seconds it spent in this run's earlier sittings (as its checkpoints or parts kept them), filled
    # as stages resume; run_stages adds it to the sitting's own time in timings.json.
    earlier_seconds: dict[str, float] = field(default_factory=dict)

    @cached_property
    def splits(self) -> tuple[ImageSet, ImageSet]:
        """(train, validation) at the generator's resolution: validation identities are carved out of
        bounding_box_train."""
        return self._splits_at(self.preset.resolution)

    @cached_property
    def inv_id_splits(self) -> tuple[ImageSet, ImageSet]:
        """The same (train, validation) crops at Inv-Id's resolution, decoded there (not upsampled)."""
        if tuple(self.preset.inv_id_resolution) == tuple(self.preset.resolution):
            return self.splits
        return self._splits_at(self.preset.inv_id_resolution)

    def _splits_at(self, size: tuple[int, int]) -> tuple[ImageSet, ImageSet]:
        # The held-out identities depend on the split seed and the identity list alone: every size splits alike.
        return hold_out_identities(self.split("train", size), self.preset.val_identities, self.preset.split_seed)

    def split(self, split: str, size: tuple[int, int]) -> ImageSet:
        """One of the data folder's splits (query, gallery, ...) at `size` (H, W), through the shared cache."""
        return load_split(self.data_root, split, size, self.cache_dir)

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def loop(
        self,
        name: str,
        total: int,
        items_per_step: int,
        checkpointed: Checkpointed,
        *,
        validate: Callable[[], dict[str, float]] | None = None,
        validate_every: int = 0,
    ) -> StageLoop:
        return StageLoop(
            name, total, self.path(f"{name}.ckpt"), self.runtime, checkpointed,
            log_path=self.path("log.jsonl"), items_per_step=items_per_step,
            checkpoint_seconds=self.preset.checkpoint_seconds, log_every=self.preset.log_every,
            stop_after=self.stop_after, earlier=self.earlier_seconds, validate=validate, validate_every=validate_every,
        )

    def finished(self, name: str) -> bool:
        return self.path(f"{name}.pt").is_file()

    def load(self, name: str) -> dict[str, Any]:
        path = self.path(f"{name}.pt")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: stage '{name}' has not finished; run it first")
        return torch.load(path, map_location=self.runtime.device, weights_only=False)

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        self.path(name).write_text(json.dumps(payload, indent=2) + "\n")

    # Networks of earlier stages, rebuilt from their saved results.

    def generator(self) -> tuple[UNet, dict[str, Any]]:
        """The EMA denoiser in eval mode, and the generator's saved record (codes, mean, std, ...)."""
        saved = self.load("generator")
        unet = UNet(self.preset.widths, self.preset.blocks, self.preset.code_dim, embed_dim=64)
        unet.load_state_dict(saved["unet"])
        return unet.to(self.runtime.device).eval(), saved

    def code_sampler(self) -> tuple[CodeMLP, dict[str, Any]]:
        saved = self.load("codes")
        mlp = CodeMLP(self.preset.code_dim, self.preset.codes_hidden)
        mlp.load_state_dict(saved["mlp"])
        return mlp.to(self.runtime.device).eval(), saved

    def new_inv_id(self) -> InvId | InvIdMean:
        """The preset's Inv-Id, or the mean of `inv_id_members` of them (a joined run)."""
        preset = self.preset
        members = [InvId.from_preset(preset) for _ in range(preset.inv_id_members)]
        return members[0] if len(members) == 1 else InvIdMean(members)

    def new_inv_noise(self) -> InvNoise:
        return InvNoise(self.preset.inv_widths, self.preset.blocks)


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the generator's per-channel normalised space."""
    return (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def denormalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)).clamp(0.0, 1.0)


def to_device_floats(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1] on `device` (as core.imaging.to_chw_float)."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)
