"""Stage 4, beside Inv-Id: Inv-Noise regresses the known starting noise (L1) of the generated triples. Export
measures the reconstructions of real crops, since they need the Inv-Id it ships too."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from genreid.training.batches import batch_indices, random_flip, resize_images
from genreid.training.run_files import Checkpointed, save_atomic
from genreid.training.runtime import step_generator
from genreid.training.stages.context import StageContext, to_device_floats
from genreid.training.stages.samples import generate, load_triples


def reconstruction_error(ctx: StageContext, inv_id: torch.nn.Module, inv_noise: torch.nn.Module,
                         images: np.ndarray) -> dict[str, float]:
    """L1 and PSNR (in [0, 1]) between real crops and their regeneration from (Inv-Id, Inv-Noise)."""
    device = next(inv_id.parameters()).device
    unet, saved = ctx.generator()
    unet.to(device)
    x = to_device_floats(images, device)
    with torch.no_grad():
        inv_id.eval()
        inv_noise.eval()
        # Inv-Id may read a higher resolution than the generator draws: it sees the crops upsampled.
        codes = inv_id(resize_images(x, ctx.preset.inv_id_resolution)).float()
        rebuilt = generate(unet, saved, codes, inv_noise(x).float(), ctx)
    mse = F.mse_loss(rebuilt, x).item()
    return {"l1": F.l1_loss(rebuilt, x).item(), "psnr": 10.0 * math.log10(1.0 / max(mse, 1e-12))}


def train_inv_noise(ctx: StageContext) -> None:
    """Train (or resume) Inv-Noise on the generated triples; once finished, save its weights."""
    torch.manual_seed(ctx.preset.seed)  # initial weights depend on the preset's seed alone
    preset, runtime = ctx.preset, ctx.runtime
    triples = load_triples(ctx)
    model = ctx.new_inv_noise()
    wrapped = runtime.wrap(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.inv_noise_lr)

    # The .ckpt's keys (see Checkpointed): runs resume across code versions only while they stay.
    checkpointed = Checkpointed(model=model, optimizer=optimizer)

    def step(index: int) -> dict[str, float]:
        wrapped.train()
        _, gen = step_generator(preset.seed, index, runtime.rank, salt=5)
        picked = batch_indices(len(triples), preset.inv_noise_batch, index, preset.seed + 3, runtime.rank,
                               runtime.world)
        images = to_device_floats(triples.images[picked], runtime.device)
        images, targets = random_flip(images, gen, torch.from_numpy(triples.noises[picked]).to(runtime.device))
        with runtime.autocast():
            predicted = wrapped(images.contiguous(memory_format=torch.channels_last)).float()
        loss = F.l1_loss(predicted, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"l1": loss.item()}

    loop = ctx.loop("inv_noise", preset.inv_noise_steps, preset.inv_noise_batch, checkpointed)
    finished = loop.run(step)
    runtime.sync_buffers(model)
    if finished and runtime.is_main:
        # Reconstructions need an Inv-Id too, so export measures them with the pair it ships.
        save_atomic({"model": model.state_dict()}, ctx.path("inv_noise.pt"))
