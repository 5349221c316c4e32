"""The stages in order, each skipped when its result exists, so `genreid train` resumes a whole run."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from genreid.training.inv_id_modes import uses_generator
from genreid.training.run_files import MACHINES_FILE, TIMINGS_FILE, record_stage
from genreid.training.runs import REUSABLE, export_preset
from genreid.training.runtime import machine_description
from genreid.training.stages.codes import train_codes
from genreid.training.stages.context import StageContext
from genreid.training.stages.from_export import generator_from_export, import_inv_noise
from genreid.training.stages.generator import train_generator
from genreid.training.stages.inv_id import train_inv_id
from genreid.training.stages.inv_noise import train_inv_noise
from genreid.training.stages.samples import make_samples

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


def inv_noise_stage(ctx: StageContext) -> Callable[[], None]:
    """Train Inv-Noise, or, in a run from an export whose samples and Inv-Noise settings are the export's own,
    take the export's (it inverts the same denoiser)."""
    export = ctx.generator_export
    if export is not None:
        start = export_preset(export)
        fields = REUSABLE["samples"][1] + REUSABLE["inv_noise"][1]
        if all(getattr(ctx.preset, name) == getattr(start, name) for name in fields):
            return lambda: import_inv_noise(ctx, export)
    return lambda: train_inv_noise(ctx)


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
