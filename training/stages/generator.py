"""Stage 1: the conditional denoising U-Net and the identity-code table, trained jointly.

Loss: L1 between predicted and true noise + code_l2 * mean(code^2) over the batch's codes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genreid.training.batches import batch_indices, random_flip
from genreid.training.data.cache import ImageSet
from genreid.training.loop import EMA
from genreid.training.networks.unet import UNet
from genreid.training.run_files import Checkpointed, save_atomic
from genreid.training.runtime import step_generator, unwrap
from genreid.training.stages.context import StageContext, normalise, to_device_floats

log = logging.getLogger(__name__)


class ConditionalGenerator(nn.Module):
    """The denoiser plus one learned code per training identity (a plain table, initialised small)."""

    def __init__(self, unet: UNet, identities: int, code_dim: int):
        super().__init__()
        self.unet = unet
        self.codes = nn.Embedding(identities, code_dim)
        nn.init.uniform_(self.codes.weight, -0.05, 0.05)

    def forward(self, noisy: torch.Tensor, variance: torch.Tensor, labels: torch.Tensor):
        codes = self.codes(labels)
        return self.unet(noisy, variance, codes), codes


def code_statistics(codes: np.ndarray) -> dict[str, float]:
    """Nearest-neighbour and mean pairwise distances between codes (the paper reports 0.14 / 0.6 / 0.99)."""
    diff = codes[:, None, :] - codes[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    off = dist[~np.eye(len(codes), dtype=bool)]
    np.fill_diagonal(dist, np.inf)
    nearest = dist.min(1)
    return {"nn_mean": float(nearest.mean()), "nn_min": float(nearest.min()), "pair_mean": float(off.mean()),
            "pair_max": float(off.max())}


def noisy_batch(ctx: StageContext, x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A randomly flipped batch of normalised crops noised at random times: (noisy, variance, the noise added)."""
    (x0,) = random_flip(x0, gen)
    eps = torch.randn(x0.shape, generator=gen).to(x0.device)
    t = torch.rand(len(x0), generator=gen).to(x0.device)
    noisy, variance = ctx.diffusion.add_noise(x0, eps, t)
    return noisy.contiguous(memory_format=torch.channels_last), variance, eps


def generator_loss(predicted: torch.Tensor, eps: torch.Tensor, codes: torch.Tensor,
                   code_l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the generator's loss, its L1 noise error): what training minimises over weights and codes, and what the
    recovery of an export's codes minimises over the codes alone."""
    noise_loss = F.l1_loss(predicted.float(), eps)
    return noise_loss + code_l2 * codes.float().pow(2).mean(), noise_loss


@dataclass(frozen=True)
class GeneratorCrops:
    """The generator's training crops, each crop's row in the code table, and the per-channel mean and std the
    denoiser's inputs are normalised with (they travel in model.json)."""

    train: ImageSet
    person_ids: np.ndarray  # the table's rows, in order
    labels: np.ndarray  # per crop
    mean: torch.Tensor
    std: torch.Tensor


def generator_crops(ctx: StageContext) -> GeneratorCrops:
    train, _ = ctx.splits
    person_ids = np.unique(train.person_ids)
    floats = to_device_floats(train.images, torch.device("cpu"))
    device = ctx.runtime.device
    return GeneratorCrops(train, person_ids, np.searchsorted(person_ids, train.person_ids),
                          floats.mean(dim=(0, 2, 3)).to(device), floats.std(dim=(0, 2, 3)).to(device))


def train_generator(ctx: StageContext) -> ConditionalGenerator:
    """Train (or resume) the generator; returns the model as trained so far."""
    torch.manual_seed(ctx.preset.seed)  # initial weights depend on the preset's seed alone
    preset, runtime = ctx.preset, ctx.runtime
    crops = generator_crops(ctx)
    train, person_ids, labels_np, mean, std = crops.train, crops.person_ids, crops.labels, crops.mean, crops.std

    model = ConditionalGenerator(
        UNet(preset.widths, preset.blocks, preset.code_dim, embed_dim=64), len(person_ids), preset.code_dim
    )
    wrapped = runtime.wrap(model)
    optimizer = torch.optim.Adam([
        {"params": model.unet.parameters(), "lr": preset.generator_lr},
        {"params": model.codes.parameters(), "lr": preset.code_lr},
    ])
    ema = EMA(model.unet, preset.ema)
    log.info("generator: %d identities, %d crops, %.2fM parameters", len(person_ids), len(train),
             sum(p.numel() for p in model.unet.parameters()) / 1e6)

    # The .ckpt's keys (see Checkpointed): runs resume across code versions only while they stay.
    checkpointed = Checkpointed(model=model, optimizer=optimizer, ema=ema)

    def step(index: int) -> dict[str, float]:
        _, gen = step_generator(preset.seed, index, runtime.rank)
        batch = batch_indices(len(train), preset.generator_batch, index, preset.seed, runtime.rank, runtime.world)
        x0 = normalise(to_device_floats(train.images[batch], runtime.device), mean, std)
        noisy, variance, eps = noisy_batch(ctx, x0, gen)
        labels = torch.from_numpy(labels_np[batch]).to(runtime.device)
        with runtime.autocast():
            predicted, codes = wrapped(noisy, variance, labels)
        loss, noise_loss = generator_loss(predicted, eps, codes, preset.code_l2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update(unwrap(wrapped).unet)
        return {"loss": loss.item(), "noise_l1": noise_loss.item()}

    loop = ctx.loop("generator", preset.generator_steps, preset.generator_batch, checkpointed)
    finished = loop.run(step)
    runtime.sync_buffers(model)
    if not finished:
        return model
    codes = model.codes.weight.detach().float().cpu()
    stats = code_statistics(codes.numpy())
    log.info("generator done; code distances %s", stats)
    if runtime.is_main:
        save_atomic({"unet": ema.state, "codes": codes, "person_ids": person_ids, "mean": mean.cpu(),
                     "std": std.cpu(), "code_stats": stats}, ctx.path("generator.pt"))
    return model

