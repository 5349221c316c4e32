"""Kept neighbourhoods (service/store/neighbourhoods.py), on every backend of conftest.BACKENDS: after any sequence
of writes each entry's kept neighbourhood is what a fresh search finds, and re-ranking from them answers exactly
as re-ranking that searches."""

from __future__ import annotations

from contextlib import suppress
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from genreid.service.core.reranking import RerankParams, rerank_search
from genreid.service.core.similarity import code_distances
from genreid.service.store import EntryFilter, GalleryStore, NewEntry

DIM = 16
SIZE = 7  # kept per entry: RerankParams(k1=6, k2=3).neighbours_kept
PARAMS = RerankParams(k1=6, k2=3, lambda_=0.3, candidates=12)
START = datetime(2026, 12, 1, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    """Codes in a few tight groups, like crops of a few people, so neighbourhoods overlap and change."""
    centres = rng.normal(size=(6, DIM))
    return (centres[rng.integers(0, 6, n)] + 0.5 * rng.normal(size=(n, DIM))).astype(np.float32)


def entries(n: int, rng: np.random.Generator) -> list[NewEntry]:
    return [NewEntry(f"p{int(rng.integers(0, 5))}", f"c{int(rng.integers(1, 4))}") for _ in range(n)]


def expected(store: GalleryStore, ids: list[int], codes: dict[int, np.ndarray]) -> dict[int, list[int]]:
    """Each entry's SIZE nearest others by brute force over the codes held (equal distances by id)."""
    held = np.stack([codes[i] for i in ids])
    distances = code_distances(held, held)
    np.fill_diagonal(distances, np.inf)
    return {entry_id: [ids[j] for j in np.lexsort((ids, row))[:SIZE] if np.isfinite(row[j])]
            for entry_id, row in zip(ids, distances, strict=True)}


def assert_kept_as_searched(store: GalleryStore, codes: dict[int, np.ndarray]) -> None:
    ids = sorted(codes)
    assert store.neighbourhoods(ids, SIZE) == expected(store, ids, codes)


@pytest.fixture
def kept(backend, tmp_path: Path):
    clock = Clock()
    opened = backend.open(tmp_path / "gallery", DIM, "model-a", neighbourhood_size=SIZE)
    opened.clock = clock
    yield opened, clock
    opened.close()


def test_kept_neighbourhoods_follow_every_write(kept, monkeypatch: pytest.MonkeyPatch):
    """Milvus updates an added batch in chunks (here of 16, so the adds of 40 and 25 span several)."""
    with suppress(ImportError):
        import genreid.service.store.milvus as milvus

        monkeypatch.setattr(milvus, "BATCH", 16)
    store, clock = kept
    rng = np.random.default_rng(3)
    codes: dict[int, np.ndarray] = {}

    def add(n: int) -> None:
        batch = clustered(n, rng)
        for entry, code in zip(store.add(entries(n, rng), batch), batch, strict=True):
            codes[entry.entry_id] = code

    add(1)  # alone: an empty neighbourhood
    assert_kept_as_searched(store, codes)
    add(5)  # fewer than SIZE others: everyone is everyone's neighbour
    assert_kept_as_searched(store, codes)
    for n in (40, 1, 25):
        clock.now += timedelta(minutes=1)
        add(n)
        assert_kept_as_searched(store, codes)
    removed = store.remove_entries(list(rng.choice(sorted(codes), 12, replace=False)))
    for entry_id in removed:
        del codes[entry_id]
    assert_kept_as_searched(store, codes)
    for entry_id in store.remove_person("p2"):
        del codes[entry_id]
    assert_kept_as_searched(store, codes)
    for entry_id in store.remove_enrolled_before(START + timedelta(seconds=30)):
        del codes[entry_id]
    assert_kept_as_searched(store, codes)
    before = store.neighbourhoods(sorted(codes), SIZE)
    some = sorted(codes)[0]
    store.relabel(some, person_id="renamed")
    store.merge("p1", into="p3")
    assert store.neighbourhoods(sorted(codes), SIZE) == before  # labels are not codes: nothing moves


def test_reranking_from_kept_neighbourhoods_answers_as_reranking_that_searches(backend, tmp_path: Path):
    rng = np.random.default_rng(5)
    gallery = clustered(120, rng)
    labels = entries(120, rng)
    queries = clustered(6, rng)
    with_kept = backend.open(tmp_path / "kept", DIM, None, neighbourhood_size=SIZE)
    searching = backend.open(tmp_path / "searching", DIM, None)
    try:
        first = with_kept.add(labels, gallery)
        second = searching.add(labels, gallery)
        same = {a.entry_id: b.entry_id for a, b in zip(first, second, strict=True)}
        assert with_kept.neighbourhoods([first[0].entry_id], PARAMS.neighbours_kept) is not None
        assert searching.neighbourhoods([second[0].entry_id], PARAMS.neighbours_kept) is None
        filters = [EntryFilter(), EntryFilter(exclude_ids=frozenset({first[0].entry_id})),
                   EntryFilter(cameras=frozenset({"c1", "c2"}))]
        for entry_filter in filters:
            other = EntryFilter(cameras=entry_filter.cameras,
                                exclude_ids=frozenset(same[i] for i in entry_filter.exclude_ids))
            for a, b in zip(rerank_search(with_kept, queries, 30, entry_filter, params=PARAMS),
                            rerank_search(searching, queries, 30, other, params=PARAMS), strict=True):
                assert [same[m.entry.entry_id] for m in a] == [m.entry.entry_id for m in b]
                assert [m.rerank_distance for m in a] == pytest.approx([m.rerank_distance for m in b], abs=1e-9)
    finally:
        with_kept.close()
        searching.close()


def test_a_gallery_keeps_the_size_it_recorded_and_rebuilds_to_another(backend, tmp_path: Path):
    rng = np.random.default_rng(7)
    batch = clustered(50, rng)
    store = backend.open(tmp_path / "gallery", DIM, None)  # made without kept neighbourhoods
    ids = [entry.entry_id for entry in store.add(entries(50, rng), batch)]
    codes = dict(zip(ids, batch, strict=True))
    store.close()
    store = backend.open(tmp_path / "gallery", DIM, None, neighbourhood_size=SIZE)
    try:
        assert store.neighbourhood_size == 0  # it recorded none: re-ranking searches until a rebuild
        assert store.neighbourhoods(ids, SIZE) is None
        done: list[int] = []
        store.rebuild_neighbourhoods(SIZE, done.append)
        assert sum(done) == len(ids)
        assert_kept_as_searched(store, codes)
    finally:
        store.close()
    store = backend.open(tmp_path / "gallery", DIM, None, neighbourhood_size=SIZE + 3)
    try:
        assert store.neighbourhood_size == SIZE  # what it recorded, not what this opener wanted
        assert store.neighbourhoods(ids, SIZE + 3) is None
        more = clustered(10, rng)
        codes |= dict(zip([e.entry_id for e in store.add(entries(10, rng), more)], more, strict=True))
        assert_kept_as_searched(store, codes)
    finally:
        store.close()


def test_a_write_that_fails_in_the_engine_leaves_the_neighbourhoods_as_they_were(backend, kept):
    store, _ = kept
    rng = np.random.default_rng(9)
    batch = clustered(30, rng)
    codes = dict(zip([e.entry_id for e in store.add(entries(30, rng), batch)], batch, strict=True))
    before = store.neighbourhoods(sorted(codes), SIZE)
    with backend.fail_after(store, 4, "entries"), pytest.raises(Exception, match="injected failure"):
        store.add(entries(10, rng), clustered(10, rng))
    assert store.neighbourhoods(sorted(codes), SIZE) == before
    assert_kept_as_searched(store, codes)
