"""`genreid join-inv-ids`: a run whose Inv-Id is the mean of finished Inv-Ids of one generator.

Each member trains as a run of its own (`genreid train --from BASE --set inv_id_seed=N ...`); joining checks that
they can be averaged (one generator's code table, the same validation identities, the same network but for their
seed and steps), gives the new run the first member's generator, codes, samples and Inv-Noise, and saves the mean
as its Inv-Id with its own validation metrics. Export, the model card and the ledger then read it like any run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from genreid.training.run_files import (
    MACHINES_FILE,
    TIMINGS_FILE,
    read_stage_record,
    record_stage,
    save_atomic,
    write_text_atomic,
)
from genreid.training.runs import (
    CONFIG_FILE,
    GENERATOR_FROM,
    MEMBER_FIELDS,
    MEMBERS,
    REUSABLE,
    link_stages,
    run_context,
    stage_context,
)
from genreid.training.stages.context import StageContext
from genreid.training.stages.inv_id import require_one_code_table
from genreid.training.validation import best_inv_id, validate_inv_id


def _check_members(runs: list[Path], contexts: list[StageContext]) -> None:
    if len(runs) < 2:
        raise ValueError("join-inv-ids needs two or more runs")
    first, *others = contexts
    for run, ctx in zip(runs[1:], others, strict=True):
        if ctx.data_root != first.data_root:
            raise ValueError(f"{run}: trained on {ctx.data_root}, not {first.data_root}")
        changed = [name for name, value in ctx.preset.as_dict().items()
                   if name not in MEMBER_FIELDS and value != first.preset.as_dict()[name]]
        if changed:
            raise ValueError(f"{run}: differs from {runs[0]} in {', '.join(changed)} (members may differ in "
                             f"{' and '.join(MEMBER_FIELDS)} only)")


def join_inv_ids(runs: list[Path], out: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """Write run `out` holding the mean of `runs`' best Inv-Ids; returns its saved result."""
    contexts = [run_context(run, cache_dir) for run in runs]
    _check_members(runs, contexts)
    if (out / CONFIG_FILE).exists():
        raise FileExistsError(f"{out}: already a run")
    require_one_code_table([ctx.load("generator")["codes"] for ctx in contexts])
    saved = [best_inv_id(ctx) for ctx in contexts]
    if len({result["mode"] for result in saved}) > 1:
        raise ValueError(f"the runs' best Inv-Ids are of different modes: {[result['mode'] for result in saved]}")
    steps = [result.get("steps", ctx.preset.inv_id_steps) for ctx, result in zip(contexts, saved, strict=True)]
    preset = dataclasses.replace(contexts[0].preset, inv_id_members=len(runs), inv_id_steps=sum(steps))
    out.mkdir(parents=True, exist_ok=True)
    first = contexts[0]
    config: dict[str, Any] = {} if first.generator_export is None else {GENERATOR_FROM: str(first.generator_export)}
    config[MEMBERS] = [{"run": str(run.resolve()), "inv_id_seed": ctx.preset.inv_id_rng_seed, "inv_id_steps": count,
                        "validation_mAP": result["validation"]["mAP"]}
                       for run, ctx, result, count in zip(runs, contexts, saved, steps, strict=True)]
    config.update({"preset": preset.as_dict(), "data": str(first.data_root)})
    write_text_atomic(out / CONFIG_FILE, json.dumps(config, indent=2))
    link_stages(runs[0], out, [stage for stage, (marker, _) in REUSABLE.items() if (runs[0] / marker).is_file()])
    joined = stage_context(preset, first.data_root, out, cache_dir, None)
    model = joined.new_inv_id()
    for member, result in zip(model.members, saved, strict=True):
        member.load_state_dict(result["model"])
    mode = saved[0]["mode"]
    device = joined.runtime.device
    metrics = validate_inv_id(model.to(device), joined.inv_id_splits[1], device, preset.split_seed)
    result = {"model": model.state_dict(), "validation": metrics, "steps": preset.inv_id_steps}
    save_atomic(result, out / f"inv_id_{mode}.pt")
    stage = f"inv_id_{mode}"
    seconds = [read_stage_record(run / TIMINGS_FILE).get(stage) for run in runs]
    if all(value is not None for value in seconds):
        record_stage(out / TIMINGS_FILE, stage, sum(seconds))
    machines = [read_stage_record(run / MACHINES_FILE).get(stage, "not recorded") for run in runs]
    record_stage(out / MACHINES_FILE, stage, " + ".join(dict.fromkeys(machines)))
    return result | {"mode": mode}
