"""The gallery-store routes over HTTP (TestClient, tiny ONNX models): richer entries, listing, stored crops,
relabel and merge, filtered and stored-entry queries, batch queries, transfer from an entry, model identity."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from genreid.service.app import create_app
from genreid.service.core.model_json import ModelMetadata

TIMES = ["2026-12-01T08:00:00Z", "2026-12-01T09:30:00+01:00", "", "2026-12-01T12:00:00Z", "2026-12-01T13:00:00Z"]
PEOPLE = [(1, 0), (1, 5), (2, 0), (2, 9), (3, 0)]
CAMERAS = ["c1", "c2", "c1", "", "c3"]


@pytest.fixture
def entries(client: TestClient, crop) -> list[dict]:
    files = [("files", (f"p{p}_{v}.png", crop(p, v), "image/png")) for p, v in PEOPLE]
    data = {"person_id": [f"p{p}" for p, _ in PEOPLE], "camera": CAMERAS, "seen_at": TIMES,
            "track_id": ["t1", "t1", "", "t2", "t3"]}
    response = client.post("/gallery", files=files, data=data)
    assert response.status_code == 201, response.text
    return response.json()["entries"]


def query(client: TestClient, crop: bytes, **params: object) -> list[dict]:
    response = client.post("/query", files={"file": ("q.png", crop, "image/png")},
                           params={"include_noise": "false", **params})
    assert response.status_code == 200, response.text
    return response.json()["matches"]


def test_enrolment_keeps_time_track_and_crop(entries: list[dict]):
    assert [e["seen_at"] for e in entries] == [
        "2026-12-01T08:00:00Z", "2026-12-01T08:30:00Z", None, "2026-12-01T12:00:00Z", "2026-12-01T13:00:00Z"]
    assert [e["track_id"] for e in entries] == ["t1", "t1", None, "t2", "t3"]
    assert all(e["has_crop"] for e in entries)


def test_matches_say_whether_a_crop_is_stored(client: TestClient, make_settings, crop):
    client.post("/gallery", files=[("files", ("a.png", crop(1), "image/png"))], data={"person_id": ["p"]})
    assert query(client, crop(1))[0]["has_crop"] is True
    with TestClient(create_app(make_settings(data=make_settings().data.parent / "codes-only", store_crops=False))
                    ) as codes_only:
        codes_only.post("/gallery", files=[("files", ("a.png", crop(1), "image/png"))], data={"person_id": ["p"]})
        assert query(codes_only, crop(1))[0]["has_crop"] is False


@pytest.mark.parametrize("seen_at, why", [
    (["2026-12-01T08:00:00"], "UTC offset"), (["yesterday"], "ISO 8601"), (["", ""], "one per file"),
])
def test_a_bad_time_is_refused_and_nothing_stored(client: TestClient, crop, seen_at: list[str], why: str):
    response = client.post("/gallery", files=[("files", ("a.png", crop(1), "image/png"))],
                           data={"person_id": ["p"], "seen_at": seen_at})
    assert response.status_code == 422 and why in response.json()["detail"]
    assert client.get("/gallery").json() == {"entries": 0, "persons": 0}


def test_stored_crop_is_a_small_webp_at_twice_the_model_resolution(client: TestClient, entries: list[dict]):
    response = client.get(f"/gallery/entries/{entries[0]['entry_id']}/crop")
    assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
    assert "private" in response.headers["cache-control"]
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "WEBP" and image.size == (64, 128) and len(response.content) < 8000


def test_codes_only_setting_stores_no_crops(make_settings, crop):
    with TestClient(create_app(make_settings(store_crops=False))) as client:
        response = client.post("/gallery", files=[("files", ("a.png", crop(1), "image/png"))],
                               data={"person_id": ["p"]})
        entry = response.json()["entries"][0]
        assert entry["has_crop"] is False
        missing = client.get(f"/gallery/entries/{entry['entry_id']}/crop")
        assert missing.status_code == 404 and "no stored crop" in missing.json()["detail"]


def test_listing_pages_and_filters(client: TestClient, entries: list[dict]):
    ids = [e["entry_id"] for e in entries]
    first = client.get("/gallery/entries", params={"limit": 2}).json()
    second = client.get("/gallery/entries", params={"limit": 2, "offset": 2}).json()
    assert first["total"] == second["total"] == 5
    assert [e["entry_id"] for e in first["entries"] + second["entries"]] == ids[:4]
    by_person = client.get("/gallery/entries", params={"person_id": "p2"}).json()
    assert [e["entry_id"] for e in by_person["entries"]] == ids[2:4]
    by_camera = client.get("/gallery/entries", params=[("camera", "c1"), ("camera", "c3")]).json()
    assert [e["entry_id"] for e in by_camera["entries"]] == [ids[0], ids[2], ids[4]]
    window = client.get("/gallery/entries", params={"seen_after": "2026-12-01T08:15:00Z",
                                                    "seen_before": "2026-12-01T12:00:00Z"}).json()
    assert [e["entry_id"] for e in window["entries"]] == [ids[1], ids[3]]
    assert client.get(f"/gallery/entries/{ids[3]}").json() == entries[3]


def test_relabel_shows_in_queries_and_counts(client: TestClient, entries: list[dict], crop):
    target = entries[4]["entry_id"]
    response = client.patch(f"/gallery/entries/{target}", json={"person_id": "p1"})
    assert response.status_code == 200 and response.json()["person_id"] == "p1"
    assert client.get("/gallery").json() == {"entries": 5, "persons": 2}
    assert query(client, crop(3), k=1)[0]["person_id"] == "p1"
    assert client.patch("/gallery/entries/999999", json={"person_id": "x"}).status_code == 404
    assert client.patch(f"/gallery/entries/{target}", json={"person_id": "  "}).status_code == 422


def test_merge_moves_every_entry(client: TestClient, entries: list[dict]):
    response = client.post("/gallery/persons/p2/merge", json={"into": "p1"})
    assert response.status_code == 200
    assert response.json() == {"moved": 2, "entry_ids": [entries[2]["entry_id"], entries[3]["entry_id"]]}
    assert client.get("/gallery/entries", params={"person_id": "p1"}).json()["total"] == 4
    assert client.post("/gallery/persons/p2/merge", json={"into": "p1"}).status_code == 404
    assert client.post("/gallery/persons/p1/merge", json={"into": "p1"}).status_code == 422


def test_filtered_queries_search_only_the_admitted_entries(client: TestClient, entries: list[dict], crop):
    ids = [e["entry_id"] for e in entries]
    everything = query(client, crop(1), k=10)
    cross_camera = query(client, crop(1), k=10, exclude_camera="c1")
    assert [m["entry_id"] for m in cross_camera] == [m["entry_id"] for m in everything if m["camera"] != "c1"]
    only = query(client, crop(1), k=10, camera=["c2", "c3"])
    assert {m["entry_id"] for m in only} == {ids[1], ids[4]}
    window = query(client, crop(1), k=10, seen_after="2026-12-01T08:30:00Z")
    assert {m["entry_id"] for m in window} == {ids[1], ids[3], ids[4]}
    assert query(client, crop(1), k=1, camera="c3")[0]["entry_id"] == ids[4]  # exact, not a post-filtered top-1
    backwards = client.post("/query", files={"file": ("q.png", crop(1))},
                            params={"seen_after": "2026-12-02T00:00:00Z", "seen_before": "2026-12-01T00:00:00Z"})
    assert backwards.status_code == 422


def test_query_from_a_stored_entry_leaves_it_out(client: TestClient, entries: list[dict], crop):
    source = entries[2]["entry_id"]
    response = client.post("/query", data={"entry_id": str(source)}, params={"k": 10})
    assert response.status_code == 200
    body = response.json()
    assert source not in [m["entry_id"] for m in body["matches"]] and len(body["matches"]) == 4
    assert body["matches"][0]["person_id"] == "p2" and "noise" not in body
    from_crop = query(client, crop(2, 0), k=10)
    assert [m["entry_id"] for m in body["matches"]] == [m["entry_id"] for m in from_crop[1:]]
    assert client.post("/query", data={"entry_id": "999999"}).status_code == 404
    both = client.post("/query", data={"entry_id": str(source)}, files={"file": ("q.png", crop(1))})
    assert both.status_code == 422 and client.post("/query").status_code == 422


def test_batch_query_answers_each_crop_as_a_single_query_would(client: TestClient, entries: list[dict], crop):
    files = [("files", (f"q{p}.png", crop(p, 7), "image/png")) for p in (1, 2, 3)]
    response = client.post("/query/batch", files=files, params={"k": 3, "exclude_camera": "c1"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["matches"] for r in results] == [query(client, crop(p, 7), k=3, exclude_camera="c1")
                                              for p in (1, 2, 3)]


def test_transfer_from_a_gallery_entry_draws_its_stored_code(client: TestClient, entries: list[dict], crop):
    pose = ("pose.png", crop(4), "image/png")
    from_entry = client.post("/transfer", data={"identity_entry_id": str(entries[2]["entry_id"])},
                             files={"pose": pose})
    from_crop = client.post("/transfer", files={"identity": ("i.png", crop(2, 0), "image/png"), "pose": pose})
    assert from_entry.status_code == 200 and from_entry.content == from_crop.content
    missing = client.post("/transfer", data={"identity_entry_id": "999999"}, files={"pose": pose})
    assert missing.status_code == 404
    assert client.post("/transfer", files={"pose": pose}).status_code == 422


def test_a_deleted_entry_is_gone_from_every_route(client: TestClient, entries: list[dict], crop):
    target = entries[0]["entry_id"]
    assert client.delete(f"/gallery/entries/{target}").status_code == 200
    assert client.get(f"/gallery/entries/{target}/crop").status_code == 404
    assert client.get(f"/gallery/entries/{target}").status_code == 404
    assert client.post("/query", data={"entry_id": str(target)}).status_code == 404
    assert target not in [e["entry_id"] for e in client.get("/gallery/entries").json()["entries"]]
    assert target not in [m["entry_id"] for m in query(client, crop(1, 0), k=10)]


def test_health_names_the_store_and_the_code_space(client: TestClient, models_dir: Path):
    health = client.get("/health").json()
    assert health["gallery"]["backend"] == "embedded" and health["faiss_device"] == "cpu"
    assert health["model_id"] == ModelMetadata.load(models_dir).model_id
    assert health["precision"]["inv_id"] in ("int8", "float32")
    # the tiny model carries no re-ranking parameters: the server serves code-distance order
    assert health["rerank"] == {"available": False, "default": False, "neighbourhoods_kept": False}


def test_a_person_id_holding_slashes_is_merged_and_removed_by_its_path(client, crop):
    """Tracker ids such as `cam1/track 42` are one path parameter, percent-encoded or not."""
    files = [("files", (f"{i}.png", crop(i, 1), "image/png")) for i in range(3)]
    person_ids = ["cam1/track 42", "cam1/track 42", "cam2/track/7"]
    enrolled = client.post("/gallery", files=files, data={"person_id": person_ids})
    assert enrolled.status_code == 201, enrolled.text
    ids = [e["entry_id"] for e in enrolled.json()["entries"]]
    merged = client.post("/gallery/persons/cam2%2Ftrack%2F7/merge", json={"into": "cam1/track 42"})
    assert merged.status_code == 200 and merged.json()["entry_ids"] == [ids[2]], merged.text
    removed = client.delete("/gallery/persons/cam1/track%2042")
    assert removed.status_code == 200 and removed.json()["entry_ids"] == ids, removed.text
    assert client.get("/gallery").json() == {"entries": 0, "persons": 0}
    assert client.delete("/gallery/persons/cam2/track/7").status_code == 404
