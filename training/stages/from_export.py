"""What a run started from an export (`genreid train --from MODELS_DIR`) takes from it instead of training: the
generator (denoiser and identity-code table) and Inv-Noise.

The later stages need the table of learned codes, one per training identity: the identity generator learns their
distribution and the hybrid Inv-Id's real crops target them. Exports keep it (identity_codes.npy); for one written
before they did, it is recovered by inversion. With the denoiser frozen, each identity's code is found again as the
generator found it: the one minimising the generator's own loss (L1 noise error + code_l2 * mean(code^2)) on that
identity's crops. Either way the stage costs minutes where the generator costs hours, so Inv-Id experiments start
from a shipped model when its run directory is gone.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genreid.service.core.imaging import to_chw_float
from genreid.service.core.model_json import MODEL_FILES, ModelMetadata
from genreid.service.core.similarity import code_distances
from genreid.service.encoders import Encoders
from genreid.training.batches import batch_indices
from genreid.training.networks.unet import UNet
from genreid.training.onnx_weights import load_onnx_weights
from genreid.training.run_files import Checkpointed, save_atomic
from genreid.training.runtime import step_generator
from genreid.training.stages.context import StageContext, normalise, to_device_floats
from genreid.training.stages.generator import (
    GeneratorCrops,
    code_statistics,
    generator_crops,
    generator_loss,
    noisy_batch,
)

log = logging.getLogger(__name__)

CODES_FILE = "identity_codes.npy"  # an export's code table, rows in person_id order (training/export.py)
STATS_TOLERANCE = 1e-4  # the export's per-channel mean and std against the data's: same crops, same numbers


def exported_denoiser(ctx: StageContext, models_dir: Path) -> UNet:
    """The export's denoiser as the preset's U-Net, in eval mode with its weights frozen."""
    preset = ctx.preset
    unet = UNet(preset.widths, preset.blocks, preset.code_dim, embed_dim=64)
    load_onnx_weights(unet, models_dir / MODEL_FILES["denoiser"], prefix="unet.")
    return unet.to(ctx.runtime.device).eval().requires_grad_(False)


def check_same_data(metadata: ModelMetadata, person_ids: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
                    models_dir: Path) -> None:
    """The codes are recovered from the crops the model was trained on: another data folder or split is refused."""
    identities = metadata.identities
    same_stats = np.allclose(mean.cpu().numpy(), metadata.mean, atol=STATS_TOLERANCE) and np.allclose(
        std.cpu().numpy(), metadata.std, atol=STATS_TOLERANCE)
    if identities != len(person_ids) or not same_stats:
        raise ValueError(f"{models_dir} was trained on other crops than these ({identities} identities and channel "
                         f"mean {np.round(metadata.mean, 4).tolist()}, here {len(person_ids)} and "
                         f"{np.round(mean.cpu().numpy(), 4).tolist()}): pass the data folder it was trained on")


def inv_id_agreement(ctx: StageContext, models_dir: Path, table: np.ndarray, person_ids: np.ndarray,
                     chunk: int = 1024) -> float:
    """Share of training crops whose code from the export's own Inv-Id lies nearest (by direction, as the service
    ranks) to their identity's recovered code. That Inv-Id was trained to put these crops on the original table, so
    a faithful recovery scores near its training accuracy, and a table of unrelated codes near 1 / identities."""
    encoders = Encoders(models_dir, device="cpu", precision="float")
    train, _ = ctx.inv_id_splits
    codes = np.concatenate([encoders.identity(to_chw_float(train.images[start : start + chunk]))
                            for start in range(0, len(train), chunk)])
    nearest = code_distances(codes, table).argmin(axis=1)
    return float(np.mean(person_ids[nearest] == train.person_ids))


def exported_codes(models_dir: Path, metadata: ModelMetadata, *, identities: int,
                   code_dim: int) -> tuple[torch.Tensor, bool] | None:
    """The export's identity-code table and whether it was itself recovered, or None for an export without one
    (written before exports kept it)."""
    entry = metadata.identity_codes
    if entry is None:
        return None
    table = np.load(models_dir / entry.file)
    if table.shape != (identities, code_dim):
        raise ValueError(f"{models_dir / entry.file} holds a {table.shape} code table where {identities} "
                         f"identities of {code_dim} were expected: the export is damaged")
    return torch.from_numpy(table.astype(np.float32)), entry.recovered


def recover_codes(ctx: StageContext, unet: UNet, crops: GeneratorCrops) -> torch.Tensor | None:
    """The code table minimising the generator's loss under the frozen `unet`, or None when the loop stopped
    early (checkpointed; the same command resumes it)."""
    preset, runtime = ctx.preset, ctx.runtime
    train, labels_np, mean, std = crops.train, crops.labels, crops.mean, crops.std
    torch.manual_seed(preset.seed)
    codes = nn.Embedding(len(crops.person_ids), preset.code_dim).to(runtime.device)
    nn.init.uniform_(codes.weight, -0.05, 0.05)  # where the generator's table started
    optimizer = torch.optim.Adam(codes.parameters(), lr=preset.code_recovery_lr)
    # Cosine decay to zero: late steps average the noisy per-timestep gradients instead of following them.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, preset.code_recovery_steps)
                                                    / preset.code_recovery_steps)))
    log.info("generator: recovering %d identity codes by inversion", len(crops.person_ids))

    def step(index: int) -> dict[str, float]:
        _, gen = step_generator(preset.seed, index, rank=0)
        batch = batch_indices(len(train), preset.code_recovery_batch, index, preset.seed)
        x0 = normalise(to_device_floats(train.images[batch], runtime.device), mean, std)
        noisy, variance, eps = noisy_batch(ctx, x0, gen)
        batch_codes = codes(torch.from_numpy(labels_np[batch]).to(runtime.device))
        loss, noise_loss = generator_loss(unet(noisy, variance, batch_codes), eps, batch_codes, preset.code_l2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        return {"loss": loss.item(), "noise_l1": noise_loss.item()}

    checkpointed = Checkpointed(codes=codes, optimizer=optimizer, schedule=schedule)
    loop = ctx.loop("generator", preset.code_recovery_steps, preset.code_recovery_batch, checkpointed)
    return codes.weight.detach().float().cpu() if loop.run(step) else None


def generator_from_export(ctx: StageContext, models_dir: Path) -> None:
    """Write generator.pt, as the generator stage does, from `models_dir`'s denoiser and its code table: the one
    the export keeps, or, for an export without one, recovered by inversion."""
    preset, runtime = ctx.preset, ctx.runtime
    if not runtime.is_main:
        return  # one table for all ranks: the others wait at run_stages' barrier, then read generator.pt
    crops = generator_crops(ctx)
    metadata = ModelMetadata.load(models_dir)
    check_same_data(metadata, crops.person_ids, crops.mean, crops.std, models_dir)
    unet = exported_denoiser(ctx, models_dir)
    stored = exported_codes(models_dir, metadata, identities=len(crops.person_ids), code_dim=preset.code_dim)
    if stored is None:
        table, recovered = recover_codes(ctx, unet, crops), True
        if table is None:
            return
    else:
        table, recovered = stored
    stats = code_statistics(table.numpy())
    agreement = inv_id_agreement(ctx, models_dir, table.numpy(), crops.person_ids)
    log.info("generator: from %s, codes %s; the export's Inv-Id puts %.1f %% of training crops nearest their own "
             "identity's code; code distances %s (the export's own: %s)", models_dir,
             "recovered by inversion" if stored is None else "as exported", 100 * agreement, stats,
             metadata.code_stats)
    save_atomic({"unet": unet.state_dict(), "codes": table, "person_ids": crops.person_ids, "mean": crops.mean.cpu(),
                 "std": crops.std.cpu(), "code_stats": stats, "from_export": str(models_dir),
                 "codes_recovered": recovered, "inv_id_agreement": agreement}, ctx.path("generator.pt"))


def import_inv_noise(ctx: StageContext, models_dir: Path) -> None:
    """Write inv_noise.pt from the export's inv_noise.onnx. It inverts the same denoiser this run draws with, so a
    run from an export that keeps Inv-Noise's settings exports a servable model without retraining it."""
    model = load_onnx_weights(ctx.new_inv_noise(), models_dir / MODEL_FILES["inv_noise"])
    if ctx.runtime.is_main:
        save_atomic({"model": model.state_dict(), "imported_from": str(models_dir)}, ctx.path("inv_noise.pt"))
