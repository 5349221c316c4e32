"""Stage 4: the inverters, trained on the generated triples.

Inv-Id regresses the generating code (MSE). Mode 'paper' sees generated images only, as the paper does;
mode 'hybrid' fills `real_fraction` of each batch with augmented real training crops whose target is their
identity's learned code, plus a softmax over distances to all learned codes, to close the gap between
generated and real crops that the paper names as a weakness. Mode 'discriminative' is the ablation without any
generator: the hybrid's real crops only, a learned (cosine or linear) classifier instead of the generator's
code table.
Inv-Id may read a higher resolution than the generator draws: generated samples are upsampled to it.
Inv-Noise regresses the known starting noise (L1); export measures the reconstructions of real crops.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genreid.service.core.evaluation import Evaluator
from genreid.service.core.similarity import code_distances
from genreid.training.data.cache import ImageSet, query_gallery_split
from genreid.training.networks.classifiers import CLASSIFIERS, CodeTableHead, new_classifier
from genreid.training.networks.inverters import InvId
from genreid.training.onnx_weights import onnx_state_dict
from genreid.training.presets import Preset
from genreid.training.runs import run_context
from genreid.training.stages.context import StageContext, random_flip, to_device_floats
from genreid.training.stages.samples import Triples, generate, load_triples
from genreid.training.trainer import Checkpointed, batch_indices, save_atomic, step_generator

log = logging.getLogger(__name__)
MODES = ("hybrid", "paper", "discriminative")


def uses_generator(mode: str) -> bool:
    """Whether an Inv-Id mode needs the generator's stages (its code table or generated samples)."""
    return mode != "discriminative"


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, *size), bilinear: generated samples brought to Inv-Id's input resolution."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def augment_real(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Re-ID's usual augmentations: flip, a small random shift (reflect-padded crop), random erasing. Sizes are
    fractions of the crop (a 3-pixel shift and erasures of 8-32 x 4-16 pixels at 64x32), so any resolution gets
    the same augmentation."""
    (images,) = random_flip(images, gen)
    n, _, height, width = images.shape
    pad = round(height * 3 / 64)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    out = torch.stack([padded[i, :, y:y + height, x:x + width] for i, (y, x) in enumerate(zip(dy, dx, strict=True))])
    erase = torch.rand(n, generator=gen) < 0.5
    for i in erase.nonzero().flatten().tolist():
        eh = int(torch.randint(height // 8, height // 2, (1,), generator=gen))
        ew = int(torch.randint(width // 8, width // 2, (1,), generator=gen))
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


def saved_inv_id(ctx: StageContext, saved: dict) -> nn.Module:
    """A finished Inv-Id (its saved result: a member's or a joined run's mean) as a network on the run's device."""
    model = ctx.new_inv_id().to(ctx.runtime.device)
    model.load_state_dict(saved["model"])
    return model


def inv_id_evaluator(ctx: StageContext, saved: dict, query: ImageSet, gallery: ImageSet) -> Evaluator[ImageSet]:
    """A finished Inv-Id (its saved result) scoring `query` against `gallery` from its torch weights."""
    return Evaluator(partial(embed, saved_inv_id(ctx, saved), device=ctx.runtime.device), query, gallery)


def validation_evaluator(val: ImageSet, seed: int, embed: Callable[[ImageSet], np.ndarray]) -> Evaluator[ImageSet]:
    """The held-out identities as a retrieval split (one query per person and camera, the rest gallery): what
    the Inv-Id variant, the match threshold and the re-ranking parameters are chosen on."""
    query, gallery = query_gallery_split(val, seed)
    return Evaluator(embed, val.subset(query), val.subset(gallery))


def validate_inv_id(model: torch.nn.Module, val: ImageSet, device: torch.device, seed: int) -> dict[str, float]:
    """Standard-protocol metrics on the held-out identities, and the distance at 1% false-match rate."""
    evaluator = validation_evaluator(val, seed, lambda split: embed(model, split, device))
    metrics = evaluator.metrics().as_dict()
    codes = np.concatenate([evaluator.q_codes, evaluator.g_codes])
    person_ids = np.concatenate([evaluator.query.person_ids, evaluator.gallery.person_ids])
    dist = code_distances(codes, codes)
    upper = np.triu(np.ones_like(dist, dtype=bool), k=1)
    same = person_ids[:, None] == person_ids[None, :]
    threshold = float(np.quantile(dist[upper & ~same], 0.01))
    metrics.update(threshold_fmr1=threshold, tpr_at_fmr1=float((dist[upper & same] <= threshold).mean()))
    return metrics


@dataclass(frozen=True)
class InvIdPlan:
    """How one Inv-Id step's batch splits: `generated` samples first, then `real` crops drawn as `identities` x
    (real / identities) each (0 identities: at random)."""

    generated: int
    real: int
    identities: int


def inv_id_plan(preset: Preset, mode: str) -> InvIdPlan:
    """Check the preset's settings for `mode` and split its batch. The discriminative mode keeps the hybrid's real
    crops (`real_fraction` of `inv_id_batch`) and drops its generated ones, so both see the same real data."""
    if mode not in MODES:
        raise ValueError(f"unknown Inv-Id mode {mode!r}; choose one of {MODES}")
    real = 0 if mode == "paper" else round(preset.inv_id_batch * preset.real_fraction)
    generated = preset.inv_id_batch - real if uses_generator(mode) else 0
    if not real + generated:
        raise ValueError(f"mode {mode!r} draws no images: check inv_id_batch and real_fraction")
    if real and preset.triplet_weight and not preset.real_identities:
        raise ValueError("triplet_weight needs real_identities > 0 (identity-balanced real crops)")
    if real and preset.real_identities and real % preset.real_identities:
        raise ValueError(f"real_identities={preset.real_identities} must divide the {real} real crops per batch")
    if not uses_generator(mode) and preset.classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {preset.classifier!r}; choose one of {CLASSIFIERS}")
    if not uses_generator(mode) and preset.triplet_weight and not preset.triplet_margin:
        raise ValueError("the discriminative mode has no generator code table to take the triplet margin from: "
                         "set triplet_margin")
    if bool(preset.inv_id_teacher) != bool(preset.distill_weight):
        raise ValueError("inv_id_teacher and distill_weight go together: a teacher run and the weight of its codes")
    if preset.inv_id_teacher and not real:
        raise ValueError(f"mode {mode!r} draws no real crops for the teacher to code")
    return InvIdPlan(generated, real, preset.real_identities)


@dataclass(frozen=True)
class IdentityTargets:
    """What real crops are pulled towards: a head giving one logit per training identity, the person id of each
    of its rows, and the triplet margin."""

    head: nn.Module
    person_ids: np.ndarray
    margin: float


def identity_targets(ctx: StageContext, mode: str, train: ImageSet) -> IdentityTargets:
    """The generator's code table (hybrid, paper) or a new learned classifier (discriminative: no generator
    needed). Call after building the Inv-Id so its initial weights do not depend on the mode."""
    preset, device = ctx.preset, ctx.runtime.device
    if uses_generator(mode):
        generator = ctx.load("generator")
        table = CodeTableHead(generator["codes"].to(device), preset.softmax_gap)
        return IdentityTargets(table, generator["person_ids"], preset.triplet_margin or table.nearest)
    person_ids = np.unique(train.person_ids)
    classifier = new_classifier(preset.classifier, len(person_ids), preset.code_dim, preset.classifier_scale)
    return IdentityTargets(classifier.to(device), person_ids, preset.triplet_margin)


def inv_id_optimiser(
    preset: Preset, modules: list[nn.Module]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with decoupled weight decay over every trained parameter, and a one-cycle schedule (5% warm-up)."""
    parameters = [p for module in modules for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=preset.inv_id_lr, weight_decay=preset.inv_id_weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, preset.inv_id_lr, total_steps=preset.inv_id_steps,
                                                   pct_start=0.05)
    return optimizer, schedule


def inv_id_loss(
    predicted: torch.Tensor, targets: torch.Tensor | None, labels: torch.Tensor | None, generated: int,
    logits_fn: Callable[[torch.Tensor], torch.Tensor], margin: float, preset: Preset,
    teacher: torch.Tensor | None = None, feature: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE to the regressed codes (when there are any); for the real crops (the rows after the first `generated`),
    label-smoothed cross-entropy over the training identities, the weighted batch-hard triplet loss (on `feature`,
    the rows before a BNNeck, when given) and, with a `teacher`'s codes of them, the weighted cosine distance to
    those (retrieval compares codes by direction)."""
    loss = predicted.new_zeros(())
    metrics: dict[str, float] = {}
    if targets is not None:
        mse = F.mse_loss(predicted, targets)
        loss = loss + mse
        metrics["mse"] = mse.item()
    if labels is not None:
        real_codes = predicted[generated:]
        ce = F.cross_entropy(logits_fn(real_codes), labels, label_smoothing=preset.label_smoothing)
        loss = loss + ce
        metrics["ce"] = ce.item()
        if preset.triplet_weight:
            triplet = batch_hard_triplet((predicted if feature is None else feature)[generated:], labels, margin=margin)
            loss = loss + preset.triplet_weight * triplet
            metrics["triplet"] = triplet.item()
    if teacher is not None:
        distill = (1.0 - F.cosine_similarity(predicted[generated:], teacher, dim=1)).mean()
        loss = loss + preset.distill_weight * distill
        metrics["distill"] = distill.item()
    return loss, metrics


@dataclass(frozen=True)
class InvIdTraining:
    """One Inv-Id stage's fixed parts, built once by `inv_id_setup` and read by every step."""

    name: str  # the stage: inv_id_<mode>
    plan: InvIdPlan
    triples: Triples | None  # the generated samples; None when the plan draws none
    train: ImageSet  # real crops at Inv-Id's resolution
    val: ImageSet
    model: InvId
    wrapped: nn.Module  # the model, under DDP when distributed
    identity: IdentityTargets
    logits_fn: Callable[[torch.Tensor], torch.Tensor]  # the identity head, under DDP when it learns
    labels: np.ndarray  # each real crop's row of the identity head
    groups: list[np.ndarray]  # real crop indices per label, for identity-balanced batches
    teacher_codes: np.ndarray | None  # each real crop's code by the teacher run's Inv-Id; None without a teacher
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    checkpointed: Checkpointed


def finished_inv_id_weights(path: Path, model: InvId) -> dict[str, torch.Tensor]:
    """The weights `inv_id_init` names: a run's inv_id_<mode>.pt, or an export's inv_id.onnx (float32, when the run
    directory is gone), keyed like `model`'s own."""
    if path.suffix == ".onnx":
        return onnx_state_dict(path, model.state_dict())
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def inv_id_setup(ctx: StageContext, mode: str) -> InvIdTraining:
    """Check the preset for `mode` and build what its steps share. The order is part of the result: the seed is
    set after the data is read and before the Inv-Id is built, then a learned head, so the Inv-Id's initial
    weights depend on its seed alone (`Preset.inv_id_rng_seed`) and not on the mode."""
    preset, runtime = ctx.preset, ctx.runtime
    if preset.inv_id_members != 1:
        raise ValueError("a run trains one Inv-Id: train each member as a run of its own and join them with "
                         "`genreid join-inv-ids`")
    plan = inv_id_plan(preset, mode)
    triples = load_triples(ctx) if plan.generated else None
    train, val = ctx.inv_id_splits
    # Before the seed is set: building the teacher's network draws from the global generator.
    teacher = teacher_codes(ctx, Path(preset.inv_id_teacher), train) if preset.inv_id_teacher else None
    torch.manual_seed(preset.inv_id_rng_seed)
    model = ctx.new_inv_id()
    if preset.inv_id_init:
        model.load_finished(finished_inv_id_weights(Path(preset.inv_id_init), model))
    identity = identity_targets(ctx, mode, train)
    head = identity.head
    if preset.inv_id_bnneck and isinstance(head, CodeTableHead):
        model.match_neck(head.table)
    labels = np.searchsorted(identity.person_ids, train.person_ids)
    groups = group_by_label(labels)
    wrapped = runtime.wrap(model)
    # Only a learned head has gradients to share between ranks (DDP refuses a module without any).
    logits_fn = runtime.wrap(head) if any(p.requires_grad for p in head.parameters()) else head
    optimizer, schedule = inv_id_optimiser(preset, [model, head])
    # The .ckpt's keys (see Checkpointed): runs resume across code versions only while they stay.
    checkpointed = Checkpointed(model=model, head=head, optimizer=optimizer, schedule=schedule)
    return InvIdTraining(f"inv_id_{mode}", plan, triples, train, val, model, wrapped, identity, logits_fn, labels,
                         groups, teacher, optimizer, schedule, checkpointed)


@dataclass(frozen=True)
class InvIdBatch:
    """One step's images (generated rows first), the codes they regress onto and the real rows' labels."""

    images: list[torch.Tensor]  # concatenated only under autocast, as the model reads them
    targets: torch.Tensor | None  # None when no row regresses a code (the discriminative mode)
    labels: torch.Tensor | None  # None when the batch holds no real crops (the paper mode)
    teacher: torch.Tensor | None = None  # the teacher's codes of the real crops (before augmentation)


def inv_id_batch(
    ctx: StageContext, run: InvIdTraining, index: int, rng: np.random.Generator, gen: torch.Generator
) -> InvIdBatch:
    """Step `index`'s batch: generated samples (upsampled to Inv-Id's resolution, flipped), then augmented real
    crops. Every draw comes from the step's own RNGs in a fixed order, so a resumed run sees the same batches."""
    preset, runtime, plan = ctx.preset, ctx.runtime, run.plan
    images: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    labels: torch.Tensor | None = None
    teacher: torch.Tensor | None = None
    if run.triples is not None:
        picked = batch_indices(len(run.triples), plan.generated, index, preset.inv_id_rng_seed + 1, runtime.rank,
                               runtime.world)
        generated = resize_images(to_device_floats(run.triples.images[picked], runtime.device),
                                  preset.inv_id_resolution)
        images += random_flip(generated, gen)
        targets.append(torch.from_numpy(run.triples.codes[picked]).to(runtime.device))
    if plan.real:
        if plan.identities:
            real = identity_batch(run.groups, plan.identities, plan.real // plan.identities, rng)
        else:
            real = batch_indices(len(run.train), plan.real, index, preset.inv_id_rng_seed + 2, runtime.rank,
                                 runtime.world)
        images.append(augment_real(to_device_floats(run.train.images[real], runtime.device), gen))
        labels = torch.from_numpy(run.labels[real]).to(runtime.device)
        head = run.identity.head
        if isinstance(head, CodeTableHead):  # the hybrid also regresses real crops onto their learned code
            targets.append(head.targets(labels))
        if run.teacher_codes is not None:
            teacher = torch.from_numpy(run.teacher_codes[real]).to(runtime.device)
    return InvIdBatch(images, torch.cat(targets) if targets else None, labels, teacher)


def inv_id_step(ctx: StageContext, run: InvIdTraining, index: int) -> dict[str, float]:
    """Train on step `index`'s batch (forward under autocast, the loss in float32); returns the loss terms."""
    run.wrapped.train()
    rng, gen = step_generator(ctx.preset.inv_id_rng_seed, index, ctx.runtime.rank, salt=4)
    batch = inv_id_batch(ctx, run, index, rng, gen)
    with ctx.runtime.autocast():
        feature, predicted = run.wrapped(torch.cat(batch.images).contiguous(memory_format=torch.channels_last),
                                         with_feature=True)
    loss, metrics = inv_id_loss(predicted.float(), batch.targets, batch.labels, run.plan.generated, run.logits_fn,
                                run.identity.margin, ctx.preset, batch.teacher, feature.float())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.schedule.step()
    return metrics


def finish_inv_id(ctx: StageContext, run: InvIdTraining) -> None:
    """Measure the trained Inv-Id on the held-out identities (what picks the shipped variant) and save its weights
    with those metrics: the file that marks the stage finished."""
    metrics = validate_inv_id(run.model, run.val, ctx.runtime.device, ctx.preset.split_seed)
    log.info("%s done; validation %s", run.name, metrics)
    if ctx.runtime.is_main:
        save_atomic({"model": run.model.state_dict(), "validation": metrics, "steps": ctx.preset.inv_id_steps},
                    ctx.path(f"{run.name}.pt"))


def train_inv_id(ctx: StageContext, mode: str) -> None:
    """Train (or resume) the Inv-Id of `mode`; once finished, save its weights with their validation metrics."""
    run = inv_id_setup(ctx, mode)
    loop = ctx.loop(run.name, ctx.preset.inv_id_steps, run.plan.generated + run.plan.real, run.checkpointed)
    finished = loop.run(partial(inv_id_step, ctx, run))
    ctx.runtime.sync_buffers(run.model)
    if finished:
        finish_inv_id(ctx, run)


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


def require_one_code_table(tables: list[torch.Tensor]) -> None:
    """Codes of Inv-Ids trained on different code tables live in different spaces: their mean means nothing."""
    if any(not torch.equal(table, tables[0]) for table in tables):
        raise ValueError("the runs' generators have different code tables: their codes live in different spaces")


TEACHER_CODES = "teacher_codes.pt"


def teacher_codes(ctx: StageContext, teacher: Path, train: ImageSet) -> np.ndarray:
    """The teacher run's best Inv-Id's codes of `train` (this run's real crops, un-augmented), computed once and
    kept in the run directory for resumes. The teacher must share this run's code table and training crops:
    otherwise its codes are of another space or of other people."""
    path = ctx.path(TEACHER_CODES)
    if path.is_file():
        return torch.load(path, weights_only=False)["codes"].numpy()
    source = run_context(teacher, ctx.cache_dir)
    require_one_code_table([source.load("generator")["codes"], ctx.load("generator")["codes"]])
    taught = source.inv_id_splits[0]
    if source.data_root != ctx.data_root or not np.array_equal(taught.person_ids, train.person_ids) or \
            tuple(source.preset.inv_id_resolution) != tuple(ctx.preset.inv_id_resolution):
        raise ValueError(f"{teacher}: trained on other crops (data, held-out identities or Inv-Id's input size)")
    codes = embed(saved_inv_id(source, best_inv_id(source)), train, ctx.runtime.device).astype(np.float32)
    if ctx.runtime.is_main:
        save_atomic({"teacher": str(teacher.resolve()), "codes": torch.from_numpy(codes)}, path)
    return codes
