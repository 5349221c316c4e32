"""The gallery store on its own and across restarts: SQLite is the truth, the FAISS mirror follows it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.gallery import DATABASE_FILE, Gallery, GalleryError

DIM = 8


def codes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@pytest.fixture
def store(tmp_path: Path):
    gallery = Gallery(tmp_path, DIM)
    yield gallery
    gallery.close()


def test_search_returns_distances_between_unit_codes_best_first(store: Gallery):
    stored = codes(5) * np.array([[0.5], [1.0], [2.0], [4.0], [8.0]], np.float32)
    entries = store.add(["a", "b", "c", "d", "e"], [None] * 5, stored)
    query = 3.0 * stored[2] + 0.1
    matches = store.search(query, 5)
    unit = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    expected = np.linalg.norm(unit - query / np.linalg.norm(query), axis=1)
    assert [m.entry.entry_id for m in matches] == [entries[i].entry_id for i in np.argsort(expected)]
    np.testing.assert_allclose([m.distance for m in matches], np.sort(expected), rtol=1e-5)


def test_restart_restores_entries_codes_and_labels(tmp_path: Path):
    first = Gallery(tmp_path, DIM)
    entries = first.add(["a", "a", "b"], ["c1", None, "c2"], codes(3))
    first.remove_entry(entries[1].entry_id)
    first.close()
    second = Gallery(tmp_path, DIM)
    try:
        assert second.counts() == (2, 2)
        match = second.search(codes(3)[2], 1)[0]
        assert match.entry == entries[2] and match.distance == pytest.approx(0.0, abs=1e-5)
    finally:
        second.close()


def test_a_failed_transaction_stores_and_mirrors_nothing(tmp_path: Path):
    Gallery(tmp_path, DIM).close()
    with sqlite3.connect(tmp_path / DATABASE_FILE) as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON entries WHEN NEW.person_id = 'refused' "
                   "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    gallery = Gallery(tmp_path, DIM)
    try:
        gallery.add(["kept"], [None], codes(1))
        with pytest.raises(sqlite3.IntegrityError):
            gallery.add(["fine", "refused"], [None, None], codes(2, seed=1))
        assert gallery.counts() == (1, 1)
        assert [m.entry.person_id for m in gallery.search(codes(2, seed=1)[0], 10)] == ["kept"]
    finally:
        gallery.close()
    with sqlite3.connect(tmp_path / DATABASE_FILE) as db:
        assert db.execute("SELECT person_id FROM entries").fetchall() == [("kept",)]


def test_a_separate_search_copy_follows_adds_and_removals(tmp_path: Path):
    """The GPU layout (a search-only copy that cannot remove ids), exercised with a CPU clone."""
    gallery = Gallery(tmp_path, DIM, search_copy=faiss.clone_index)
    try:
        stored = codes(6)
        entries = gallery.add(list("aabbcc"), [None] * 6, stored)
        assert gallery.index._searcher is not gallery.index.master
        gallery.remove_person("b")
        gallery.add(["d"], [None], codes(1, seed=5))
        found = {m.entry.entry_id for m in gallery.search(stored[0], 10)}
        assert found == {entries[i].entry_id for i in (0, 1, 4, 5)} | {entries[-1].entry_id + 1}
        assert gallery.search(stored[2], 1)[0].entry.person_id != "b"
    finally:
        gallery.close()


def test_a_second_server_on_the_same_directory_is_refused(store: Gallery, tmp_path: Path):
    with pytest.raises(GalleryError, match="in use"):
        Gallery(tmp_path, DIM)


def test_codes_of_another_model_are_refused(tmp_path: Path):
    gallery = Gallery(tmp_path, DIM)
    gallery.add(["a"], [None], codes(1))
    gallery.close()
    with pytest.raises(GalleryError, match="another size"):
        Gallery(tmp_path, DIM * 2)


def test_app_restart_serves_what_was_acknowledged(make_settings, enrol, crop):
    settings = make_settings()
    with TestClient(create_app(settings)) as client:
        entries = enrol(client, [(1, 0), (2, 0), (2, 3)], cameras=["c1", "c2", "c3"])
        client.delete(f"/gallery/entries/{entries[0]['entry_id']}")
    with TestClient(create_app(settings)) as client:
        assert client.get("/gallery").json() == {"entries": 2, "persons": 1}
        best = client.post("/query", files={"file": ("q.png", crop(2, 3))}).json()["matches"][0]
        assert best["entry_id"] == entries[2]["entry_id"] and best["camera"] == "c3"
        assert best["distance"] < 1e-3
