"""The stages in order, each skipped when its result exists, so `genreid train` resumes a whole run."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from training.stages.codes import train_codes
from training.stages.context import StageContext
from training.stages.generator import train_generator
from training.stages.inverters import train_inv_id, train_inv_noise, uses_generator
from training.stages.samples import make_samples
from training.trainer import write_text_atomic

log = logging.getLogger(__name__)


def stage_table(ctx: StageContext) -> dict[str, tuple[str, Callable[[], None]]]:
    """Stage name -> (the file that marks it finished, how to run it)."""
    table: dict[str, tuple[str, Callable[[], None]]] = {}
    # A run of generator-free Inv-Ids only (the discriminative ablation) has no generator, samples or Inv-Noise.
    generative = any(uses_generator(mode) for mode in ctx.preset.inv_id_modes)
    if generative:
        table["generator"] = ("generator.pt", lambda: train_generator(ctx))
        table["codes"] = ("codes.pt", lambda: train_codes(ctx))
        table["samples"] = ("samples.npz", lambda: make_samples(ctx))
    # The first Inv-Id mode is the one expected to ship: Inv-Noise follows it, so a servable model exists
    # before the comparison modes train.
    first, *others = ctx.preset.inv_id_modes
    table[f"inv_id_{first}"] = (f"inv_id_{first}.pt", lambda: train_inv_id(ctx, first))
    if generative:
        table["inv_noise"] = ("inv_noise.pt", lambda: train_inv_noise(ctx))
    for mode in others:
        table[f"inv_id_{mode}"] = (f"inv_id_{mode}.pt", lambda mode=mode: train_inv_id(ctx, mode))
    return table


def record_time(path: Path, stage: str, seconds: float) -> None:
    """Add `seconds` to the stage's wall time; read just before writing, since stages of one run may train
    in parallel processes."""
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings[stage] = timings.get(stage, 0.0) + seconds
    write_text_atomic(path, json.dumps(timings, indent=2) + "\n")


def run_stages(ctx: StageContext, only: str | None = None) -> None:
    """Run every unfinished stage (or just `only`), recording wall time per stage in timings.json."""
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
        if ctx.runtime.is_main:
            record_time(ctx.path("timings.json"), name, time.monotonic() - start)
        if not ctx.path(marker).exists():
            log.info("stage %s: stopped before the end; run the same command again to resume", name)
            return
