"""The Inv-Id experiment ledger: one JSON line per finished Inv-Id of a training run.

Run directories are not in git and have not always outlived a session, and one run rarely trains every variant, so
the results that compare variants (the ablation of the generator, the input resolution, seeds) are kept here, in
git (docs/results/inv_id_runs.jsonl), written by `genreid record-run RUN_DIR`. The model card's variant table and
its seed spreads are computed from it: a new model's gain is read against the spread of its own variant's seeds.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from genreid.training.inv_id_modes import inv_id_mode, uses_generator
from genreid.training.presets import Preset, get_preset
from genreid.training.run_files import TIMINGS_FILE, read_stage_record
from genreid.training.runtime import machine_description
from genreid.training.stages.context import StageContext
from genreid.training.stages.inv_id import inv_id_plan
from genreid.training.validation import finished_inv_ids, inv_id_evaluator

METRICS = ("mAP", "rank1", "mINP")


@dataclass(frozen=True)
class RunRecord:
    """One finished Inv-Id: what it is, what it scored, and what it cost."""

    variant: str  # the Inv-Id mode (hybrid, paper, discriminative), with the classifier for discriminative
    inv_id_resolution: tuple[int, int]
    seed: int  # Inv-Id's (Preset.inv_id_rng_seed): several on one generator are seeds of one variant
    steps: int
    images_per_step: int
    validation: dict[str, float]  # METRICS on the validation identities, standard protocol
    test: dict[str, float] | None  # METRICS on the data's test split, standard protocol; None: not measured
    minutes: float | None  # the stage's wall time as the run recorded it
    machine: str  # CPU or GPU, and the precision it trained in
    run: str  # the run directory's name
    recorded: str  # the date it was recorded (ISO), and from what when not from the run directory itself
    note: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)  # preset fields that differ from the named preset

    @property
    def group(self) -> tuple[str, tuple[int, int]]:
        """Runs that differ only in their seed."""
        return self.variant, tuple(self.inv_id_resolution)

    @property
    def key(self) -> tuple[str, str, int, tuple[int, int]]:
        return self.run, self.variant, self.seed, tuple(self.inv_id_resolution)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunRecord:
        """A record from its JSON object (a ledger line, or the card's copy of it)."""
        return cls(**{**values, "inv_id_resolution": tuple(values["inv_id_resolution"])})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def inv_id_trunk_changes(preset: dict[str, Any]) -> list[str]:
    """How Inv-Id's trunk departs from Inv-Noise's, in words (its own widths, a patch input conv, no pooling before
    the bottleneck, a BatchNorm neck): in variant names and on the model card. `preset` as a dict, since the card
    reads it back from JSON; older ones lack these fields."""
    widths, stride = tuple(preset.get("inv_id_widths") or ()), preset.get("inv_id_stem_stride", 1)
    own = [f"trunk widths {'-'.join(map(str, widths))}"] if widths and widths != tuple(preset["inv_widths"]) else []
    last = ["last stride 1"] * (preset.get("inv_id_last_stride", 2) == 1)
    neck = ["BNNeck"] * preset.get("inv_id_bnneck", False)
    trunk = preset.get("inv_id_trunk", "unet")
    named = [f"{trunk} trunk x{preset.get('inv_id_trunk_width', 1.0):g}"] * (trunk != "unet")
    return named + own + [f"{stride}x{stride} patch input conv"] * (stride > 1) + last + neck


def generator_origin(saved: Mapping[str, Any]) -> str:
    """Where a run's generator (generator.pt's record) came from when it was not trained: an export's, as
    exported or with its codes recovered by inversion. '' for a trained one."""
    if "from_export" not in saved:
        return ""
    return "an exported generator (codes recovered)" if saved["codes_recovered"] else "an exported generator"


def budget_changes(preset: Preset, mode: str) -> list[str]:
    """How many generated samples (for a mode that reads them) and Inv-Id steps a run took where its named preset
    takes others, and how many Inv-Ids a joined run averages, in words."""
    named = get_preset(preset.name)
    samples = [f"{preset.samples:,} generated samples"] * (uses_generator(mode) and preset.samples != named.samples)
    if preset.inv_id_members > 1:  # a joined run's steps are its members' together
        return samples + [f"mean of {preset.inv_id_members} Inv-Ids, {preset.inv_id_steps:,} steps in all"]
    return samples + [f"{preset.inv_id_steps:,} steps"] * (preset.inv_id_steps != named.inv_id_steps)


def variant_name(preset: Preset, mode: str, *, generator: str = "") -> str:
    """The mode, the classifier of a discriminative one, how its trunk departs from Inv-Noise's, its samples and
    steps where they depart from the preset's, whether it started from or was taught by another finished Inv-Id,
    and where its generator came from (`generator_origin`, for a mode that uses one): what makes runs more than
    seeds of each other."""
    name = mode if inv_id_mode(mode).code_table else f"{mode}, {preset.classifier} classifier"
    name = ", ".join([name, *inv_id_trunk_changes(preset.as_dict()), *budget_changes(preset, mode)])
    name = f"{name}, fine-tuned from a finished Inv-Id" if preset.inv_id_init else name
    name = f"{name}, distilled from a finished Inv-Id (weight {preset.distill_weight:g})" if preset.inv_id_teacher \
        else name
    return f"{name}, on {generator}" if generator and uses_generator(mode) else name


def record_run(ctx: StageContext, *, note: str = "") -> list[RunRecord]:
    """A record for each finished Inv-Id of the run in `ctx`, its test metrics measured now from its weights. Run it
    on the machine that trained: the record names this machine and the precision it trains in."""
    preset = ctx.preset
    timings = read_stage_record(ctx.path(TIMINGS_FILE))
    named = get_preset(preset.name).as_dict()
    overrides = {key: value for key, value in preset.as_dict().items()
                 if value != named[key] and key not in ("seed", "inv_id_seed", "inv_id_modes", "inv_id_resolution")}
    machine = machine_description()
    query, gallery = (ctx.split(split, preset.inv_id_resolution) for split in ("query", "gallery"))
    records = []
    origin = generator_origin(ctx.load("generator")) if ctx.path("generator.pt").is_file() else ""
    for mode, saved in finished_inv_ids(ctx).items():
        plan = inv_id_plan(preset, mode)
        test = inv_id_evaluator(ctx, saved, query, gallery).metrics().as_dict()
        seconds = timings.get(f"inv_id_{mode}")
        records.append(RunRecord(
            variant=variant_name(preset, mode, generator=origin),
            inv_id_resolution=tuple(preset.inv_id_resolution),
            seed=preset.inv_id_rng_seed, steps=saved.get("steps", preset.inv_id_steps),
            images_per_step=plan.real + plan.generated,
            validation={m: float(saved["validation"][m]) for m in METRICS}, test={m: float(test[m]) for m in METRICS},
            minutes=None if seconds is None else round(seconds / 60, 1), machine=machine, run=ctx.run_dir.name,
            recorded=date.today().isoformat(), note=note,
            overrides=overrides,
        ))
    return records


def read_ledger(path: Path) -> list[RunRecord]:
    """Every record, in the order written; none when the file does not exist (a wheel install has no docs/)."""
    if not path.is_file():
        return []
    return [RunRecord.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def append_records(path: Path, records: list[RunRecord]) -> list[RunRecord]:
    """Append the records not in the ledger yet (same run, variant, seed and size); returns those appended."""
    known = {record.key for record in read_ledger(path)}
    new = [record for record in records if record.key not in known]
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as ledger:
            ledger.writelines(record.to_json() + "\n" for record in new)
    return new


@dataclass(frozen=True)
class Spread:
    """One metric over the seeds of one group: mean, sample standard deviation (None for one seed) and values."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


def summarise(records: list[RunRecord]) -> dict[tuple[str, tuple[int, int]], dict[str, Spread]]:
    """Group -> metric -> its spread over the group's seeds: validation, and test over the seeds that measured it;
    groups in the order they first appear."""
    groups: dict[tuple[str, tuple[int, int]], list[RunRecord]] = {}
    for record in records:
        groups.setdefault(record.group, []).append(record)
    summary = {}
    for group, runs in groups.items():
        spreads = {f"validation_{m}": Spread(tuple(run.validation[m] for run in runs)) for m in METRICS}
        tested = [run.test for run in runs if run.test is not None]
        if tested:
            spreads.update({f"test_{m}": Spread(tuple(test[m] for test in tested)) for m in METRICS})
        summary[group] = spreads
    return summary
