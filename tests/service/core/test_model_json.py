"""model.json: one typed, versioned schema. The shipped file is the current schema with the full preset; a file of
schema 1 (the preset by name, no version) loads as the same model; a newer schema is refused in one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from genreid.service.core.model_json import (
    SCHEMA_VERSION,
    FalseMatches,
    GalleryFalseMatches,
    IdentityCodes,
    ModelError,
    ModelMetadata,
    Quantization,
)
from genreid.service.core.reranking import RerankParams

SHIPPED = Path(__file__).resolve().parents[3] / "models"


def test_the_shipped_model_json_is_typed_and_current() -> None:
    raw = json.loads((SHIPPED / "model.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION
    metadata = ModelMetadata.load(SHIPPED)
    assert isinstance(metadata.quantization["inv_id"], Quantization)
    assert isinstance(metadata.identity_codes, IdentityCodes) and (SHIPPED / metadata.identity_codes.file).is_file()
    assert RerankParams.from_model(metadata) is not None
    card = json.loads((SHIPPED / "MODEL_CARD.json").read_text())
    assert metadata.preset == card["preset"], "model.json carries the run's whole preset"
    assert ModelMetadata.from_dict(metadata.as_dict()) == metadata


def test_a_schema_1_file_loads_as_the_same_model(tmp_path: Path) -> None:
    current = ModelMetadata.load(SHIPPED)
    old = current.as_dict()
    del old["schema_version"]
    old["preset"] = current.preset["name"]  # schema 1 kept the preset's name only
    del old["quantization"]["inv_id"]["calibration"]  # and the first INT8 exports named no calibration
    (tmp_path / "model.json").write_text(json.dumps(old))
    loaded = ModelMetadata.load(tmp_path)
    assert loaded.model_id == current.model_id and loaded.match_threshold == current.match_threshold
    assert loaded.preset == {"name": current.preset["name"]} and loaded.preset_name == current.preset_name
    assert loaded.quantization["inv_id"].calibration == "minimum and maximum"
    assert loaded.input_sizes == current.input_sizes and loaded.rerank == current.rerank


def test_false_matches_round_trip_and_files_without_later_sections_are_saved_as_they_were(tmp_path: Path) -> None:
    """A file without `false_matches` (or `mult_adds`, also added later) loads, and re-saving it adds neither."""
    current = ModelMetadata.load(SHIPPED)
    older = current.as_dict()
    for name in ("false_matches", "mult_adds"):
        older.pop(name, None)
    (tmp_path / "model.json").write_text(json.dumps(older))
    loaded = ModelMetadata.load(tmp_path)
    assert loaded.false_matches is None and loaded.mult_adds == {}
    assert json.loads(loaded.save(tmp_path).read_text()) == older
    record = FalseMatches(per_pair=0.0096, measured_on="market1501: 2 queries, 3 gallery crops, identity removed",
                          precision="int8", per_query=(GalleryFalseMatches(gallery=100, rate=0.52, kind="measured"),))
    replace(loaded, false_matches=record).save(tmp_path)
    assert ModelMetadata.load(tmp_path).false_matches == record
    assert json.loads((tmp_path / "model.json").read_text())["false_matches"]["per_query"] == [
        {"gallery": 100, "rate": 0.52, "kind": "measured"}]


def test_a_newer_or_broken_file_is_refused_in_one_line(tmp_path: Path) -> None:
    newer = {**ModelMetadata.load(SHIPPED).as_dict(), "schema_version": SCHEMA_VERSION + 1}
    (tmp_path / "model.json").write_text(json.dumps(newer))
    with pytest.raises(ModelError, match="newer than this genreid reads"):
        ModelMetadata.load(tmp_path)
    (tmp_path / "model.json").write_text('{"resolution": [64, 32]}')
    with pytest.raises(ModelError, match="not a readable model.json"):
        ModelMetadata.load(tmp_path)
    with pytest.raises(ModelError, match="no model metadata"):
        ModelMetadata.load(tmp_path / "nowhere")
