"""The stages in order, each skipped when its result exists, so `genreid train` resumes a whole run."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from training.model_card import card_preset
from training.presets import Preset
from training.stages.codes import train_codes
from training.stages.context import StageContext
from training.stages.from_export import generator_from_export, import_inv_noise
from training.stages.generator import train_generator
from training.stages.inverters import train_inv_id, train_inv_noise, uses_generator
from training.stages.samples import make_samples
from training.trainer import MACHINES_FILE, TIMINGS_FILE, machine_description, read_stage_record, record_stage

log = logging.getLogger(__name__)


def stage_table(ctx: StageContext) -> dict[str, tuple[str, Callable[[], None]]]:
    """Stage name -> (the file that marks it finished, how to run it)."""
    table: dict[str, tuple[str, Callable[[], None]]] = {}
    # A run of generator-free Inv-Ids only (the discriminative ablation) has no generator, samples or Inv-Noise.
    generative = any(uses_generator(mode) for mode in ctx.preset.inv_id_modes)
    if generative:
        if ctx.generator_export is None:
            table["generator"] = ("generator.pt", lambda: train_generator(ctx))
        else:
            table["generator"] = ("generator.pt", lambda: generator_from_export(ctx, ctx.generator_export))
        table["codes"] = ("codes.pt", lambda: train_codes(ctx))
        table["samples"] = ("samples.npz", lambda: make_samples(ctx))
    # The first Inv-Id mode is the one expected to ship: Inv-Noise follows it, so a servable model exists
    # before the comparison modes train.
    first, *others = ctx.preset.inv_id_modes
    table[f"inv_id_{first}"] = (f"inv_id_{first}.pt", lambda: train_inv_id(ctx, first))
    if generative:
        table["inv_noise"] = ("inv_noise.pt", inv_noise_stage(ctx))
    for mode in others:
        table[f"inv_id_{mode}"] = (f"inv_id_{mode}.pt", lambda mode=mode: train_inv_id(ctx, mode))
    return table


# Stage -> (the file that marks it finished, the preset fields its result depends on beyond those of the stages
# above it). No Inv-Id field is among them, so Inv-Id experiments can share one generator (`genreid train --from`).
GENERATOR_FIELDS = ("resolution", "code_dim", "widths", "blocks", "generator_steps", "generator_batch", "generator_lr",
                    "code_lr", "code_l2", "ema", "val_identities", "seed", "split_seed")
REUSABLE: dict[str, tuple[str, tuple[str, ...]]] = {
    "generator": ("generator.pt", GENERATOR_FIELDS),
    "codes": ("codes.pt", ("codes_steps", "codes_batch", "codes_hidden", "codes_lr")),
    "samples": ("samples.npz", ("samples", "sample_steps")),
    "inv_noise": ("inv_noise.pt", ("inv_widths", "inv_noise_steps", "inv_noise_batch", "inv_noise_lr")),
}


def inv_noise_stage(ctx: StageContext) -> Callable[[], None]:
    """Train Inv-Noise, or, in a run from an export whose samples and Inv-Noise settings are the export's own,
    take the export's (it inverts the same denoiser)."""
    export = ctx.generator_export
    if export is not None:
        start = card_preset(export)
        fields = REUSABLE["samples"][1] + REUSABLE["inv_noise"][1]
        if all(getattr(ctx.preset, name) == getattr(start, name) for name in fields):
            return lambda: import_inv_noise(ctx, export)
    return lambda: train_inv_noise(ctx)


def reusable_stages(source: Path, source_preset: Preset, preset: Preset) -> list[str]:
    """`source`'s finished generator, codes, samples and Inv-Noise, in that order, as far as `preset` agrees with
    `source_preset` on everything each depends on. Raises ValueError, saying why, when not even the generator is."""
    stages: list[str] = []
    for stage, (marker, fields) in REUSABLE.items():
        changed = [name for name in fields if getattr(preset, name) != getattr(source_preset, name)]
        if changed or not (source / marker).is_file():
            if not stages:
                why = f"{', '.join(changed)} differ" if changed else f"its {stage} stage has not finished"
                raise ValueError(f"{source}: nothing to reuse, {why}")
            break
        stages.append(stage)
    return stages


def link_stages(source: Path, target: Path, stages: list[str]) -> None:
    """Give `target` the results of `source`'s `stages` (hard links where the file system allows) and their wall
    times, so a run started on them (an Inv-Id experiment on a finished generator) skips their hours."""
    records = {name: read_stage_record(source / name) for name in (TIMINGS_FILE, MACHINES_FILE)}
    for stage in stages:
        marker = REUSABLE[stage][0]
        try:
            os.link(source / marker, target / marker)  # results are replaced atomically, never written in place
        except OSError:
            shutil.copy2(source / marker, target / marker)
        for name, record in records.items():
            if stage in record:
                record_stage(target / name, stage, record[stage])


def run_stages(ctx: StageContext, only: str | None = None) -> None:
    """Run every unfinished stage (or just `only`), recording each one's wall time over all its sittings in
    timings.json and its machine in machines.json (a stage that stops unfinished is recorded when a later sitting
    finishes it)."""
    table = stage_table(ctx)
    if only is not None and only not in table:
        raise KeyError(f"unknown stage {only!r}; stages are {list(table)}")
    for name, (marker, run) in table.items():
        if (only is not None and name != only) or ctx.path(marker).exists():
            continue
        log.info("stage %s: starting", name)
        start = time.monotonic()
        run()
        if ctx.runtime.world > 1:
            torch.distributed.barrier()  # later stages read what rank 0 wrote
        if not ctx.path(marker).exists():
            log.info("stage %s: stopped before the end; run the same command again to resume", name)
            return
        if ctx.runtime.is_main:
            seconds = time.monotonic() - start + ctx.earlier_seconds.get(name, 0.0)
            record_stage(ctx.path(TIMINGS_FILE), name, seconds)
            record_stage(ctx.path(MACHINES_FILE), name, machine_description())
