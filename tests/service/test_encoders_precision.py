"""Which file serves each network (float32 or INT8), how Encoders is told, and model.json's round trip.

The INT8 file here is a stand-in (the tiny Inv-Id with doubled weights, stamped as quantisation stamps it), so
codes show which file ran; real quantisation is covered in tests/training/test_quantize.py."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from genreid.service.core.model_json import MODEL_FILES, ModelError, ModelMetadata
from genreid.service.encoders import MODEL_ID_KEY, Encoders

from .conftest import build_models

MODEL_ID = "sha256:" + "ab" * 32
INT8_FILE = "inv_id.int8.onnx"


def _add_variant(models: Path, *, made_from: str | None = MODEL_ID, cpu: str = "int8") -> Path:
    model = onnx.load(str(models / MODEL_FILES["inv_id"]))
    (projection,) = model.graph.initializer
    projection.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(projection), projection.name))
    if made_from is not None:
        onnx.helper.set_model_props(model, {MODEL_ID_KEY: made_from})
    onnx.save(model, str(models / INT8_FILE))
    metadata = ModelMetadata.load(models)
    replace(metadata, model_id=MODEL_ID, int8_files={"inv_id": INT8_FILE}, cpu_precision={"inv_id": cpu}).save(models)
    return models


@pytest.fixture
def quantised(models_dir: Path, tmp_path: Path) -> Path:
    return _add_variant(Path(shutil.copytree(models_dir, tmp_path / "models")))


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(1).random((3, 3, 64, 32), dtype=np.float32)


def test_cpu_serves_the_int8_inv_id_by_default_and_float_when_forced(quantised: Path, images: np.ndarray) -> None:
    auto = Encoders(quantised, device="cpu", threads=1)
    floats = Encoders(quantised, device="cpu", threads=1, precision="float")
    assert auto.precision == {"inv_id": "int8", "inv_noise": "float32", "denoiser": "float32"}
    assert floats.precision == dict.fromkeys(MODEL_FILES, "float32")
    np.testing.assert_allclose(auto.identity(images), 2 * floats.identity(images), rtol=1e-5, atol=1e-6)


def test_float_is_kept_on_cpu_when_int8_lost_accuracy_but_can_be_forced(models_dir: Path, tmp_path: Path,
                                                                          images: np.ndarray) -> None:
    models = _add_variant(Path(shutil.copytree(models_dir, tmp_path / "models")), cpu="float32")
    auto = Encoders(models, device="cpu", threads=1)
    forced = Encoders(models, device="cpu", threads=1, precision="int8")
    assert auto.precision["inv_id"] == "float32" and forced.precision["inv_id"] == "int8"
    np.testing.assert_allclose(forced.identity(images), 2 * auto.identity(images), rtol=1e-5, atol=1e-6)


def test_cuda_serves_float32_whatever_the_cpu_choice(quantised: Path) -> None:
    metadata = ModelMetadata.load(quantised)
    assert metadata.precisions("auto", cuda=True) == dict.fromkeys(MODEL_FILES, "float32")
    assert metadata.precisions("auto", cuda=False)["inv_id"] == "int8"
    assert metadata.precisions("int8", cuda=True)["inv_id"] == "int8"


def test_int8_without_a_variant_or_unknown_precision_is_refused(models_dir: Path, quantised: Path) -> None:
    assert Encoders(models_dir, device="cpu", threads=1).precision == dict.fromkeys(MODEL_FILES, "float32")
    with pytest.raises(ModelError, match="no INT8 Inv-Id"):
        Encoders(models_dir, device="cpu", threads=1, precision="int8")
    with pytest.raises(ModelError, match="choose one of"):
        Encoders(quantised, device="cpu", threads=1, precision="fp16")


def test_a_variant_made_from_another_model_is_refused(models_dir: Path, tmp_path: Path) -> None:
    other = "sha256:" + "cd" * 32
    stale = _add_variant(Path(shutil.copytree(models_dir, tmp_path / "stale")), made_from=other)
    with pytest.raises(ModelError, match=f"quantised from model {other}.*model_id is {MODEL_ID}"):
        Encoders(stale, device="cpu", threads=1)
    unstamped = _add_variant(Path(shutil.copytree(models_dir, tmp_path / "unstamped")), made_from=None)
    with pytest.raises(ModelError, match="quantised from model None"):
        Encoders(unstamped, device="cpu", threads=1)
    assert Encoders(stale, device="cpu", threads=1, precision="float").precision["inv_id"] == "float32"


def test_cpu_precision_naming_a_missing_variant_is_refused(models_dir: Path, tmp_path: Path) -> None:
    models = Path(shutil.copytree(models_dir, tmp_path / "models"))
    replace(ModelMetadata.load(models), cpu_precision={"inv_noise": "int8"}).save(models)
    with pytest.raises(ModelError, match="no INT8 file"):
        Encoders(models, device="cpu", threads=1)


def test_model_json_round_trips_identity_and_variants(quantised: Path, tmp_path: Path) -> None:
    metadata = ModelMetadata.load(quantised)
    assert (metadata.model_id, metadata.int8_files, metadata.cpu_precision) == (
        MODEL_ID, {"inv_id": INT8_FILE}, {"inv_id": "int8"})
    metadata.save(tmp_path)
    assert ModelMetadata.load(tmp_path) == metadata
    raw = json.loads((tmp_path / "model.json").read_text())
    assert raw["files"] == MODEL_FILES  # the float map old readers know, unchanged


def test_model_json_without_identity_or_variants_still_loads(tmp_path: Path) -> None:
    models = build_models(tmp_path / "models")
    raw = json.loads((models / "model.json").read_text())
    for key in ("model_id", "int8_files", "cpu_precision"):
        raw.pop(key)
    (models / "model.json").write_text(json.dumps(raw))
    metadata = ModelMetadata.load(models)
    assert (metadata.model_id, metadata.int8_files, metadata.cpu_precision) == (None, {}, {})
