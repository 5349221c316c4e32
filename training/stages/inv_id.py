"""Stage 4: Inv-Id, trained on the generated triples and real crops as its mode says (inv_id_modes.py), optionally
distilled from a finished run's Inv-Id (its codes of this run's real crops).

Inv-Id may read a higher resolution than the generator draws: generated samples are upsampled to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genreid.training.batches import (
    augment_real,
    batch_indices,
    group_by_label,
    identity_batch,
    random_flip,
    resize_images,
)
from genreid.training.data.cache import ImageSet
from genreid.training.inv_id_modes import InvIdMode, inv_id_mode
from genreid.training.losses import inv_id_loss
from genreid.training.networks.classifiers import CLASSIFIERS, CodeTableHead, new_classifier
from genreid.training.networks.inverters import InvId
from genreid.training.onnx_weights import onnx_state_dict
from genreid.training.presets import Preset
from genreid.training.run_files import Checkpointed, save_atomic
from genreid.training.runs import run_context
from genreid.training.runtime import step_generator
from genreid.training.stages.context import StageContext, to_device_floats
from genreid.training.stages.samples import Triples, load_triples
from genreid.training.validation import best_inv_id, embed, saved_inv_id, validate_inv_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InvIdPlan:
    """How one Inv-Id step's batch splits: `generated` samples first, then `real` crops drawn as `identities` x
    (real / identities) each (0 identities: at random)."""

    generated: int
    real: int
    identities: int


def inv_id_plan(preset: Preset, mode: str) -> InvIdPlan:
    """Check the preset's settings for `mode` and split its batch. A mode of real crops takes `real_fraction` of
    `inv_id_batch`, with or without generated samples beside them, so the hybrid and the discriminative mode see
    the same real data."""
    spec = inv_id_mode(mode)
    real = round(preset.inv_id_batch * preset.real_fraction) if spec.real_crops else 0
    generated = preset.inv_id_batch - real if spec.generated_samples else 0
    if not real + generated:
        raise ValueError(f"mode {mode!r} draws no images: check inv_id_batch and real_fraction")
    if real and preset.triplet_weight and not preset.real_identities:
        raise ValueError("triplet_weight needs real_identities > 0 (identity-balanced real crops)")
    if real and preset.real_identities and real % preset.real_identities:
        raise ValueError(f"real_identities={preset.real_identities} must divide the {real} real crops per batch")
    if not spec.code_table and preset.classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {preset.classifier!r}; choose one of {CLASSIFIERS}")
    if not spec.code_table and preset.triplet_weight and not preset.triplet_margin:
        raise ValueError(f"the {mode} mode has no generator code table to take the triplet margin from: "
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
    """The generator's code table or a new learned classifier, as the mode says. Call after building the Inv-Id so
    its initial weights do not depend on the mode."""
    preset, device = ctx.preset, ctx.runtime.device
    if inv_id_mode(mode).code_table:
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


@dataclass(frozen=True)
class InvIdTraining:
    """One Inv-Id stage's fixed parts, built once by `inv_id_setup` and read by every step."""

    name: str  # the stage: inv_id_<mode>
    mode: InvIdMode
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
    return InvIdTraining(
        name=f"inv_id_{mode}", mode=inv_id_mode(mode), plan=plan, triples=triples, train=train, val=val, model=model,
        wrapped=wrapped, identity=identity, logits_fn=logits_fn, labels=labels, groups=groups, teacher_codes=teacher,
        optimizer=optimizer, schedule=schedule, checkpointed=checkpointed,
    )


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
        if run.mode.code_table:  # real crops also regress onto their identity's learned code
            targets.append(run.identity.head.targets(labels))
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
    loss, metrics = inv_id_loss(predicted.float(), targets=batch.targets, labels=batch.labels,
                                generated=run.plan.generated, logits_fn=run.logits_fn, margin=run.identity.margin,
                                preset=ctx.preset, teacher=batch.teacher, feature=feature.float())
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
    loop = ctx.loop(run.name, ctx.preset.inv_id_steps, run.plan.generated + run.plan.real, run.checkpointed,
                    validate=lambda: validate_inv_id(run.model, run.val, ctx.runtime.device, ctx.preset.split_seed),
                    validate_every=ctx.preset.inv_id_validate_every)
    finished = loop.run(partial(inv_id_step, ctx, run))
    ctx.runtime.sync_buffers(run.model)
    if finished:
        finish_inv_id(ctx, run)


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
