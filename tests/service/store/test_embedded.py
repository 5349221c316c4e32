"""What the embedded backend adds to the contract: one process per directory, the GPU search-copy layout,
galleries from before the store interface, and the app serving what was acknowledged across a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient

from genreid.service.app import create_app
from genreid.service.store import EntryFilter, GalleryError, NewEntry
from genreid.service.store.embedded import DATABASE_FILE, EmbeddedStore

DIM = 8


def codes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def test_a_second_server_on_the_same_directory_is_refused(tmp_path: Path):
    first = EmbeddedStore(tmp_path, code_dim=DIM)
    try:
        with pytest.raises(GalleryError, match="in use"):
            EmbeddedStore(tmp_path, code_dim=DIM)
    finally:
        first.close()


def test_codes_of_another_size_are_refused(tmp_path: Path):
    store = EmbeddedStore(tmp_path, code_dim=DIM)
    store.add([NewEntry("a")], codes(1))
    store.close()
    with pytest.raises(GalleryError, match="another size"):
        EmbeddedStore(tmp_path, code_dim=DIM * 2)
    EmbeddedStore(tmp_path, code_dim=DIM).close()  # the refusal let the directory go


def test_a_file_that_is_not_a_database_is_refused_with_its_path(tmp_path: Path):
    (tmp_path / DATABASE_FILE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(GalleryError, match=f"{DATABASE_FILE}: not a usable gallery database"):
        EmbeddedStore(tmp_path, code_dim=DIM)


def test_a_separate_search_copy_follows_adds_and_removals(tmp_path: Path):
    """The GPU layout (a search-only copy that cannot remove ids), exercised with a CPU clone."""
    store = EmbeddedStore(tmp_path, code_dim=DIM, search_copy=faiss.clone_index)
    try:
        stored = codes(6)
        entries = store.add([NewEntry(p, camera="c1") for p in "aabbcc"], stored)
        assert store.index.device == "gpu"
        store.remove_person("b")
        (late,) = store.add([NewEntry("d", camera="c2")], codes(1, seed=5))
        found = {m.entry.entry_id for m in store.search(stored[0], 10)[0]}
        assert found == {entries[i].entry_id for i in (0, 1, 4, 5)} | {late.entry_id}
        assert [m.entry.entry_id for m in store.search(stored[0], 10, EntryFilter(cameras=frozenset({"c2"})))[0]] \
            == [late.entry_id]
    finally:
        store.close()


def test_a_gallery_from_before_the_store_interface_opens_and_takes_new_fields(tmp_path: Path):
    """The first release's schema: entries (entry_id, person_id, camera, code), nothing else."""
    with sqlite3.connect(tmp_path / DATABASE_FILE) as db:
        db.execute("CREATE TABLE entries (entry_id INTEGER PRIMARY KEY AUTOINCREMENT, person_id TEXT NOT NULL, "
                   "camera TEXT, code BLOB NOT NULL)")
        db.executemany("INSERT INTO entries (person_id, camera, code) VALUES (?, ?, ?)",
                       [("old", "c1", code.tobytes()) for code in codes(2)])
    store = EmbeddedStore(tmp_path, code_dim=DIM, model_id="model-a")
    try:
        assert [(e.person_id, e.camera, e.seen_at, e.has_crop) for e in store.list_entries().entries] == [
            ("old", "c1", None, False)] * 2
        store.add([NewEntry("new", track_id="t1", crop=b"webp")], codes(1, seed=3))
        assert store.search(codes(2)[1], 1)[0][0].entry.entry_id == 2
    finally:
        store.close()
    with pytest.raises(GalleryError, match="model-a"):  # the first write recorded the model
        EmbeddedStore(tmp_path, code_dim=DIM, model_id="model-b")


def test_filters_stay_exact_after_many_removals(tmp_path: Path):
    """Removals past the compaction point of the entry columns (service/store/columns.py)."""
    store = EmbeddedStore(tmp_path, code_dim=DIM)
    try:
        stored = codes(3000)
        entries = store.add([NewEntry(f"p{i % 50}", camera=f"c{i % 3}") for i in range(3000)], stored)
        store.remove_entries([e.entry_id for e in entries[:2500]])
        query = codes(1, seed=7)
        found = store.search(query, 20, EntryFilter(exclude_cameras=frozenset({"c0"})))[0]
        kept = [i for i in range(2500, 3000) if i % 3]
        unit = stored[kept] / np.linalg.norm(stored[kept], axis=1, keepdims=True)
        order = np.argsort(np.linalg.norm(unit - query / np.linalg.norm(query), axis=1))[:20]
        assert [m.entry.entry_id for m in found] == [entries[kept[j]].entry_id for j in order]
    finally:
        store.close()


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
        assert client.get(f"/gallery/entries/{best['entry_id']}/crop").status_code == 200


def test_each_search_limits_faiss_threads_in_the_thread_that_searches(tmp_path: Path):
    """OpenMP's thread count is per calling thread; requests search from worker threads, not the one that opened
    the store, and FAISS on every core spun against inference (/query 5 -> 8 ms)."""
    import threading

    store = EmbeddedStore(tmp_path, code_dim=DIM, search_threads=1)
    try:
        store.add([NewEntry("a")], codes(1))
        seen: list[int] = []

        def search() -> None:
            faiss.omp_set_num_threads(2)  # a worker thread's own default
            store.search(codes(1, seed=3), 1)
            seen.append(faiss.omp_get_max_threads())

        worker = threading.Thread(target=search)
        worker.start()
        worker.join()
        assert seen == [1]
    finally:
        store.close()
