"""The HTTP contract on the real app (TestClient, tiny ONNX models): enrol, query, delete, transfer."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from genreid.service.app import create_app

from .conftest import MATCH_THRESHOLD

PEOPLE = [(1, 0), (1, 5), (2, 0), (2, 9), (3, 0)]


def test_enrol_returns_entries_and_counts(client, enrol):
    entries = enrol(client, PEOPLE, cameras=["c1", "c2", "c1", "", "c3"])
    assert [e["person_id"] for e in entries] == ["p1", "p1", "p2", "p2", "p3"]
    assert [e["camera"] for e in entries] == ["c1", "c2", "c1", None, "c3"]
    assert len({e["entry_id"] for e in entries}) == len(PEOPLE)
    assert client.get("/gallery").json() == {"entries": 5, "persons": 3}


def test_enrol_answer_has_added_count(client, crop):
    response = client.post(
        "/gallery", files=[("files", ("a.png", crop(4), "image/png"))], data={"person_id": ["walker"]}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["added"] == 1
    assert body["entries"][0]["person_id"] == "walker" and body["entries"][0]["camera"] is None


def test_query_of_an_enrolled_crop_ranks_it_first(client, enrol, crop):
    entries = enrol(client, PEOPLE)
    response = client.post("/query", files={"file": ("q.png", crop(2, 9), "image/png")}, params={"k": 3})
    assert response.status_code == 200
    matches = response.json()["matches"]
    assert len(matches) == 3
    assert matches[0]["entry_id"] == entries[3]["entry_id"]
    assert matches[0]["person_id"] == "p2" and matches[0]["distance"] < 1e-3
    assert matches[0]["within_match_threshold"] is True
    distances = [m["distance"] for m in matches]
    assert distances == sorted(distances)
    assert matches[1]["person_id"] == "p2"  # the same person's other crop beats other people
    assert all(m["within_match_threshold"] is False for m in matches if m["person_id"] != "p2")


def test_k_is_capped_at_gallery_size_and_an_empty_gallery_matches_nothing(client, enrol, crop):
    query = {"file": ("q.png", crop(1), "image/png")}
    empty = client.post("/query", files=query)
    assert empty.status_code == 200 and empty.json()["matches"] == []
    enrol(client, PEOPLE[:2])
    assert len(client.post("/query", files=query, params={"k": 50}).json()["matches"]) == 2


def test_query_identity_and_noise_payloads(client, crop):
    body = client.post("/query", files={"file": ("q.jpg", crop(5, fmt="JPEG"), "image/jpeg")}).json()
    assert len(body["identity"]) == 32 and all(isinstance(x, float) for x in body["identity"])
    noise = body["noise"]
    assert noise["shape"] == [3, 64, 32] and noise["dtype"] == "float32"
    array = np.frombuffer(base64.b64decode(noise["data"]), "<f4").reshape(noise["shape"])
    assert -1.0 <= array.min() < array.max() <= 1.0  # the tiny inv_noise is 2 * image - 1
    assert "noise_preview" not in body


def test_query_noise_options(client, crop):
    query = {"file": ("q.png", crop(5), "image/png")}
    without = client.post("/query", files=query, params={"include_noise": "false"}).json()
    assert "noise" not in without and "noise_preview" not in without
    preview = client.post("/query", files=query, params={"noise_preview": "true"}).json()
    image = Image.open(io.BytesIO(base64.b64decode(preview["noise_preview"])))
    assert image.format == "PNG" and image.size == (32, 64)
    assert "noise" in preview


def test_the_verdict_is_null_without_a_threshold(make_settings, models_without_threshold: Path, enrol, crop):
    with TestClient(create_app(make_settings(models=models_without_threshold))) as client:
        enrol(client, PEOPLE[:1])
        match = client.post("/query", files={"file": ("q.png", crop(1), "image/png")}).json()["matches"][0]
        assert match["within_match_threshold"] is None and match["same_person"] is None
        assert match["distance"] < 1e-3


def test_delete_entry_removes_it_from_results(client, enrol, crop):
    entries = enrol(client, PEOPLE)
    target = entries[0]["entry_id"]
    response = client.delete(f"/gallery/entries/{target}")
    assert response.status_code == 200
    assert response.json() == {"removed": 1, "entry_ids": [target]}
    matches = client.post("/query", files={"file": ("q.png", crop(1), "image/png")}).json()["matches"]
    assert target not in [m["entry_id"] for m in matches] and len(matches) == 4
    assert client.get("/gallery").json() == {"entries": 4, "persons": 3}
    again = client.delete(f"/gallery/entries/{target}")
    assert again.status_code == 404 and "detail" in again.json()


def test_delete_person_removes_all_their_entries(client, enrol, crop):
    entries = enrol(client, PEOPLE)
    response = client.delete("/gallery/persons/p2")
    assert response.status_code == 200
    assert response.json()["entry_ids"] == [entries[2]["entry_id"], entries[3]["entry_id"]]
    matches = client.post("/query", files={"file": ("q.png", crop(2), "image/png")}).json()["matches"]
    assert "p2" not in [m["person_id"] for m in matches]
    assert client.get("/gallery").json() == {"entries": 3, "persons": 2}
    missing = client.delete("/gallery/persons/p2")
    assert missing.status_code == 404 and isinstance(missing.json()["detail"], str)


def test_entry_ids_are_not_reused_after_deletion(client, enrol):
    first = enrol(client, PEOPLE[:2])
    client.delete(f"/gallery/entries/{first[1]['entry_id']}")
    again = enrol(client, PEOPLE[2:3])
    assert again[0]["entry_id"] > first[1]["entry_id"]


def test_transfer_returns_a_png_of_the_model_resolution(client, crop):
    files = {"identity": ("a.png", crop(1), "image/png"), "pose": ("b.png", crop(2, 3), "image/png")}
    response = client.post("/transfer", files=files)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (32, 64)
    scaled = client.post("/transfer", files=files, params={"scale": 4})
    image = Image.open(io.BytesIO(scaled.content))
    assert image.size == (128, 256)
    pixels = np.asarray(image)
    assert (pixels[::4, ::4] == pixels[3::4, 3::4]).all()  # nearest-neighbour blocks


def test_transfer_depends_on_both_inputs(client, crop):
    def render(identity: int, pose: int) -> bytes:
        files = {"identity": ("a.png", crop(identity)), "pose": ("b.png", crop(pose))}
        response = client.post("/transfer", files=files)
        assert response.status_code == 200
        return response.content

    assert render(1, 2) != render(3, 2)
    assert render(1, 2) != render(1, 3)


def test_health_reports_runtime(client, enrol, models_dir: Path):
    enrol(client, PEOPLE[:3])
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["models_loaded"] is True
    assert health["models_dir"] == str(models_dir)
    assert health["providers"] == ["CPUExecutionProvider"]
    assert health["faiss_device"] == "cpu"
    assert health["index_size"] == 3 and health["persons"] == 2
    assert health["match_threshold"] == MATCH_THRESHOLD
    size = json.loads((models_dir / "model.json").read_text())["resolution"]
    assert health["resolution"] == size
    assert health["input_sizes"] == {"inv_id": size, "inv_noise": size, "denoiser": size}


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/gallery", "/query", "/transfer", "/health", "/gallery/entries/{entry_id}"} <= set(paths)
