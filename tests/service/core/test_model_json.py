"""model.json: one typed, versioned schema. The shipped file is the current schema with the full preset; a file of
schema 1 (the preset by name, no version) loads as the same model; a newer schema is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genreid.service.core.model_json import (
    SCHEMA_VERSION,
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
