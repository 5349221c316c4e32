"""Each network's own input size (model.json `resolution` and `inv_id_resolution`): Encoders checks every input
against it, the app reads each upload at the size of every network it feeds, and a model.json without
`inv_id_resolution` (the shipped one) means one size for all.

The finer model here is the tiny one with 2x2 average pooling in front of its Inv-Id, which then reads 128x64
while the generator and Inv-Noise stay at 64x32."""

from __future__ import annotations

import base64
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import helper
from PIL import Image

from genreid.service.app import create_app
from genreid.service.core.imaging import preprocess
from genreid.service.core.model_json import MODEL_FILES, ModelError, ModelMetadata
from genreid.service.encoders import Encoders, open_session
from genreid.service.gallery_tools import embed_crops

SHIPPED = Path(__file__).resolve().parents[2] / "models"
GENERATOR, FINER = (64, 32), (128, 64)


def pooled_inv_id(models: Path, into: Path) -> Path:
    """A copy of `models` whose Inv-Id reads FINER crops: 2x2 average pooling, then the original Inv-Id."""
    shutil.copytree(models, into)
    path = into / MODEL_FILES["inv_id"]
    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["pooled" if name == "image" else name for name in node.input]
    graph.node.insert(0, helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]))
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = FINER
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    replace(ModelMetadata.load(into), inv_id_resolution=FINER).save(into)
    return into


@pytest.fixture(scope="module")
def finer(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pooled_inv_id(models_dir, tmp_path_factory.mktemp("finer") / "models")


def onnx_inv_id(models: Path, images: np.ndarray) -> np.ndarray:
    """The Inv-Id file run by ONNX Runtime directly (on the process's shared pool), not through Encoders."""
    return open_session(models / MODEL_FILES["inv_id"], ["CPUExecutionProvider"], threads=1).run(
        None, {"image": images})[0]


def test_model_json_carries_both_sizes_and_encoders_reports_them(finer: Path) -> None:
    raw = json.loads((finer / "model.json").read_text())
    assert raw["resolution"] == list(GENERATOR) and raw["inv_id_resolution"] == list(FINER)
    encoders = Encoders(finer, device="cpu", threads=1)
    assert (encoders.resolution, encoders.identity_resolution) == (GENERATOR, FINER)
    assert encoders.input_sizes == {"inv_id": FINER, "inv_noise": GENERATOR, "denoiser": GENERATOR}
    assert ModelMetadata.load(finer).as_dict() == raw


@pytest.mark.skipif(not (SHIPPED / "model.json").is_file(), reason="no shipped model in models/")
def test_a_model_json_without_inv_id_resolution_means_one_size_for_all(models_dir: Path, tmp_path: Path) -> None:
    """Exports from before Inv-Id had a size of its own (the model shipped until 2026-12-04) lack the field."""
    raw = json.loads((SHIPPED / "model.json").read_text())
    del raw["inv_id_resolution"]  # the shipped model reads 128x64 crops
    (tmp_path / "older").mkdir()
    (tmp_path / "older" / "model.json").write_text(json.dumps(raw))
    older = ModelMetadata.load(tmp_path / "older")
    assert older.identity_resolution == older.resolution == GENERATOR
    saved = older.save(tmp_path)  # re-saving (tune-rerank does) keeps the file's shape
    assert "inv_id_resolution" not in json.loads(saved.read_text())
    encoders = Encoders(models_dir, device="cpu", threads=1)
    assert encoders.input_sizes == dict.fromkeys(MODEL_FILES, GENERATOR)


def test_each_network_refuses_images_of_another_networks_size(finer: Path, models_dir: Path) -> None:
    encoders = Encoders(finer, device="cpu", threads=1)
    small = np.random.default_rng(0).random((2, 3, *GENERATOR), dtype=np.float32)
    large = np.random.default_rng(1).random((2, 3, *FINER), dtype=np.float32)
    with pytest.raises(ValueError, match=r"inv_id expects images of shape \(N, \(3, 128, 64\)\)"):
        encoders.identity(small)
    with pytest.raises(ValueError, match=r"inv_noise expects images of shape \(N, \(3, 64, 32\)\)"):
        encoders.noise(large)
    pooled = large.reshape(2, 3, 64, 2, 32, 2).mean((3, 5))
    np.testing.assert_allclose(encoders.identity(large), onnx_inv_id(models_dir, pooled), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(encoders.noise(small), 2 * small - 1)


def test_a_model_json_that_misstates_a_size_is_refused_at_load(finer: Path, tmp_path: Path) -> None:
    models = Path(shutil.copytree(finer, tmp_path / "models"))
    replace(ModelMetadata.load(models), inv_id_resolution=None).save(models)
    with pytest.raises(ModelError, match=r"takes images of shape \[N, 3, 128, 64\].*gives inv_id \[N, 3, 64, 32\]"):
        Encoders(models, device="cpu", threads=1)


def test_the_app_reads_each_upload_at_the_size_of_each_network(finer: Path, make_settings, crop) -> None:
    """Enrol, query with noise and transfer on a model whose Inv-Id reads 128x64: codes are Inv-Id's on the crop
    resized to 128x64, noise and renders are 64x32, and the stored crop is Inv-Id's size, so re-embedding it gives
    the upload's code up to WebP loss."""
    upload = crop(3, 5, size=(41, 97))
    expected = onnx_inv_id(finer, preprocess(upload, FINER)[None])[0]
    with TestClient(create_app(make_settings(models=finer))) as client:
        enrolled = client.post("/gallery", files=[("files", ("a.png", upload, "image/png"))],
                               data={"person_id": ["p3"]})
        assert enrolled.status_code == 201, enrolled.text
        entry_id = enrolled.json()["entries"][0]["entry_id"]
        body = client.post("/query", files={"file": ("q.png", upload, "image/png")}).json()
        stored = client.get(f"/gallery/entries/{entry_id}/crop").content
        rendered = client.post("/transfer", files={"identity": ("a.png", upload), "pose": ("b.png", crop(4))})
        health = client.get("/health").json()
    assert health["input_sizes"] == {"inv_id": list(FINER), "inv_noise": list(GENERATOR), "denoiser": list(GENERATOR)}
    assert health["resolution"] == list(GENERATOR)
    np.testing.assert_allclose(body["identity"], expected, rtol=1e-5, atol=1e-6)
    assert body["matches"][0]["entry_id"] == entry_id and body["matches"][0]["distance"] < 1e-3
    noise = np.frombuffer(base64.b64decode(body["noise"]["data"]), "<f4").reshape(body["noise"]["shape"])
    np.testing.assert_allclose(noise, 2 * preprocess(upload, GENERATOR) - 1, atol=1e-6)
    assert rendered.status_code == 200 and Image.open(io.BytesIO(rendered.content)).size == GENERATOR[::-1]
    assert Image.open(io.BytesIO(stored)).size == FINER[::-1]
    again = embed_crops(Encoders(finer, device="cpu", threads=1), [stored], [entry_id], max_pixels=10**6)[0]
    cosine = again @ expected / np.linalg.norm(again) / np.linalg.norm(expected)
    assert cosine > 0.999, cosine  # WebP loss only
