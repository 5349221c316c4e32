"""Fixtures for the service tests: tiny ONNX models built with onnx.helper (no torch), synthetic person
crops and apps on a fresh gallery directory."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from genreid.service.app import create_app
from genreid.service.core.model_json import MODEL_FILES, ModelMetadata
from genreid.service.core.schedule import Schedule
from genreid.service.settings import Settings

HEIGHT, WIDTH, CODE_DIM = 64, 32, 32
MATCH_THRESHOLD = 0.2  # between the fake models' same-person (<= 0.14) and other-person (>= 0.27) distances
OPSET = [helper.make_opsetid("", 17)]


def _images(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3, HEIGHT, WIDTH])


def _save(path: Path, nodes: list, inputs: list, outputs: list, initializers: list) -> None:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=OPSET)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def _constant(name: str, value: float | list[int] | np.ndarray, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def build_models(directory: Path, match_threshold: float | None = MATCH_THRESHOLD, *, seed: int = 0,
                 model_id: str | None = None) -> Path:
    """inv_id: a seeded random projection of the flattened image (equal images, equal codes; another `seed`,
    another code space); inv_noise: 2 * image - 1; denoiser: noisy * noise rate + code mean / 10, so renders
    depend on both the code and the pose."""
    directory.mkdir(parents=True, exist_ok=True)
    pixels = 3 * HEIGHT * WIDTH
    projection = np.random.default_rng(seed).normal(0, 1 / np.sqrt(pixels), (pixels, CODE_DIM))
    _save(
        directory / MODEL_FILES["inv_id"],
        [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "projection"], ["code"])],
        [_images("image")],
        [helper.make_tensor_value_info("code", TensorProto.FLOAT, ["batch", CODE_DIM])],
        [_constant("projection", projection)],
    )
    _save(
        directory / MODEL_FILES["inv_noise"],
        [helper.make_node("Mul", ["image", "two"], ["doubled"]),
         helper.make_node("Sub", ["doubled", "one"], ["noise"])],
        [_images("image")],
        [_images("noise")],
        [_constant("two", 2.0), _constant("one", 1.0)],
    )
    _save(
        directory / MODEL_FILES["denoiser"],
        [
            helper.make_node("Sqrt", ["noise_variance"], ["noise_rate"]),
            helper.make_node("Reshape", ["noise_rate", "column"], ["noise_rate4"]),
            helper.make_node("Mul", ["noisy", "noise_rate4"], ["scaled"]),
            helper.make_node("ReduceMean", ["code"], ["code_mean"], axes=[1], keepdims=1),
            helper.make_node("Mul", ["code_mean", "tenth"], ["shift"]),
            helper.make_node("Reshape", ["shift", "column"], ["shift4"]),
            helper.make_node("Add", ["scaled", "shift4"], ["eps"]),
        ],
        [_images("noisy"), helper.make_tensor_value_info("noise_variance", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("code", TensorProto.FLOAT, ["batch", CODE_DIM])],
        [_images("eps")],
        [_constant("tenth", 0.1), _constant("column", [-1, 1, 1, 1], np.int64)],
    )
    ModelMetadata(
        resolution=(HEIGHT, WIDTH), code_dim=CODE_DIM, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        schedule=Schedule(), steps=3, match_threshold=match_threshold, model_id=model_id,
    ).save(directory)
    return directory


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def build_tiny_models() -> Callable[..., Path]:
    """build_models, for tests that need models of their own (another seed or model_id)."""
    return build_models


@pytest.fixture(scope="session")
def models_without_threshold(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models-no-threshold")
    shutil.copytree(models_dir, directory, dirs_exist_ok=True)
    replace(ModelMetadata.load(directory), match_threshold=None).save(directory)
    return directory


@pytest.fixture
def reranking_models(models_dir: Path, tmp_path: Path) -> Path:
    """The tiny models with re-ranking parameters (K 12)."""
    directory = tmp_path / "models-rerank"
    shutil.copytree(models_dir, directory)
    replace(ModelMetadata.load(directory), rerank={"k1": 4, "k2": 2, "lambda": 0.3, "candidates": 12}).save(directory)
    return directory


def make_crop(person: int, variant: int = 0, size: tuple[int, int] = (48, 96), fmt: str = "PNG") -> bytes:
    """A synthetic crop: a per-person colour pair (shirt over trousers), a per-variant bright patch."""
    rng = np.random.default_rng(person)
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    width, height = size
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[: height // 2], pixels[height // 2 :] = top, bottom
    if variant:
        pixels[variant % height : variant % height + 4, :4] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(models_dir: Path, tmp_path: Path) -> MakeSettings:
    """Settings on the tiny models and this test's own gallery directory; keyword overrides."""

    def make(**overrides: object) -> Settings:
        values = {"models": models_dir, "data": tmp_path / "data", "device": "cpu", "threads": 1}
        return Settings(**{**values, **overrides})

    return make


@pytest.fixture
def client(make_settings: MakeSettings) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client


def enrol_people(
    client: TestClient, people: list[tuple[int, int]], cameras: list[str] | None = None
) -> list[dict]:
    """POST (person, variant) crops as persons 'p<person>'; returns the stored entries."""
    files = [("files", (f"p{p}_{v}.png", make_crop(p, v), "image/png")) for p, v in people]
    data: dict[str, list[str]] = {"person_id": [f"p{p}" for p, _ in people]}
    if cameras is not None:
        data["camera"] = cameras
    response = client.post("/gallery", files=files, data=data)
    assert response.status_code == 201, response.text
    return response.json()["entries"]


# Test modules cannot import this conftest under --import-mode=importlib: they get the helpers as fixtures.
@pytest.fixture
def crop() -> Callable[..., bytes]:
    return make_crop


@pytest.fixture
def enrol() -> Callable[..., list[dict]]:
    return enrol_people
