"""genreid.service.client against a real `genreid serve` process (tiny ONNX models) with named API keys: every
method, the typed results, and failures as GenreidError (the server's message and request id, wrong keys, no
server at all). Also PATCH /gallery/entries/{id} by form and by JSON, over raw HTTP."""

from __future__ import annotations

import io
import re
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genreid.service.client import Client, Entry, GalleryCounts, GenreidError, QueryResult

from .conftest import MATCH_THRESHOLD

KEYS = "ops:admin:admin-secret,viewer:query:query-secret"
ADMIN, QUERY = "admin-secret", "query-secret"
PEOPLE = [(1, 0), (1, 5), (2, 0), (2, 9), (3, 0)]
CAMERAS = ["c1", "c2", "c1", None, "c3"]
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
SEEN = [T0, T0 + timedelta(hours=1), None, T0 + timedelta(hours=4), T0 + timedelta(hours=5)]
TRACKS = ["t1", "t1", None, "t2", "t3"]


@pytest.fixture
def server(start_genreid, models_dir: Path, tmp_path: Path):
    return start_genreid("--models", str(models_dir), "--data", str(tmp_path / "data"),
                         env={"GENREID_API_KEYS": KEYS}, api_key=ADMIN)


@pytest.fixture
def genreid(server) -> Iterator[Client]:
    with Client(server.url, api_key=ADMIN) as client:
        yield client


@pytest.fixture
def entries(genreid: Client, crop, tmp_path: Path) -> list[Entry]:
    """PEOPLE enrolled as 'p<person>', the crops given as a Path, bytes and file objects."""
    path = tmp_path / "first.png"
    path.write_bytes(crop(*PEOPLE[0]))
    crops = [path, crop(*PEOPLE[1]), io.BytesIO(crop(*PEOPLE[2])), crop(*PEOPLE[3]), io.BytesIO(crop(*PEOPLE[4]))]
    return genreid.enrol(crops, person_ids=[f"p{p}" for p, _ in PEOPLE], cameras=CAMERAS, seen_at=SEEN,
                         track_ids=TRACKS)


def test_enrol_returns_typed_entries_and_counts(genreid: Client, entries: list[Entry]):
    assert [e.person_id for e in entries] == ["p1", "p1", "p2", "p2", "p3"]
    assert [e.camera for e in entries] == CAMERAS
    assert [e.seen_at for e in entries] == SEEN  # "Z" and offsets read back as aware datetimes
    assert [e.track_id for e in entries] == TRACKS
    assert all(e.has_crop and e.enrolled_at is not None and e.enrolled_at.utcoffset() == timedelta(0)
               for e in entries)
    assert len({e.entry_id for e in entries}) == 5
    assert genreid.counts() == GalleryCounts(entries=5, persons=3)
    health = genreid.health()
    assert health["status"] == "ok" and health["index_size"] == 5 and health["code_dim"] == 32


def test_query_ranks_the_right_person_first(genreid: Client, entries: list[Entry], crop):
    result = genreid.query(crop(2, 9), k=3)
    assert isinstance(result, QueryResult) and len(result.matches) == 3
    best, second, third = result.matches
    assert best.entry_id == entries[3].entry_id and best.person_id == "p2" and best.distance < 1e-3
    assert best.within_match_threshold is True and best.rerank_distance is None and best.seen_at == SEEN[3]
    assert second.person_id == "p2" and third.within_match_threshold is False
    assert all(m.within_match_threshold == (m.distance <= MATCH_THRESHOLD) == m.same_person for m in result.matches)
    assert result.ranked_by == "distance"
    assert [m.distance for m in result.matches] == sorted(m.distance for m in result.matches)
    assert result.identity.shape == (32,) and result.identity.dtype == np.float32
    assert result.noise is None  # the client leaves the noise out unless asked

    with_noise = genreid.query(crop(2, 9), k=1, include_noise=True).noise
    assert with_noise is not None and with_noise.shape == (3, 64, 32) and with_noise.dtype == np.float32
    assert -1.0 <= with_noise.min() < with_noise.max() <= 1.0  # the tiny inv_noise is 2 * image - 1

    cross_camera = genreid.query(crop(1), k=10, exclude_cameras=["c1"])
    assert entries[0].entry_id not in [m.entry_id for m in cross_camera.matches]
    assert cross_camera.matches[0].entry_id == entries[1].entry_id
    only_c3 = genreid.query(crop(1), cameras=["c3"])
    assert [m.entry_id for m in only_c3.matches] == [entries[4].entry_id]
    window = genreid.query(crop(1), seen_after=T0 + timedelta(minutes=30), seen_before=T0 + timedelta(hours=4))
    assert [m.entry_id for m in window.matches] == [entries[1].entry_id, entries[3].entry_id]


def test_query_from_a_stored_entry_leaves_it_out(genreid: Client, entries: list[Entry]):
    result = genreid.query_entry(entries[2].entry_id, k=10)
    assert entries[2].entry_id not in [m.entry_id for m in result.matches] and len(result.matches) == 4
    assert result.matches[0].entry_id == entries[3].entry_id and result.noise is None
    assert [m.entry_id for m in genreid.query_entry(entries[2].entry_id, cameras=["c3"]).matches] == [
        entries[4].entry_id]


def test_batch_query_answers_each_crop_in_order(genreid: Client, entries: list[Entry], crop):
    results = genreid.query_batch([crop(3), crop(1, 5), crop(2)], k=2)
    assert [r.matches[0].entry_id for r in results] == [entries[4].entry_id, entries[1].entry_id,
                                                        entries[2].entry_id]
    assert all(len(r.matches) == 2 and r.noise is None and r.identity.shape == (32,) for r in results)
    single = genreid.query(crop(1, 5), k=2)
    np.testing.assert_allclose(results[1].identity, single.identity, atol=1e-6)
    filtered = genreid.query_batch([crop(1)], exclude_cameras=["c1"])
    assert entries[0].entry_id not in [m.entry_id for m in filtered[0].matches]


def test_a_re_ranked_answer_says_so_and_keeps_the_code_distance_verdict(start_genreid, reranking_models: Path,
                                                                         tmp_path: Path, crop):
    server = start_genreid("--models", str(reranking_models), "--data", str(tmp_path / "data"))
    with Client(server.url) as client:
        client.enrol([crop(p, v) for p in range(5) for v in range(3)], person_ids=[f"p{p}" for p in range(5)
                                                                                   for _ in range(3)])
        answers = [client.query(crop(1, 7), k=15, rerank=True), client.query_entry(1, k=15, rerank=True),
                   *client.query_batch([crop(2, 7), crop(3)], k=15, rerank=True)]
        plain = client.query(crop(1, 7), k=15, rerank=False)
    assert plain.ranked_by == "distance" and all(m.rerank_distance is None for m in plain.matches)
    for answer in answers:
        assert answer.ranked_by == "rerank_distance" and answer.matches[0].rerank_distance is not None
        assert {m.within_match_threshold for m in answer.matches} == {True, False}
        assert all(m.within_match_threshold == (m.distance <= MATCH_THRESHOLD) == m.same_person
                   for m in answer.matches)


def test_entries_pages_and_filters(genreid: Client, entries: list[Entry]):
    ids = [e.entry_id for e in entries]
    first = genreid.entries(limit=2)
    assert (first.total, first.offset, first.limit) == (5, 0, 2)
    assert [e.entry_id for e in first.entries] == ids[:2]
    last = genreid.entries(offset=4, limit=2)
    assert [e.entry_id for e in last.entries] == ids[4:] and last.total == 5
    assert genreid.entries().entries == tuple(entries)
    by_person = genreid.entries(person_id="p2")
    assert by_person.total == 2 and [e.entry_id for e in by_person.entries] == ids[2:4]
    by_camera = genreid.entries(cameras=["c1", "c3"])
    assert [e.entry_id for e in by_camera.entries] == [ids[0], ids[2], ids[4]]
    assert [e.entry_id for e in genreid.entries(exclude_cameras=["c1"]).entries] == [ids[1], ids[3], ids[4]]
    window = genreid.entries(seen_after=T0 + timedelta(minutes=30), seen_before=T0 + timedelta(hours=4))
    assert [e.entry_id for e in window.entries] == [ids[1], ids[3]]
    assert genreid.entry(ids[3]) == entries[3]
    crop = genreid.entry_crop(ids[3])
    assert crop[:4] == b"RIFF" and crop[8:12] == b"WEBP"


def test_relabel_merge_and_delete(genreid: Client, entries: list[Entry]):
    ids = [e.entry_id for e in entries]
    relabelled = genreid.relabel(ids[4], person_id="cam2/track.7")
    assert relabelled.person_id == "cam2/track.7" and relabelled.entry_id == ids[4]
    assert genreid.entry(ids[4]).person_id == "cam2/track.7"
    genreid.relabel(ids[1], person_id="..")  # a relative-path look-alike must reach the server as an id
    assert genreid.merge("cam2/track.7", into="p1") == [ids[4]]
    assert genreid.merge("..", into="p1") == [ids[1]]
    assert genreid.entries(person_id="p1").total == 3
    assert genreid.counts() == GalleryCounts(entries=5, persons=2)

    assert genreid.delete_entry(ids[0]) == [ids[0]]
    assert genreid.counts() == GalleryCounts(entries=4, persons=2)
    genreid.relabel(ids[2], person_id="a/b")
    assert genreid.delete_person("a/b") == [ids[2]]
    assert genreid.delete_person("p2") == [ids[3]]
    assert [e.entry_id for e in genreid.entries().entries] == [ids[1], ids[4]]
    with pytest.raises(GenreidError) as gone:
        genreid.delete_person("p2")
    assert gone.value.status == 404 and gone.value.message == "no gallery entries for person 'p2'"
    with pytest.raises(GenreidError) as into_itself:
        genreid.merge("p1", into="p1")
    assert into_itself.value.status == 422 and "into itself" in into_itself.value.message


def test_relabel_takes_a_form_or_json(server, entries: list[Entry]):
    """PATCH by raw HTTP (the fixture's client sends the admin key): JSON as before, a form like every other
    write, and a bad person_id refused either way with nothing changed."""
    http = server.client
    target = entries[4].entry_id
    by_form = http.patch(f"/gallery/entries/{target}", data={"person_id": "by form"})
    assert by_form.status_code == 200 and by_form.json()["person_id"] == "by form"
    by_multipart = http.patch(f"/gallery/entries/{target}", data={"person_id": "by multipart"},
                              files={"unused": ("x.txt", b"x")})
    assert by_multipart.status_code == 200 and by_multipart.json()["person_id"] == "by multipart"
    by_json = http.patch(f"/gallery/entries/{target}", json={"person_id": "by json"})
    assert by_json.status_code == 200 and by_json.json()["person_id"] == "by json"
    assert by_json.json() == {**by_form.json(), "person_id": "by json"}  # same answer, whichever body
    refused = {
        "form, empty": {"data": {"person_id": ""}},
        "form, missing": {"data": {"name": "x"}},
        "form, twice": {"content": b"person_id=a&person_id=b",
                        "headers": {"content-type": "application/x-www-form-urlencoded"}},
        "json, blank": {"json": {"person_id": "  "}},
        "json, missing": {"json": {}},
        "json, malformed": {"content": b"{", "headers": {"content-type": "application/json"}},
        "neither": {"content": b"person_id", "headers": {"content-type": "text/plain"}},
        "no body": {},
    }
    for case, kwargs in refused.items():
        response = http.patch(f"/gallery/entries/{target}", **kwargs)
        assert response.status_code == 422, (case, response.text)
        assert isinstance(response.json()["detail"], str) and response.json()["detail"], case
    assert "person_id" in http.patch(f"/gallery/entries/{target}", data={"person_id": ""}).json()["detail"]
    assert http.get(f"/gallery/entries/{target}").json()["person_id"] == "by json"
    assert http.patch("/gallery/entries/999999", data={"person_id": "x"}).status_code == 404
    schema = http.get("/openapi.json").json()["paths"]["/gallery/entries/{entry_id}"]["patch"]["requestBody"]
    assert set(schema["content"]) == {"application/json", "application/x-www-form-urlencoded",
                                      "multipart/form-data"}


def test_transfer_returns_a_png_from_a_crop_or_an_entry(genreid: Client, entries: list[Entry], crop, tmp_path):
    pose = tmp_path / "pose.png"
    pose.write_bytes(crop(3))
    png = genreid.transfer(identity=crop(1), pose=pose)
    image = Image.open(io.BytesIO(png))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and image.size == (32, 64)
    assert genreid.transfer(identity=entries[0].entry_id, pose=pose) == png  # the entry holds that crop's code
    assert genreid.transfer(identity=crop(2), pose=pose) != png
    assert Image.open(io.BytesIO(genreid.transfer(identity=crop(1), pose=pose, scale=3))).size == (96, 192)


def test_an_error_answer_carries_the_servers_message_and_request_id(genreid: Client, crop):
    with pytest.raises(GenreidError) as missing:
        genreid.entry(999999)
    error = missing.value
    assert error.status == 404 and error.message == "no gallery entry 999999"
    assert error.request_id is not None and re.fullmatch(r"[0-9a-f]{32}", error.request_id)
    assert "no gallery entry 999999" in str(error) and error.request_id in str(error)
    with pytest.raises(GenreidError) as other:
        genreid.relabel(999999, person_id="x")
    assert other.value.status == 404 and other.value.request_id not in (None, error.request_id)
    with pytest.raises(GenreidError) as not_an_image:
        genreid.enrol([crop(1), b"not an image"], person_ids=["a", "b"])
    assert not_an_image.value.status == 422 and "files[1]" in not_an_image.value.message
    with pytest.raises(GenreidError) as uneven:
        genreid.enrol([crop(1)], person_ids=["a", "b"])
    assert uneven.value.status == 422 and "1 files but 2 person_id fields" in uneven.value.message
    assert genreid.counts() == GalleryCounts(entries=0, persons=0)  # nothing of a refused request got in
    with pytest.raises(TypeError, match="pathlib.Path, bytes or a binary file"):
        genreid.query("q.png")  # type: ignore[arg-type]


def test_wrong_or_missing_keys_and_roles_are_refused(server, crop):
    for key in ("wrong", None):
        with Client(server.url, api_key=key) as stranger:
            assert stranger.health()["status"] == "ok"  # /health stays open
            with pytest.raises(GenreidError) as refused:
                stranger.counts()
            assert refused.value.status == 401 and "API key" in refused.value.message
            assert refused.value.request_id
    with Client(server.url, api_key=QUERY) as viewer:
        assert viewer.counts() == GalleryCounts(entries=0, persons=0)
        with pytest.raises(GenreidError) as forbidden:
            viewer.enrol([crop(1)], person_ids=["p1"])
        assert forbidden.value.status == 403
        assert forbidden.value.message == "the API key 'viewer' has the query role; this route needs the admin role"


def test_no_server_is_a_genreid_error_without_a_status():
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", timeout=5) as nowhere, pytest.raises(GenreidError) as unreachable:
        nowhere.counts()
    assert unreachable.value.status is None and unreachable.value.request_id is None
    assert f"no answer from http://127.0.0.1:{port} (GET /gallery)" in unreachable.value.message
    assert "ConnectError" in str(unreachable.value)
