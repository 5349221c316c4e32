"""Export of a model whose Inv-Id reads twice the generator's resolution (preset `inv_id_resolution`): each
network's ONNX file, parity check, INT8 calibration, model.json, model card, figures, `genreid evaluate` and the
service all use that network's own input size."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import genreid.training.rerank
from genreid.service.app import create_app
from genreid.service.core.imaging import preprocess
from genreid.service.core.model_json import MODEL_FILES
from genreid.service.encoders import Encoders, open_session
from genreid.service.gallery_tools import embed_crops
from genreid.service.settings import Settings
from genreid.training.export import SOURCE_TRACE, export_run
from genreid.training.presets import get_preset
from genreid.training.quantize import INT8_FILES
from genreid.training.stages.inv_id import train_inv_id

from .conftest import TinyRun, make_context

GENERATOR, FINER = (64, 32), (128, 64)


@pytest.fixture(scope="module")
def finer_run(tiny_stages, tmp_path_factory) -> TinyRun:
    """The tiny run's generator and Inv-Noise beside a barely trained (8 steps) hybrid Inv-Id reading 128x64
    through a 2x2 patch input conv (a strided first layer, which the ONNX, INT8 and served graphs must keep)."""
    preset = get_preset("tiny", inv_id_resolution=FINER, inv_id_modes=("hybrid",), inv_id_steps=8,
                        inv_id_stem_stride=2)
    ctx = make_context(preset, tiny_stages.data_root, tmp_path_factory.mktemp("finer-run"), tiny_stages.cache_dir)
    for name in ("generator.pt", "codes.pt", "samples.npz", "inv_noise.pt", "timings.json"):
        shutil.copy(tiny_stages.path(name), ctx.path(name))
    train_inv_id(ctx, "hybrid")
    models = tmp_path_factory.mktemp("finer-models")
    return TinyRun(ctx, models, export_run(ctx, models))


def crop_of(root: Path) -> bytes:
    """A real crop of the synthetic data set, at its stored size."""
    return sorted((root / "query").glob("*.jpg"))[0].read_bytes()


def test_each_onnx_file_takes_its_networks_size_and_model_json_says_both(finer_run: TinyRun) -> None:
    raw = json.loads((finer_run.models / "model.json").read_text())
    assert raw["resolution"] == list(GENERATOR) and raw["inv_id_resolution"] == list(FINER)
    shapes = {name: [d.dim_value for d in onnx.load(str(finer_run.models / file)).graph.input[0].type.tensor_type
                     .shape.dim[1:]] for name, file in {**MODEL_FILES, "int8": INT8_FILES["inv_id"]}.items()}
    assert shapes == {"inv_id": [3, *FINER], "int8": [3, *FINER], "inv_noise": [3, *GENERATOR],
                      "denoiser": [3, *GENERATOR]}
    assert max(raw["onnx_parity_max_abs"].values()) <= 1e-4
    validation = raw["quantization"]["inv_id"]["validation"]  # INT8 calibrated and scored on 128x64 crops
    assert validation["float32"]["mAP"] == pytest.approx(raw["validation"]["mAP"], abs=0.01)


def test_exported_files_carry_no_source_paths(finer_run: TinyRun) -> None:
    """The exporter annotates nodes with the source lines (this machine's paths) that made them; export drops them,
    and the INT8 file made from the float one has none either."""
    for file in (*MODEL_FILES.values(), INT8_FILES["inv_id"]):
        assert SOURCE_TRACE.encode() not in (finer_run.models / file).read_bytes(), file


def test_every_precision_serves_128x64_crops_and_refuses_the_generators_size(finer_run: TinyRun) -> None:
    _, val = finer_run.ctx.inv_id_splits
    for precision in ("float", "int8"):
        encoders = Encoders(finer_run.models, device="cpu", precision=precision)
        assert (encoders.identity_resolution, encoders.resolution) == (FINER, GENERATOR)
        assert encoders.identity(val.floats(slice(0, 3))).shape == (3, 32)
        with pytest.raises(ValueError, match="inv_id expects images of shape"):
            encoders.identity(np.zeros((1, 3, *GENERATOR), np.float32))
        with pytest.raises(ValueError, match="inv_noise expects images of shape"):
            encoders.noise(np.zeros((1, 3, *FINER), np.float32))


def test_the_service_enrols_queries_and_transfers_with_the_finer_inv_id(finer_run: TinyRun, synthetic_root: Path,
                                                                       tmp_path: Path) -> None:
    upload = crop_of(synthetic_root)
    expected = open_session(finer_run.models / MODEL_FILES["inv_id"], ["CPUExecutionProvider"]).run(
        None, {"image": preprocess(upload, FINER)[None]})[0][0]
    settings = Settings(models=finer_run.models, data=tmp_path / "data", device="cpu", precision="float")
    with TestClient(create_app(settings)) as client:
        enrolled = client.post("/gallery", files=[("files", ("a.jpg", upload, "image/jpeg"))],
                               data={"person_id": ["a"]})
        assert enrolled.status_code == 201, enrolled.text
        entry_id = enrolled.json()["entries"][0]["entry_id"]
        body = client.post("/query", files={"file": ("q.jpg", upload, "image/jpeg")}).json()
        stored = client.get(f"/gallery/entries/{entry_id}/crop").content
        rendered = client.post("/transfer", files={"identity": ("a.jpg", upload), "pose": ("b.jpg", upload)})
    np.testing.assert_allclose(body["identity"], expected, rtol=1e-4, atol=1e-5)
    assert body["matches"][0]["entry_id"] == entry_id
    assert body["noise"]["shape"] == [3, *GENERATOR]
    assert rendered.status_code == 200 and Image.open(io.BytesIO(rendered.content)).size == GENERATOR[::-1]
    assert Image.open(io.BytesIO(stored)).size == FINER[::-1]
    again = embed_crops(Encoders(finer_run.models, device="cpu", precision="float"), [stored], [entry_id],
                        max_pixels=10**6)[0]
    assert again @ expected / np.linalg.norm(again) / np.linalg.norm(expected) > 0.99  # WebP loss only


def test_evaluate_card_figures_and_rerank_encode_identity_at_128x64(finer_run: TinyRun, synthetic_root: Path,
                                                                   tmp_path: Path, monkeypatch) -> None:
    from genreid.training.export import retune_rerank
    from genreid.training.figures import make_figures
    from genreid.training.model_card import CARD_JSON, write_card

    evaluated = subprocess.run([sys.executable, "-m", "genreid.service.cli", "evaluate", "--data", str(synthetic_root),
                                "--models", str(finer_run.models), "--device", "cpu", "--no-rerank"],
                               capture_output=True, text=True, check=True)
    assert json.loads(evaluated.stdout)["gallery"] == 6 * 3 * 2
    monkeypatch.setattr(genreid.training.rerank, "GRID",
                        {"candidates": (5,), "k1": (3,), "k2": (1,), "lambda_": (0.3,)})
    assert retune_rerank(finer_run.ctx, finer_run.models)["validation"]["reranked"]["queries"] > 0
    text = write_card(finer_run.ctx, finer_run.models).read_text()
    card = json.loads((finer_run.models / CARD_JSON).read_text())
    assert card["input_sizes"] == {"inv_id": list(FINER), "generator": list(GENERATOR)}
    assert "Input 128x64 (Inv-Id), 64x32 (Inv-Noise, generator) RGB." in text
    served = card["precision"]["inv_id"]["test"][card["precision"]["cpu"]["inv_id"]]  # what evaluate ran
    assert json.loads(evaluated.stdout)["mAP"] == pytest.approx(served["mAP"], abs=1e-4)
    written = {path.name: path for path in make_figures(finer_run.ctx, tmp_path, finer_run.models)}
    with Image.open(written["retrieval.png"]) as retrieval, Image.open(written["reconstruction.png"]) as rebuilt:
        assert retrieval.size[1] == 6 * (128 * 3 + 4) + 4  # six queries, shown as Inv-Id reads them
        assert rebuilt.size[1] == 8 * (64 * 3 + 4) + 4  # eight crops at the generator's size
