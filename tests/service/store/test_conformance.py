"""The gallery-store contract (service/store/base.py), run on every backend of conftest.BACKENDS."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from genreid.service.core.similarity import code_distances, unit_length
from genreid.service.store import Entry, EntryFilter, GalleryError, GalleryStore, NewEntry, UnknownEntries

DIM = 8
START = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
CAMERAS = ["c1", "c2", "c3", None]


def codes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def new_entries(n: int, seed: int = 0, person_count: int = 7) -> list[NewEntry]:
    """Varied metadata: some entries without camera, time, track or crop."""
    rng = np.random.default_rng(seed + 1000)
    out = []
    for i in range(n):
        seen = None if i % 5 == 4 else START + timedelta(minutes=int(rng.integers(0, 600)))
        crop = None if i % 3 == 2 else f"crop-{seed}-{i}".encode()
        out.append(NewEntry(f"p{int(rng.integers(0, person_count))}", CAMERAS[int(rng.integers(0, 4))], seen,
                            f"t{i}" if i % 2 else None, crop))
    return out


@pytest.fixture
def store(backend, tmp_path: Path) -> Iterator[GalleryStore]:
    opened = backend.open(tmp_path / "gallery", DIM, "model-a")
    yield opened
    opened.close()


def filled(store: GalleryStore, n: int = 60, seed: int = 0) -> tuple[list[Entry], np.ndarray]:
    stored = codes(n, seed)
    return store.add(new_entries(n, seed), stored), stored


def brute_force(entries: list[Entry], stored: np.ndarray, queries: np.ndarray, k: int,
                entry_filter: EntryFilter) -> list[list[tuple[int, float]]]:
    """The reference answer: every admitted entry's distance by genreid.service.core.similarity, sorted."""
    admitted = [i for i, entry in enumerate(entries) if entry_filter.admits(entry)]
    if not admitted:
        return [[] for _ in queries]
    dist = code_distances(queries, stored[admitted])
    return [[(entries[admitted[j]].entry_id, float(row[j])) for j in np.argsort(row, kind="stable")[:k]]
            for row in dist]


def test_add_returns_the_stored_entries_with_new_ids(store: GalleryStore):
    wanted = new_entries(6)
    entries = store.add(wanted, codes(6))
    ids = [e.entry_id for e in entries]
    assert len(set(ids)) == 6 and all(0 < i < 2**53 for i in ids)
    for entry, new in zip(entries, wanted, strict=True):
        assert (entry.person_id, entry.camera, entry.seen_at, entry.track_id, entry.has_crop) == (
            new.person_id, new.camera, new.seen_at, new.track_id, new.crop is not None)
    assert store.get(ids) == entries
    assert store.counts() == (6, len({e.person_id for e in wanted}))


def test_codes_come_back_as_enrolled_and_crops_as_stored(store: GalleryStore):
    wanted = new_entries(5)
    stored = codes(5) * 3.0  # not unit length: the code is the generator's condition, kept as it was
    entries = store.add(wanted, stored)
    ids = [e.entry_id for e in entries]
    np.testing.assert_array_equal(store.codes(ids[::-1]), stored[::-1])
    assert [store.crop(i) for i in ids] == [new.crop for new in wanted]


def test_seen_at_is_kept_in_utc_whatever_the_offset(store: GalleryStore):
    local = datetime(2026, 12, 2, 15, 30, tzinfo=timezone(timedelta(hours=2)))
    (entry,) = store.add([NewEntry("p", seen_at=local)], codes(1))
    assert entry.seen_at == local and entry.seen_at.utcoffset() == timedelta(0)
    assert store.get([entry.entry_id])[0].seen_at == datetime(2026, 12, 2, 13, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize("table", ["entries", "crops"])
def test_a_batch_that_fails_inside_the_engine_stores_nothing(backend, store: GalleryStore, table: str):
    before, stored = filled(store, 10)
    query = codes(1, seed=9)
    ranking = store.search(query, 10)
    with backend.fail_after(store, 2, table), pytest.raises(Exception, match="injected failure"):
        store.add(new_entries(5, seed=3), codes(5, seed=3))
    assert store.counts() == (10, len({e.person_id for e in before}))
    assert store.search(query, 10) == ranking
    assert store.list_entries(limit=100).entries == before
    after = store.add(new_entries(2, seed=4), codes(2, seed=4))  # the store still takes writes
    assert store.counts()[0] == 12 and all(e.entry_id not in {b.entry_id for b in before} for e in after)


@pytest.mark.parametrize("bad", [
    pytest.param((lambda e, c: ([*e[:2], NewEntry("  ")], c)), id="blank person id"),
    pytest.param((lambda e, c: ([*e[:2], NewEntry("p", seen_at=datetime(2026, 1, 1))], c)), id="naive seen_at"),
    pytest.param((lambda e, c: (e, np.where(np.arange(3)[:, None] == 2, np.nan, c))), id="nan code"),
    pytest.param((lambda e, c: (e, c[:, :-1])), id="wrong code size"),
    pytest.param((lambda e, c: ([*e[:2], NewEntry("p", camera="x" * 257)], c)), id="camera too long"),
])
def test_invalid_batches_are_refused_before_anything_is_written(store: GalleryStore, bad):
    filled(store, 4)
    entries, stored = bad(new_entries(3, seed=5), codes(3, seed=5))
    with pytest.raises(ValueError):
        store.add(entries, stored)
    assert store.counts()[0] == 4


def test_unknown_ids(store: GalleryStore):
    entries, _ = filled(store, 3)
    known = entries[0].entry_id
    unknown = max(e.entry_id for e in entries) + 100
    assert store.get([unknown, known]) == [entries[0]]
    with pytest.raises(UnknownEntries) as raised:
        store.codes([known, unknown, unknown + 1])
    assert raised.value.ids == [unknown, unknown + 1]
    assert store.crop(unknown) is None
    with pytest.raises(UnknownEntries):
        store.relabel(unknown, person_id="x")
    assert store.remove_entries([unknown, known]) == [known]
    assert store.remove_entries([known]) == []
    assert store.remove_person("nobody") == []
    assert store.merge("nobody", into="p1") == []
    assert store.counts()[0] == 2


FILTERS = {
    "none": EntryFilter(),
    "cameras": EntryFilter(cameras=frozenset({"c1", "c3"})),
    "one camera": EntryFilter(cameras=frozenset({"c2"})),
    "unknown camera": EntryFilter(cameras=frozenset({"nowhere"})),
    "exclude camera": EntryFilter(exclude_cameras=frozenset({"c1"})),
    "exclude most": EntryFilter(exclude_cameras=frozenset({"c1", "c2", "c3"})),
    "time window": EntryFilter(seen_after=START + timedelta(hours=2), seen_before=START + timedelta(hours=5)),
    "after": EntryFilter(seen_after=START + timedelta(hours=9)),
    "combined": EntryFilter(exclude_cameras=frozenset({"c2"}), seen_before=START + timedelta(hours=6)),
    "exclude ids": EntryFilter(exclude_ids=frozenset(range(1, 40))),
}


@pytest.mark.parametrize("name", FILTERS)
def test_search_is_exact_top_k_against_brute_force(store: GalleryStore, name: str):
    entries, stored = filled(store, 200)
    queries = codes(5, seed=11)
    entry_filter = FILTERS[name]
    for k in (1, 7, 500):
        found = store.search(queries, k, entry_filter)
        expected = brute_force(entries, stored, queries, k, entry_filter)
        assert [[m.entry.entry_id for m in row] for row in found] == [[i for i, _ in row] for row in expected]
        for row, want in zip(found, expected, strict=True):
            np.testing.assert_allclose([m.distance for m in row], [d for _, d in want], rtol=1e-5, atol=1e-6)
            assert all(m.entry == entries[[e.entry_id for e in entries].index(m.entry.entry_id)] for m in row)


@pytest.mark.parametrize("name", FILTERS)
def test_nearest_ids_are_the_search_without_its_entries(store: GalleryStore, name: str):
    filled(store, 120)
    queries = codes(4, seed=13)
    for k in (1, 9, 500):
        found = store.search(queries, k, FILTERS[name])
        assert store.nearest_ids(queries, k, FILTERS[name]) == [
            [(m.entry.entry_id, m.distance) for m in row] for row in found]
    with pytest.raises(ValueError):
        store.nearest_ids(queries, 0, FILTERS[name])


def test_batched_search_equals_one_query_at_a_time(store: GalleryStore):
    filled(store, 50)
    queries = codes(4, seed=12)
    entry_filter = FILTERS["exclude camera"]
    assert store.search(queries, 5, entry_filter) == [store.search(q, 5, entry_filter)[0] for q in queries]


def test_search_of_an_empty_gallery_finds_nothing(store: GalleryStore):
    assert store.search(codes(2), 5) == [[], []]
    assert store.search(codes(1), 5, FILTERS["cameras"]) == [[]]
    assert store.nearest_ids(codes(2), 5) == [[], []]
    assert store.nearest_ids(codes(1), 5, FILTERS["cameras"]) == [[]]


@pytest.mark.parametrize("name", [*FILTERS, "person"])
def test_listing_pages_through_the_admitted_entries_in_id_order(store: GalleryStore, name: str):
    entries, _ = filled(store, 45)
    entry_filter = EntryFilter(person_id="p3") if name == "person" else FILTERS[name]
    expected = [e for e in entries if entry_filter.admits(e)]
    pages = [store.list_entries(entry_filter, offset=offset, limit=10) for offset in range(0, 50, 10)]
    assert all(page.total == len(expected) for page in pages)
    assert [e for page in pages for e in page.entries] == sorted(expected, key=lambda e: e.entry_id)


def test_relabel_and_merge_change_labels_everywhere(store: GalleryStore):
    entries = store.add([NewEntry("a"), NewEntry("a"), NewEntry("b"), NewEntry("c")], codes(4))
    relabelled = store.relabel(entries[0].entry_id, person_id="b")
    assert relabelled.person_id == "b" and relabelled.entry_id == entries[0].entry_id
    assert store.counts() == (4, 3)
    assert store.merge("b", into="c") == sorted([entries[0].entry_id, entries[2].entry_id])
    assert store.counts() == (4, 2)
    assert {e.person_id for e in store.list_entries(EntryFilter(person_id="c")).entries} == {"c"}
    assert store.list_entries(EntryFilter(person_id="c")).total == 3
    assert store.search(codes(4)[0], 1)[0][0].entry.person_id == "c"
    with pytest.raises(ValueError):
        store.merge("c", into="c")
    with pytest.raises(ValueError):
        store.relabel(entries[1].entry_id, person_id=" ")


NASTY = ['a"b', "c\\d", "e'f", "g\nh", "ß 人 \t", 'x" or person_id != "', "\\"]


def test_labels_are_data_whatever_characters_they_hold(store: GalleryStore):
    """Quotes, backslashes, newlines and filter syntax in labels never change what a filter means."""
    entries = store.add([NewEntry(p, camera=p, track_id=p) for p in NASTY], codes(len(NASTY)))
    assert [(e.person_id, e.camera, e.track_id) for e in store.get([e.entry_id for e in entries])] == [
        (p, p, p) for p in NASTY]
    for entry, label in zip(entries, NASTY, strict=True):
        assert [e.entry_id for e in store.list_entries(EntryFilter(person_id=label)).entries] == [entry.entry_id]
        found = store.search(codes(len(NASTY))[0], 10, EntryFilter(cameras=frozenset({label})))[0]
        assert [m.entry.entry_id for m in found] == [entry.entry_id]
        excluded = store.search(codes(len(NASTY))[0], 10, EntryFilter(exclude_cameras=frozenset({label})))[0]
        assert entry.entry_id not in {m.entry.entry_id for m in excluded} and len(excluded) == len(NASTY) - 1
    assert store.merge(NASTY[0], into=NASTY[1]) == [entries[0].entry_id]
    assert store.remove_person(NASTY[1]) == sorted([entries[0].entry_id, entries[1].entry_id])
    assert store.counts() == (len(NASTY) - 2, len(NASTY) - 2)


def test_removed_entries_and_their_crops_are_gone_from_every_read(store: GalleryStore):
    entries, stored = filled(store, 12)
    victim = next(e for e in entries if e.has_crop)
    person = entries[1].person_id
    removed = store.remove_entries([victim.entry_id]) + store.remove_person(person)
    gone = {victim.entry_id} | {e.entry_id for e in entries if e.person_id == person}
    assert set(removed) == gone
    left = [e for e in entries if e.entry_id not in gone]
    assert store.counts() == (len(left), len({e.person_id for e in left}))
    assert store.get(sorted(gone)) == [] and store.crop(victim.entry_id) is None
    with pytest.raises(UnknownEntries):
        store.codes([victim.entry_id])
    found = {m.entry.entry_id for row in store.search(stored, 100) for m in row}
    assert found == {e.entry_id for e in left}
    assert store.list_entries(limit=100).entries == left
    unit = store.known_unit_codes([e.entry_id for e in entries])  # re-ranking's read: the removed left out
    assert list(unit) == [e.entry_id for e in left]
    np.testing.assert_allclose(np.stack(list(unit.values())), unit_length(stored[[e in left for e in entries]]),
                               atol=1e-6)


def test_retention_removes_what_was_enrolled_before_the_cutoff(backend, tmp_path: Path):
    now = [START]
    store = backend.open(tmp_path / "gallery", DIM, "model-a")
    store.clock = lambda: now[0]
    try:
        old = store.add(new_entries(4), codes(4))
        now[0] = START + timedelta(days=10)
        young = store.add(new_entries(3, seed=1), codes(3, seed=1))
        assert {e.enrolled_at for e in store.get([e.entry_id for e in old + young])} == {START, now[0]}
        assert store.remove_enrolled_before(START + timedelta(days=5)) == [e.entry_id for e in old]
        assert [e.entry_id for e in store.list_entries().entries] == [e.entry_id for e in young]
        assert store.crop(old[0].entry_id) is None and store.remove_enrolled_before(START) == []
        assert store.counts() == (3, len({e.person_id for e in young}))
    finally:
        store.close()


def test_a_gallery_refuses_another_models_codes(backend, tmp_path: Path):
    location = tmp_path / "gallery"
    first = backend.open(location, DIM, "model-a")
    first.add(new_entries(2), codes(2))
    first.close()
    with pytest.raises(GalleryError, match="model-a.*model-b"):
        backend.open(location, DIM, "model-b")
    with pytest.raises(GalleryError, match="model-a.*unidentified"):
        backend.open(location, DIM, None)
    again = backend.open(location, DIM, "model-a")
    assert again.counts()[0] == 2
    again.close()


def test_describe_names_the_backend(backend, store: GalleryStore):
    assert store.describe()["backend"] == backend.name


def _in_new_process(backend, location: Path, action: str) -> dict:
    """Open the store in a fresh interpreter, run `action` (source using `store`, setting `result`), close."""
    script = "\n".join([
        "import json, sys", "from pathlib import Path",
        f"location, code_dim, model_id = Path({str(location)!r}), {DIM}, 'model-a'",
        backend.open_source, textwrap.dedent(action), "store.close()", "print(json.dumps(result))",
    ])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


DUMP = """
import numpy as np
from genreid.service.store import EntryFilter
rng = np.random.default_rng(11)
queries = rng.normal(size=(3, code_dim)).astype(np.float32)
page = store.list_entries(limit=1000)
ids = [e.entry_id for e in page.entries]
result = {
    "entries": [[e.entry_id, e.person_id, e.camera, e.seen_at and e.seen_at.isoformat(), e.track_id, e.has_crop]
                for e in page.entries],
    "codes": store.codes(ids).tolist(),
    "crops": [(store.crop(i) or b"").hex() for i in ids],
    "search": [[[m.entry.entry_id, m.distance] for m in row]
               for row in store.search(queries, 5, EntryFilter(exclude_cameras=frozenset({"c1"})))],
}
"""


def _dump(store: GalleryStore) -> dict:
    scope = {"store": store, "code_dim": DIM}
    exec(DUMP, scope)  # the same reads, in this process
    return json.loads(json.dumps(scope["result"]))


def test_what_one_process_wrote_another_reads_after_a_restart(backend, tmp_path: Path):
    location = tmp_path / "gallery"
    written = _in_new_process(backend, location, """
        import numpy as np
        from datetime import datetime, timezone
        from genreid.service.store import NewEntry
        rng = np.random.default_rng(3)
        cams = ["c1", "c2", None]
        new = [NewEntry(f"p{i % 4}", cams[i % 3], datetime(2026, 12, 1, i, tzinfo=timezone.utc) if i % 2 else None,
                        f"t{i}", bytes([i]) * 10 if i % 3 else None) for i in range(20)]
        added = store.add(new, rng.normal(size=(20, code_dim)).astype(np.float32))
        store.remove_entries([added[5].entry_id])
        store.relabel(added[6].entry_id, person_id="renamed")
        result = {}
    """)
    assert written == {}
    reopened = backend.open(location, DIM, "model-a")
    try:
        here = _dump(reopened)
        assert len(here["entries"]) == 19 and ["renamed"] == [e[1] for e in here["entries"] if e[1] == "renamed"]
        reopened.add(new_entries(3, seed=8), codes(3, seed=8))
        here = _dump(reopened)
    finally:
        reopened.close()
    assert _in_new_process(backend, location, DUMP) == here
