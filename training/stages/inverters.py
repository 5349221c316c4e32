"""Stage 4: the inverters, trained on the generated triples.

Inv-Id regresses the generating code (MSE). Mode 'paper' sees generated images only, as the paper does;
mode 'hybrid' fills `real_fraction` of each batch with augmented real training crops whose target is their
identity's learned code, plus a softmax over distances to all learned codes, to close the gap between
generated and real crops that the paper names as a weakness.
Inv-Noise regresses the known starting noise (L1); export measures the reconstructions of real crops.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from service.evaluation import evaluate_codes
from service.similarity import code_distances
from training.data.cache import ImageSet, query_gallery_split
from training.stages.context import StageContext, random_flip, to_device_floats
from training.stages.samples import generate, load_triples
from training.trainer import batch_indices, save_atomic, step_generator

log = logging.getLogger(__name__)
MODES = ("hybrid", "paper")


def augment_real(images: torch.Tensor, gen: torch.Generator, pad: int = 3) -> torch.Tensor:
    """Re-ID's usual augmentations: flip, a small random shift (reflect-padded crop), random erasing."""
    (images,) = random_flip(images, gen)
    n, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    out = torch.stack([padded[i, :, y:y + height, x:x + width] for i, (y, x) in enumerate(zip(dy, dx, strict=True))])
    erase = torch.rand(n, generator=gen) < 0.5
    for i in erase.nonzero().flatten().tolist():
        eh, ew = int(torch.randint(8, height // 2, (1,), generator=gen)), int(torch.randint(4, width // 2, (1,),
                                                                                          generator=gen))
        y, x = int(torch.randint(0, height - eh, (1,), generator=gen)), int(torch.randint(0, width - ew, (1,),
                                                                                        generator=gen))
        out[i, :, y:y + eh, x:x + ew] = torch.rand((3, 1, 1), generator=gen).to(out.device)
    return out


def group_by_label(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of each distinct label's items, in label order (computed once, drawn from every step)."""
    return [np.flatnonzero(labels == label) for label in np.unique(labels)]


def identity_batch(
    groups: list[np.ndarray], identities: int, per_identity: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of `identities` distinct groups x `per_identity` items each (repeats only for smaller groups), so
    a batch holds positives and hard negatives for the triplet loss."""
    chosen = rng.choice(len(groups), size=identities, replace=False)
    return np.concatenate([rng.choice(groups[g], size=per_identity, replace=len(groups[g]) < per_identity)
                           for g in chosen])


def batch_hard_triplet(codes: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over anchors of relu(farthest positive - nearest negative + margin) (Hermans et al., 2017)."""
    dist = torch.cdist(codes, codes)
    same = labels[:, None] == labels[None, :]
    hardest_positive = dist.masked_fill(~same, 0.0).max(1).values
    hardest_negative = dist.masked_fill(same, math.inf).min(1).values
    return F.relu(hardest_positive - hardest_negative + margin).mean()


@torch.no_grad()
def embed(model: torch.nn.Module, data: ImageSet, device: torch.device, batch: int = 256) -> np.ndarray:
    model.eval()
    codes = [model(to_device_floats(data.images[i:i + batch], device)).float().cpu().numpy()
             for i in range(0, len(data), batch)]
    return np.concatenate(codes)


def validate_inv_id(model: torch.nn.Module, val: ImageSet, device: torch.device, seed: int) -> dict[str, float]:
    """Standard-protocol metrics on the held-out identities, and the distance at 1% false-match rate."""
    codes = embed(model, val, device)
    query, gallery = query_gallery_split(val, seed)
    metrics = evaluate_codes(codes[query], codes[gallery], val.person_ids[query], val.person_ids[gallery],
                             val.cameras[query], val.cameras[gallery]).as_dict()
    dist = code_distances(codes, codes)
    upper = np.triu(np.ones_like(dist, dtype=bool), k=1)
    same = val.person_ids[:, None] == val.person_ids[None, :]
    threshold = float(np.quantile(dist[upper & ~same], 0.01))
    metrics.update(threshold_fmr1=threshold, tpr_at_fmr1=float((dist[upper & same] <= threshold).mean()))
    return metrics


def train_inv_id(ctx: StageContext, mode: str) -> None:
    torch.manual_seed(ctx.preset.seed)  # initial weights depend on the preset's seed alone
    if mode not in MODES:
        raise ValueError(f"unknown Inv-Id mode {mode!r}; choose one of {MODES}")
    preset, runtime = ctx.preset, ctx.runtime
    name = f"inv_id_{mode}"
    triples = load_triples(ctx)
    train, val = ctx.splits
    generator = ctx.load("generator")
    table = generator["codes"].to(runtime.device)
    labels_np = np.searchsorted(generator["person_ids"], train.person_ids)
    groups = group_by_label(labels_np)
    real_count = round(preset.inv_id_batch * preset.real_fraction) if mode == "hybrid" else 0
    generated_count = preset.inv_id_batch - real_count
    if real_count and preset.triplet_weight and not preset.real_identities:
        raise ValueError("triplet_weight needs real_identities > 0 (identity-balanced real crops)")
    if real_count and preset.real_identities and real_count % preset.real_identities:
        raise ValueError(f"real_identities={preset.real_identities} must divide the {real_count} real crops per batch")
    # Softmax temperature from the code geometry: the nearest other code sits `softmax_gap` logits below one's own.
    nearest = torch.cdist(table, table).fill_diagonal_(math.inf).min(1).values.mean().item()
    scale = preset.softmax_gap / nearest**2

    model = ctx.new_inv_id()
    wrapped = runtime.wrap(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset.inv_id_lr, weight_decay=preset.inv_id_weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, preset.inv_id_lr, total_steps=preset.inv_id_steps,
                                                   pct_start=0.05)

    def state() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}

    def load(saved: dict) -> None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])

    def step(index: int) -> dict[str, float]:
        wrapped.train()
        rng, gen = step_generator(preset.seed, index, runtime.rank, salt=4)
        picked = batch_indices(len(triples), generated_count, index, preset.seed + 1, runtime.rank, runtime.world)
        (images,) = random_flip(to_device_floats(triples.images[picked], runtime.device), gen)
        targets = torch.from_numpy(triples.codes[picked]).to(runtime.device)
        if real_count:
            if preset.real_identities:
                real = identity_batch(groups, preset.real_identities, real_count // preset.real_identities, rng)
            else:
                real = batch_indices(len(train), real_count, index, preset.seed + 2, runtime.rank, runtime.world)
            images = torch.cat([images, augment_real(to_device_floats(train.images[real], runtime.device), gen)])
            real_labels = torch.from_numpy(labels_np[real]).to(runtime.device)
            targets = torch.cat([targets, table[real_labels]])
        with runtime.autocast():
            predicted = wrapped(images.contiguous(memory_format=torch.channels_last)).float()
        mse = F.mse_loss(predicted, targets)
        loss = mse
        metrics = {"mse": mse.item()}
        if real_count:
            real_codes = predicted[generated_count:]
            logits = -scale * torch.cdist(real_codes, table).pow(2)
            ce = F.cross_entropy(logits, real_labels, label_smoothing=preset.label_smoothing)
            loss = loss + ce
            metrics["ce"] = ce.item()
            if preset.triplet_weight:
                triplet = batch_hard_triplet(real_codes, real_labels, margin=nearest)
                loss = loss + preset.triplet_weight * triplet
                metrics["triplet"] = triplet.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        return metrics

    finished = ctx.loop(name, preset.inv_id_steps, preset.inv_id_batch, state, load).run(step)
    runtime.sync_buffers(model)
    if not finished:
        return
    metrics = validate_inv_id(model, val, runtime.device, preset.seed)
    log.info("%s done; validation %s", name, metrics)
    if runtime.is_main:
        save_atomic({"model": model.state_dict(), "validation": metrics, "steps": preset.inv_id_steps},
                    ctx.path(f"{name}.pt"))


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
        rebuilt = generate(unet, saved, inv_id(x).float(), inv_noise(x).float(), ctx)
    mse = F.mse_loss(rebuilt, x).item()
    return {"l1": F.l1_loss(rebuilt, x).item(), "psnr": 10.0 * math.log10(1.0 / max(mse, 1e-12))}


def train_inv_noise(ctx: StageContext) -> None:
    torch.manual_seed(ctx.preset.seed)  # initial weights depend on the preset's seed alone
    preset, runtime = ctx.preset, ctx.runtime
    triples = load_triples(ctx)
    model = ctx.new_inv_noise()
    wrapped = runtime.wrap(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.inv_noise_lr)

    def state() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    def load(saved: dict) -> None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])

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

    finished = ctx.loop("inv_noise", preset.inv_noise_steps, preset.inv_noise_batch, state, load).run(step)
    runtime.sync_buffers(model)
    if finished and runtime.is_main:
        # Reconstructions need an Inv-Id too, so export measures them with the pair it ships.
        save_atomic({"model": model.state_dict()}, ctx.path("inv_noise.pt"))


def finished_inv_ids(ctx: StageContext) -> dict[str, dict]:
    """Mode -> saved result (weights, validation metrics, steps, mode) of every Inv-Id that has finished."""
    return {mode: ctx.load(f"inv_id_{mode}") | {"mode": mode} for mode in ctx.preset.inv_id_modes
            if ctx.finished(f"inv_id_{mode}")}


def best_inv_id(ctx: StageContext) -> dict:
    """The finished Inv-Id with the best validation mAP (settings are picked on validation, never on test)."""
    finished = finished_inv_ids(ctx)
    if not finished:
        raise FileNotFoundError("no Inv-Id has finished; run the inv_id stage first")
    return max(finished.values(), key=lambda saved: saved["validation"]["mAP"])

