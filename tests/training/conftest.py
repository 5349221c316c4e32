"""A tiny model trained end to end on the procedural data set, shared by the training tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from genreid.service.core.model_json import ModelMetadata
from genreid.training.data.synthetic import write_synthetic_market
from genreid.training.presets import Preset, get_preset
from genreid.training.runtime import setup_runtime
from genreid.training.stages.context import StageContext


@dataclass(frozen=True)
class TinyRun:
    ctx: StageContext
    models: Path
    metadata: ModelMetadata


def make_context(preset: Preset, data: Path, run_dir: Path, cache: Path, stop_after: int | None = None):
    run_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(preset, data, run_dir, setup_runtime(), cache, stop_after)


def train_member(tiny_stages: StageContext, run_dir: Path, **overrides) -> StageContext:
    """A finished run of a 3-step hybrid Inv-Id (unless `overrides` say otherwise) on the tiny run's generator,
    with its config.json, as `genreid train --from` makes one."""
    from genreid.training.pipeline import run_stages
    from genreid.training.runs import CONFIG_FILE, link_stages, reusable_stages

    preset = get_preset("tiny", **{"inv_id_steps": 3, "inv_id_modes": ("hybrid",)} | overrides)
    ctx = make_context(preset, tiny_stages.data_root, run_dir, tiny_stages.cache_dir)
    (run_dir / CONFIG_FILE).write_text(json.dumps({"preset": preset.as_dict(), "data": str(tiny_stages.data_root)}))
    link_stages(tiny_stages.run_dir, run_dir, reusable_stages(tiny_stages.run_dir, tiny_stages.preset, preset))
    run_stages(ctx, "inv_id_hybrid")
    return ctx


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return write_synthetic_market(tmp_path_factory.mktemp("market"), train_identities=16, test_identities=6)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_stages(synthetic_root, cache_dir, tmp_path_factory) -> StageContext:
    """generator -> identity generator -> samples -> both Inv-Ids -> Inv-Noise."""
    from genreid.training.pipeline import run_stages

    ctx = make_context(get_preset("tiny"), synthetic_root, tmp_path_factory.mktemp("run"), cache_dir)
    run_stages(ctx)
    return ctx


@pytest.fixture(scope="session")
def tiny_run(tiny_stages, tmp_path_factory) -> TinyRun:
    """The trained tiny stages, exported to ONNX."""
    from genreid.training.export import export_run

    models = tmp_path_factory.mktemp("models")
    return TinyRun(tiny_stages, models, export_run(tiny_stages, models))
