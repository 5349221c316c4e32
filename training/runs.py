"""The run directory: its config.json (preset, data, the export its generator came from, joined members), how a
run is started, resumed or started from another run or an export, and the stage context each command works in."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genreid.service.core.market import check_layout
from genreid.service.core.model_json import METADATA_FILE, ModelError, ModelMetadata
from genreid.training.presets import Preset, get_preset

if TYPE_CHECKING:  # the stages import torch; reading a run's config does not
    from genreid.training.stages.context import StageContext

CONFIG_FILE = "config.json"
CARD_JSON = "MODEL_CARD.json"  # an export's card: the preset of exports older than model.json schema 2


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
    from genreid.training.run_files import MACHINES_FILE, TIMINGS_FILE, read_stage_record, record_stage

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


def export_preset(models_dir: Path) -> Preset:
    """The preset an export's run trained with: model.json's (schema 2 keeps every field), or, for an older export
    that kept only the preset's name, its model card's."""
    try:
        values = ModelMetadata.load(models_dir).preset
    except ModelError:
        values = {}
    if set(values) <= {"name"}:
        card = models_dir / CARD_JSON
        if not card.is_file():
            raise FileNotFoundError(f"{models_dir}: neither model.json nor {CARD_JSON} records the run's preset; "
                                    "pass the run directory")
        values = json.loads(card.read_text())["preset"]
    return Preset(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def load_run(run_dir: Path) -> tuple[Preset, Path]:
    """The preset and data folder a run was started with (saved in its config.json)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a training run (no {CONFIG_FILE})")
    config = json.loads(path.read_text())
    preset = config["preset"]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in preset.items()}
    return Preset(**values), Path(config["data"])


GENERATOR_FROM = "generator_from"  # config.json: the export a run's generator was recovered from
MEMBERS = "inv_id_members"  # config.json: each member's run, seed, steps and validation mAP
# What members may differ in; anything else would make their mean a mean of different things.
MEMBER_FIELDS = ("inv_id_seed", "inv_id_steps")


def joined_members(run: Path) -> list[dict[str, Any]]:
    """The members a joined run was made of (config.json), in order; empty for a run that trained its own Inv-Id
    (or a run directory without a config, as a test's context)."""
    config = run / CONFIG_FILE
    return json.loads(config.read_text()).get(MEMBERS, []) if config.is_file() else []


def stage_context(preset: Preset, data: Path, run_dir: Path, cache_dir: Path | None,
                  stop_after: int | None) -> StageContext:
    """The stages' context for a run directory (with the export its generator came from, if any)."""
    from genreid.training.runtime import setup_runtime
    from genreid.training.stages.context import StageContext

    config = run_dir / CONFIG_FILE
    export = json.loads(config.read_text()).get(GENERATOR_FROM) if config.is_file() else None
    return StageContext(preset, data, run_dir, setup_runtime(), cache_dir, stop_after,
                        generator_export=None if export is None else Path(export))


def run_context(run_dir: Path, cache_dir: Path | None) -> StageContext:
    """The stage context of an existing run, with the preset and data its config.json names."""
    preset, data = load_run(run_dir)
    return stage_context(preset, data, run_dir, cache_dir, None)


def is_export(path: Path) -> bool:
    """A model directory `genreid export` wrote, as opposed to a training run."""
    return (path / METADATA_FILE).is_file() and not (path / CONFIG_FILE).is_file()


def source_preset(source: Path, data: Path | None) -> tuple[Preset, Path]:
    """The preset and data a run started `--from` source begins with: a run's own, or an export's (its card's
    preset, and the data folder it was trained on, which only the caller knows)."""
    if not is_export(source):
        if data is not None:
            raise ValueError("--from takes the data and preset of the run it starts from; change fields with --set")
        return load_run(source)
    if data is None:
        raise ValueError(f"--from {source} is an export: add --data, the Market-1501 folder it was trained on")
    return export_preset(source), data


def check_same_start(run_dir: Path, preset: Preset, start: Preset, overrides: list[tuple[str, object]] | None) -> None:
    """The command that started a run from another one resumes it; a changed one is refused, not half-applied."""
    if dataclasses.replace(start, **dict(overrides or [])) != preset:
        raise ValueError(f"{run_dir} was started with other settings; resume it with the command that started it, "
                         f"or with `genreid train --out {run_dir}`")


def prepare_run(*, out: Path, data: Path | None, preset_name: str | None, overrides: list[tuple[str, object]],
                source: Path | None, cache_dir: Path | None, stop_after: int | None) -> StageContext:
    """The context `genreid train` runs its stages in: a new run's directory and config.json written, an existing
    run's read back (the same command resumes it), or a run started from another run or an export (`--from`)."""
    run_dir, data_arg = out, data
    config: dict[str, object] = {}
    reused: list[str] = []
    if source and preset_name:
        raise ValueError("--from takes the preset of the run or export it starts from; change fields with --set")
    if (run_dir / CONFIG_FILE).is_file():
        preset, data = load_run(run_dir)
        config = json.loads((run_dir / CONFIG_FILE).read_text())
        if source:
            check_same_start(run_dir, preset, source_preset(source, data_arg)[0], overrides)
        else:
            if preset_name and preset_name != preset.name:
                raise ValueError(f"{run_dir} was started with preset {preset.name!r}, not {preset_name!r}")
            if overrides:
                preset = dataclasses.replace(preset, **dict(overrides))
    elif source:
        start, data = source_preset(source, data_arg)
        preset = dataclasses.replace(start, **dict(overrides or []))
        if is_export(source):
            data = check_layout(data, ("train",)).resolve()
            if changed := [name for name in GENERATOR_FIELDS if getattr(preset, name) != getattr(start, name)]:
                raise ValueError(f"{source}: its generator was trained with other {', '.join(changed)}")
            config[GENERATOR_FROM] = str(source.resolve())
        else:
            reused = reusable_stages(source, start, preset)
            source_config = json.loads((source / CONFIG_FILE).read_text())
            if GENERATOR_FROM in source_config:  # its generator (linked here) is an export's
                config[GENERATOR_FROM] = source_config[GENERATOR_FROM]
        run_dir.mkdir(parents=True, exist_ok=True)
        link_stages(source, run_dir, reused)
    else:
        if data_arg is None:
            raise ValueError("--data is required to start a new run")
        data = check_layout(data_arg, ("train",)).resolve()
        preset = get_preset(preset_name or "cpu", **dict(overrides or []))
        run_dir.mkdir(parents=True, exist_ok=True)
    from genreid.training.run_files import write_text_atomic

    # Stages of one run may start in parallel processes that read it.
    config.update({"preset": preset.as_dict(), "data": str(data)})
    write_text_atomic(run_dir / CONFIG_FILE, json.dumps(config, indent=2))
    if reused:
        print(f"genreid train: reusing {', '.join(reused)} of {source}", file=sys.stderr)

    return stage_context(preset, data, run_dir, cache_dir, stop_after)


def models_context(models_dir: Path, data: Path | None, cache_dir: Path | None) -> StageContext:
    """A context for a model directory whose training run is gone: the run's preset as the model card recorded
    it (so the same validation identities), and the data folder given."""
    if data is None:
        raise ValueError("without a run directory, --data (the Market-1501 folder it was trained on) is required")
    data = check_layout(data, ("train",)).resolve()
    return stage_context(export_preset(models_dir), data, models_dir, cache_dir, None)


def run_or_models_context(*, run_dir: Path | None, models_dir: Path, data: Path | None,
                          cache_dir: Path | None) -> StageContext:
    """A run's context, or, without the run, its export's (`models_context`)."""
    if run_dir is None:
        return models_context(models_dir, data, cache_dir)
    if data is not None:
        raise ValueError("--data is for a model directory without its run; a run knows its data")
    return run_context(run_dir, cache_dir)
