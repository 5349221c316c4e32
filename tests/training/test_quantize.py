"""The model identity and the INT8 Inv-Id: made by export from the float ONNX files alone, close to float, in
the same code space, and gated on validation accuracy."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import genreid.training.quantize
from genreid.service.core.model_json import MODEL_FILES, ModelMetadata
from genreid.service.encoders import MODEL_ID_KEY, Encoders
from genreid.training.quantize import CALIBRATION, INT8_FILES, MAX_MAP_LOSS, fold_half_casts, model_id, quantize_inv_id

SHIPPED = Path(__file__).resolve().parents[2] / "models"


def _float_only(models: Path, into: Path) -> Path:
    """A copy of an exported directory as an older export left it: float files, no identity, no INT8 file."""
    shutil.copytree(models, into)
    (into / INT8_FILES["inv_id"]).unlink()
    metadata = ModelMetadata.load(into)
    replace(metadata, model_id=None, int8_files={}, cpu_precision={}, quantization={}).save(into)
    return into


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_export_identifies_the_model_and_ships_an_int8_inv_id(tiny_run):
    metadata = ModelMetadata.load(tiny_run.models)
    assert metadata.model_id == model_id(tiny_run.models / MODEL_FILES["inv_id"])
    assert metadata.model_id.startswith("sha256:") and len(metadata.model_id) == len("sha256:") + 64
    assert metadata.int8_files == INT8_FILES
    quantised = onnx.load(str(tiny_run.models / INT8_FILES["inv_id"]))
    assert {prop.key: prop.value for prop in quantised.metadata_props} == {MODEL_ID_KEY: metadata.model_id}
    ops = {node.op_type for node in quantised.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in quantised.graph.initializer)
    validation = metadata.quantization["inv_id"].validation
    loss = validation["float32"]["mAP"] - validation["int8"]["mAP"]
    assert metadata.cpu_precision == {"inv_id": "int8" if loss <= MAX_MAP_LOSS else "float32"}


@pytest.mark.parametrize("where", ["tiny run", "shipped"])
def test_int8_weights_use_seven_bits_so_cpus_without_vnni_do_not_saturate(tiny_run, where):
    """AVX2 sums pairs of uint8 x int8 products in int16: 8-bit weights overflow it and the shipped Inv-Id lost 3.6
    validation mAP points on an AVX2-only CPU; 7-bit weights (reduce_range) leave the headroom."""
    models = tiny_run.models if where == "tiny run" else SHIPPED
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(models / INT8_FILES["inv_id"])).graph.initializer
               if t.data_type == onnx.TensorProto.INT8]
    assert weights
    # ONNX Runtime's 7-bit symmetric range is [-64, 64]: 2 x 255 x 64 = 32,640 still fits in int16
    assert max(int(np.abs(w).max()) for w in weights) <= 64


def test_int8_codes_point_where_float_codes_do(tiny_run):
    _, val = tiny_run.ctx.splits
    images = val.floats()
    floats = Encoders(tiny_run.models, device="cpu", precision="float").identity(images)
    int8 = Encoders(tiny_run.models, device="cpu", precision="int8").identity(images)
    assert not np.array_equal(floats, int8)  # a different network ran
    cosines = _cosines(floats, int8)
    assert cosines.mean() > 0.99 and cosines.min() > 0.95


def test_model_id_is_defined_by_the_numbers_not_the_file(tiny_run, tmp_path):
    path = tiny_run.models / MODEL_FILES["inv_id"]
    original = onnx.load(str(path))
    folded = fold_half_casts(original)
    assert len(folded.graph.node) < len(original.graph.node)  # export stores weights as float16 + Cast
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in folded.graph.initializer)
    onnx.save(folded, str(tmp_path / "stored_as_float32.onnx"))
    assert model_id(tmp_path / "stored_as_float32.onnx") == model_id(path)

    largest = max(folded.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    values = numpy_helper.to_array(largest).copy()
    values.flat[0] = np.nextafter(values.flat[0], np.float32(np.inf))
    largest.CopyFrom(numpy_helper.from_array(values, largest.name))
    assert model_id(folded) != model_id(path)


def test_quantize_works_from_float_files_and_keeps_float_on_cpu_when_int8_loses(tiny_run, tmp_path, monkeypatch):
    models = _float_only(tiny_run.models, tmp_path / "models")
    monkeypatch.setattr(genreid.training.quantize, "MAX_MAP_LOSS", -1.0)  # no INT8 model can pass: the gate must say no
    metadata = quantize_inv_id(tiny_run.ctx, models, ModelMetadata.load(models))
    metadata.save(models)
    assert metadata.model_id == ModelMetadata.load(tiny_run.models).model_id
    assert (models / INT8_FILES["inv_id"]).is_file()
    assert metadata.cpu_precision == {"inv_id": "float32"}
    assert Encoders(models, device="cpu").precision["inv_id"] == "float32"
    assert Encoders(models, device="cpu", precision="int8").precision["inv_id"] == "int8"


def test_a_model_directory_without_its_run_is_quantised_and_carded(tiny_run, synthetic_root, cache_dir, tmp_path):
    from genreid.training.cli import main
    from genreid.training.model_card import CARD_FILE, CARD_JSON, write_card

    with_card = tmp_path / "with-card"
    shutil.copytree(tiny_run.models, with_card)
    write_card(tiny_run.ctx, with_card)
    from_run = json.loads((with_card / CARD_JSON).read_text())
    models = _float_only(with_card, tmp_path / "models")

    common = ["--data", str(synthetic_root), "--cache-dir", str(cache_dir)]
    assert main(["export", "--to", str(models), *common]) == 0
    metadata = ModelMetadata.load(models)
    assert metadata.model_id == ModelMetadata.load(tiny_run.models).model_id
    assert metadata.int8_files == INT8_FILES
    assert main(["card", "--models", str(models), *common]) == 0

    card = json.loads((models / CARD_JSON).read_text())
    assert card["facts_from_run"] is False and from_run["facts_from_run"] is True
    assert card["training_wall_seconds"] == from_run["training_wall_seconds"]
    assert card["test"]["paper"] == from_run["test"]["paper"]  # only its torch checkpoint could re-measure it
    assert card["test"]["hybrid"] == card["precision"]["inv_id"]["test"]["float32"]
    assert card["precision"]["cpu"]["inv_id"] == metadata.cpu_precision["inv_id"]
    assert card["precision"]["calibration"] == metadata.quantization["inv_id"].calibration == CALIBRATION
    text = (models / CARD_FILE).read_text()
    assert f"ranges at their {CALIBRATION})" in text.replace("\n", " ")
    assert "training run being gone" in text and metadata.model_id in text
    assert main(["card", "--models", str(tmp_path / "nowhere"), *common]) == 2
