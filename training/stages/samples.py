"""Stage 3: a cache of generated (image, code, noise) triples for the inverters.

Codes come from the identity generator (sampling the training codes directly overfits, the paper found),
noises from N(0, 1), images from the EMA denoiser with the 10-step DDIM sampler. Images are stored as uint8,
the same quantisation real crops have. Written chunk by chunk, so an interrupted run resumes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from genreid.training.networks.unet import UNet
from genreid.training.stages.codes import sample_codes
from genreid.training.stages.context import StageContext, denormalise

log = logging.getLogger(__name__)
CHUNK = 256


@dataclass(frozen=True)
class Triples:
    images: np.ndarray  # uint8 (N, H, W, 3)
    codes: np.ndarray  # float32 (N, D)
    noises: np.ndarray  # float32 (N, 3, H, W)

    def __len__(self) -> int:
        return len(self.images)


def load_triples(ctx: StageContext) -> Triples:
    path = ctx.path("samples.npz")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: stage 'samples' has not finished; run it first")
    with np.load(path) as saved:
        return Triples(saved["images"], saved["codes"], saved["noises"])


def generate(unet: UNet, saved: dict, codes: torch.Tensor, noises: torch.Tensor, ctx: StageContext) -> torch.Tensor:
    """Images in [0, 1] of identities `codes` from starting noises `noises`."""
    mean, std = saved["mean"].to(noises.device), saved["std"].to(noises.device)

    def denoise(x: torch.Tensor, variance: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with ctx.runtime.autocast():
            return unet(x, variance, c)

    with torch.no_grad():
        return denormalise(ctx.diffusion.sample(denoise, noises, codes, ctx.preset.sample_steps), mean, std)


def make_samples(ctx: StageContext) -> None:
    preset, device = ctx.preset, ctx.runtime.device
    if not ctx.runtime.is_main:
        return
    unet, saved = ctx.generator()
    mlp, code_saved = ctx.code_sampler()
    height, width = preset.resolution
    parts = ctx.path("samples.parts")
    parts.mkdir(exist_ok=True)
    chunks = -(-preset.samples // CHUNK)
    ctx.earlier_seconds["samples"] = 0.0
    for chunk in tqdm(range(chunks), desc="samples"):
        part = parts / f"{chunk:05d}.npz"
        if part.is_file():  # made before an interruption; chunks are seeded by index, so nothing changes
            with np.load(part) as made:
                ctx.earlier_seconds["samples"] += float(made["seconds"]) if "seconds" in made else 0.0
            continue
        started = time.monotonic()
        gen = torch.Generator().manual_seed(preset.seed * 1_000_003 + chunk)
        count = min(CHUNK, preset.samples - chunk * CHUNK)
        code = sample_codes(mlp, code_saved, count, ctx.diffusion, gen)
        noise = torch.randn((count, 3, height, width), generator=gen).to(device)
        image = generate(unet, saved, code, noise, ctx)
        _savez(part, images=(image.permute(0, 2, 3, 1) * 255.0 + 0.5).clamp(0, 255).byte().cpu().numpy(),
               codes=code.float().cpu().numpy(), noises=noise.cpu().numpy(),
               seconds=np.float64(time.monotonic() - started))  # so a resumed stage is timed whole
    loaded = [np.load(parts / f"{chunk:05d}.npz") for chunk in range(chunks)]
    _savez(ctx.path("samples.npz"), **{key: np.concatenate([part[key] for part in loaded])
                                      for key in ("images", "codes", "noises")})
    shutil.rmtree(parts)
    log.info("samples: %d generated triples", preset.samples)


def _savez(path: Path, **arrays: np.ndarray) -> None:
    """Write then rename, so a kill never leaves a torn file that looks finished."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
