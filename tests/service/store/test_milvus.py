"""What only the Milvus backend has: its index specification, a location that never shows credentials, a
connection that an idle spell does not break, what it adapts to per engine (paging, partial upserts), galleries
written with the earlier, nullable schema, and the repair and rebuild of kept neighbourhoods."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="needs the milvus extra (pip install -e '.[milvus]')")

from genreid.service.store import EntryFilter, GalleryError, NewEntry  # noqa: E402
from genreid.service.store.milvus import IndexSpec, MilvusStore, literal  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def test_index_spec_splits_build_and_search_parameters():
    spec = IndexSpec.parse("hnsw:M=16, efConstruction=200,ef=64")
    assert (spec.kind, spec.build, spec.search) == ("HNSW", {"M": 16, "efConstruction": 200}, {"ef": 64})
    assert IndexSpec.parse("FLAT") == IndexSpec()
    for bad in ("DISKANN", "HNSW:M=many", "IVF_FLAT:nlist"):
        with pytest.raises(ValueError):
            IndexSpec.parse(bad)


def test_literals_escape_what_would_end_or_bend_them():
    assert literal('a"b\\c\nd\te') == '"a\\"b\\\\c\\nd\\te"'


def test_the_location_shown_never_carries_credentials():
    with pytest.raises(GalleryError) as refused:
        MilvusStore("http://admin:s3cret@127.0.0.1:9", collection="g", code_dim=4, model_id=None, timeout=2)
    assert "s3cret" not in str(refused.value) and "admin" not in str(refused.value)
    assert "http://127.0.0.1:9 collection g" in str(refused.value)


def test_a_milvus_lite_file_in_a_new_directory_is_created(tmp_path):
    store = MilvusStore(str(tmp_path / "new" / "dirs" / "g.db"), collection="g", code_dim=4, model_id=None)
    try:
        assert store.counts() == (0, 0)
    finally:
        store.close()


IDLE_CLIENT = """
import sys, time
import numpy as np
from genreid.service.store import NewEntry
from genreid.service.store.milvus import MilvusStore
store = MilvusStore(sys.argv[1], collection="idle", code_dim=4, model_id=None)
[entry] = store.add([NewEntry(person_id="p")], np.ones((1, 4), np.float32))
time.sleep(40)  # three of pymilvus's 10 s keepalive periods, and then some
[[hit]] = store.search(np.ones((1, 4), np.float32), k=1)
assert hit.entry.entry_id == entry.entry_id
store.close()
"""


def test_an_idle_connection_to_a_milvus_lite_server_is_not_sent_away(start_milvus_lite_server):
    """pymilvus's default keepalive pinged idle channels until milvus-lite's gRPC server answered GOAWAY
    "too_many_pings" (about 30 s idle); a call or a store opening in that moment failed. gRPC logs the GOAWAY only
    at info verbosity, set before it starts: hence a process of its own."""
    engine = start_milvus_lite_server()
    done = subprocess.run([sys.executable, "-c", IDLE_CLIENT, engine.uri], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "GRPC_VERBOSITY": "info"}, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "too_many_pings" not in done.stderr


def test_engine_traits_follow_the_version():
    from genreid.service.store.milvus import EngineTraits

    assert EngineTraits.of("milvus_lite-3.2.2") == EngineTraits("milvus_lite-3.2.2", True, False, False)
    assert EngineTraits.of("v2.3.5-lite") == EngineTraits("v2.3.5-lite", False, True, True)  # the `milvus` wheel
    assert EngineTraits.of("v2.6.16") == EngineTraits("v2.6.16", True, True, True)
    assert EngineTraits.of("2.5.4") == EngineTraits("2.5.4", False, True, True)
    assert EngineTraits.of("something else").partial_upserts is False  # whole rows work on every engine


@pytest.fixture(params=["milvus-lite", "milvus"])
def engine_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(uri, collection): a milvus-lite file in this process, or a collection of this test's own on the session's
    Milvus (dropped after)."""
    if request.param == "milvus-lite":
        yield str(tmp_path / "g.db"), "g"
        return
    engine = request.getfixturevalue("milvus_engine_server")
    with engine.collections_dropped_after():
        yield engine.uri, f"m{abs(hash(str(tmp_path))):x}"


def test_listings_page_through_more_rows_than_one_query_returns(engine_uri, monkeypatch: pytest.MonkeyPatch):
    """Milvus refuses offset + limit over 16,384 and returns the smallest keys first; milvus-lite takes any offset
    and returns rows in no set order: both page to the end (here with pages of 7 rows), over flushed and growing
    segments, and a merge (whole rows on Milvus 2.3, partial upserts on milvus-lite) moves every row."""
    import genreid.service.store.milvus as milvus

    uri, collection = engine_uri
    store = MilvusStore(uri, collection=collection, code_dim=4, model_id=None)
    try:
        codes = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
        added = store.add([NewEntry(f"p{i % 3}", camera=f"c{i % 2}") for i in range(30)], codes[:30])
        store.flush()  # sealed segments and a growing one, read together
        added += store.add([NewEntry(f"p{i % 3}", camera=f"c{i % 2}") for i in range(30, 40)], codes[30:])
        monkeypatch.setattr(milvus, "PAGE", 7)
        page = store.list_entries(limit=100)
        assert [e.entry_id for e in page.entries] == sorted(e.entry_id for e in added) and page.total == 40
        assert store.list_entries(EntryFilter(cameras=frozenset({"c1"})), offset=5, limit=3).entries == [
            e for e in added if e.camera == "c1"][5:8]
        assert store.merge("p1", into="p2") == sorted(e.entry_id for e in added if e.person_id == "p1")
        assert store.counts() == (40, 2)
    finally:
        store.close()


def _old_schema_gallery(uri: str, dim: int) -> None:
    """A gallery as the store wrote it before it ran on Milvus 2.3: nullable camera, track_id, seen_at and crop
    (milvus-lite and Milvus 2.5+ only), absent values null."""
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri=uri, dedicated=True)
    try:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("entry_id", DataType.INT64, is_primary=True)
        schema.add_field("person_id", DataType.VARCHAR, max_length=1024)
        for name in ("camera", "track_id"):
            schema.add_field(name, DataType.VARCHAR, max_length=1024, nullable=True)
        schema.add_field("seen_at", DataType.INT64, nullable=True)
        schema.add_field("enrolled_at", DataType.INT64)
        schema.add_field("has_crop", DataType.BOOL)
        schema.add_field("crop", DataType.VARCHAR, max_length=65_535, nullable=True)
        schema.add_field("batch", DataType.INT64)
        schema.add_field("code", DataType.ARRAY, element_type=DataType.FLOAT, max_capacity=dim)
        schema.add_field("unit", DataType.FLOAT_VECTOR, dim=dim)
        params = client.prepare_index_params()
        params.add_index(field_name="unit", index_type="FLAT", metric_type="L2", params={})
        client.create_collection("g", schema=schema, index_params=params, consistency_level="Strong",
                                 properties={"genreid.model_id": "m"})
        for name in ("g_meta", "g_pending"):
            meta = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            meta.add_field("key", DataType.VARCHAR, is_primary=True, max_length=1040)
            meta.add_field("kind", DataType.VARCHAR, max_length=16)
            meta.add_field("value", DataType.INT64)
            meta.add_field("at", DataType.INT64)
            meta.add_field("v", DataType.FLOAT_VECTOR, dim=2)
            params = client.prepare_index_params()
            params.add_index(field_name="v", index_type="FLAT", metric_type="L2", params={})
            client.create_collection(name, schema=meta, index_params=params, consistency_level="Strong")
        seen = 1_796_112_000_000_000  # 2026-12-01T08:00Z
        rows = [{"entry_id": 1, "person_id": "a", "camera": None, "track_id": None, "seen_at": None,
                 "enrolled_at": seen, "has_crop": False, "crop": None, "batch": 1, "code": [1.0] * dim,
                 "unit": [0.5] * dim},
                {"entry_id": 2, "person_id": "b", "camera": "c1", "track_id": "t", "seen_at": seen,
                 "enrolled_at": seen, "has_crop": True, "crop": "AAEC", "batch": 1, "code": [2.0] * dim,
                 "unit": [0.5] * dim}]
        client.insert("g", rows)
        client.upsert("g_meta", [{"key": f"person:{p}", "kind": "person", "value": 0, "at": 0, "v": [0.0, 0.0]}
                                 for p in "ab"])
    finally:
        client.close()


def test_a_gallery_of_the_nullable_schema_still_opens(tmp_path: Path):
    """Null and the sentinels read alike, and filters keep their meaning over both kinds of rows."""
    uri = str(tmp_path / "old.db")
    _old_schema_gallery(uri, 4)
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)  # as a new process would find it
    store = MilvusStore(uri, collection="g", code_dim=4, model_id="m", neighbourhood_size=3)
    try:
        assert store.neighbourhood_size == 0  # made before neighbourhoods were kept: none until a rebuild
        [new] = store.add([NewEntry("c", camera=None)], np.ones((1, 4), np.float32))
        old_a, old_b = store.get([1, 2])
        assert (old_a.camera, old_a.track_id, old_a.seen_at, old_a.has_crop) == (None, None, None, False)
        assert (old_b.camera, old_b.track_id, old_b.seen_at.year, old_b.has_crop) == ("c1", "t", 2026, True)
        assert store.crop(1) is None and store.crop(2) == b"\x00\x01\x02"
        ids = lambda f: {m.entry.entry_id for m in store.search(np.ones(4, np.float32), 10, f)[0]}  # noqa: E731
        assert ids(EntryFilter(exclude_cameras=frozenset({"c1"}))) == {1, new.entry_id}
        assert ids(EntryFilter(cameras=frozenset({"c1"}))) == {2}
        assert ids(EntryFilter(seen_before=datetime(2027, 1, 1, tzinfo=timezone.utc))) == {2}
        assert store.relabel(1, person_id="z").person_id == "z" and store.counts() == (3, 3)
    finally:
        store.close()


def test_searches_leave_out_a_pending_batch_and_still_find_k(engine_uri):
    """A batch whose writer died before unveiling it (its pending marker stays) is invisible to every read; a search
    whose first answer held its rows is answered again without them, k matches all the same."""
    uri, collection = engine_uri
    store = MilvusStore(uri, collection=collection, code_dim=4, model_id=None)
    try:
        rng = np.random.default_rng(1)
        query = np.ones((1, 4), np.float32)
        visible = store.add([NewEntry(f"v{i}") for i in range(10)], rng.normal(size=(10, 4)).astype(np.float32))
        store._delete_meta = lambda keys, collection=None: None  # the writer dies before it deletes its marker
        hidden = store.add([NewEntry("h") for _ in range(3)], query + rng.normal(0, 1e-3, (3, 4)).astype(np.float32))
        del store._delete_meta
        [found] = store.search(query, 5)
        assert len(found) == 5 and not {m.entry.entry_id for m in found} & {e.entry_id for e in hidden}
        assert {m.entry.entry_id for m in found} <= {e.entry_id for e in visible}
        assert store.nearest_ids(query, 5) == [[(m.entry.entry_id, m.distance) for m in found]]
        assert store.counts()[0] == 10 and store.list_entries(limit=100).total == 10
        assert store.get([e.entry_id for e in hidden]) == []
    finally:
        store.close()


def test_reads_together_see_what_their_first_search_saw(engine_uri):
    """A reading_together block on Milvus takes one timestamp from the engine's oracle and every read in it carries
    that as its guarantee instead of asking for Strong (milvus-lite has no oracle: every read stays Strong). They
    see the entries another replica acknowledged before the block, and a pending batch stays hidden from the reads
    on other threads."""
    uri, collection = engine_uri
    on_milvus = uri.startswith("http")
    reader = MilvusStore(uri, collection=collection, code_dim=4, model_id=None, neighbourhood_size=3)
    writer = MilvusStore(uri, collection=collection, code_dim=4, model_id=None) if on_milvus else reader
    try:
        rng = np.random.default_rng(2)
        query = np.ones((1, 4), np.float32)
        added = writer.add([NewEntry(f"v{i}") for i in range(6)], query + rng.normal(0, 0.1, (6, 4)).astype(np.float32))
        writer._delete_meta = lambda keys, collection=None: None  # a batch whose writer died before unveiling it
        hidden = writer.add([NewEntry("h")], query)
        del writer._delete_meta
        ids = [e.entry_id for e in added]
        assert reader._level() == {"consistency_level": "Strong"}
        with reader.reading_together():
            carried = reader._level()
            [found] = reader.nearest_ids(query, 10)
            assert sorted(i for i, _ in found) == ids
            assert [e.entry_id for e in reader.get([*ids, hidden[0].entry_id])] == ids
            assert reader.known_unit_codes([*ids, hidden[0].entry_id]).keys() == set(ids)
            assert reader.neighbourhoods(ids, 3).keys() == set(ids)
        assert reader._level() == {"consistency_level": "Strong"}
        if on_milvus:
            assert carried["consistency_level"] == "Customized" and carried["guarantee_timestamp"] > 0
        else:
            assert carried == {"consistency_level": "Strong"}
    finally:
        reader.close()
        if writer is not reader:
            writer.close()


def as_searched(store: MilvusStore, ids: list[int], size: int) -> dict[int, list[int]]:
    """Each entry's `size` nearest others as the store's own search finds them."""
    rows = store.nearest_ids(store.codes(ids), size + 1)
    return {i: [j for j, _ in row if j != i][:size] for i, row in zip(ids, rows, strict=True)}


def test_neighbourhoods_a_dead_writer_left_unwritten_are_repaired_at_open(engine_uri, monkeypatch: pytest.MonkeyPatch):
    """A writer that dies once its entries are added or removed, before it writes their neighbourhoods, leaves repair
    markers; a store that opens (or a writer that sweeps) once they are stale settles them from fresh searches."""
    import genreid.service.store.milvus as milvus

    uri, collection = engine_uri
    store = MilvusStore(uri, collection=collection, code_dim=4, model_id=None, neighbourhood_size=3)
    try:
        codes = np.random.default_rng(2).normal(size=(40, 4)).astype(np.float32)
        ids = [e.entry_id for e in store.add([NewEntry("p")] * 30, codes[:30])]
        with monkeypatch.context() as dying:
            dying.setattr(store, "_upkeep", lambda *args, **kwargs: None)
            ids += [e.entry_id for e in store.add([NewEntry("p")] * 10, codes[30:])]
            assert store.remove_entries(ids[:5]) == ids[:5]
            ids = ids[5:]
        assert store.neighbourhoods(ids, 3) != as_searched(store, ids, 3)
    finally:
        store.close()
    monkeypatch.setattr(milvus, "STALE_SECONDS", 0.0)
    store = MilvusStore(uri, collection=collection, code_dim=4, model_id=None, neighbourhood_size=3)
    try:
        assert store.neighbourhoods(ids, 3) == as_searched(store, ids, 3)
        assert not store._query(store.kept, "entry_id < 0", ["entry_id"])
    finally:
        store.close()


def test_a_rebuild_to_another_size_replaces_every_kept_neighbourhood(engine_uri):
    uri, collection = engine_uri
    store = MilvusStore(uri, collection=collection, code_dim=4, model_id=None, neighbourhood_size=3)
    try:
        codes = np.random.default_rng(3).normal(size=(30, 4)).astype(np.float32)
        ids = [e.entry_id for e in store.add([NewEntry("p")] * 30, codes)]
        store.rebuild_neighbourhoods(5)
        assert store.neighbourhoods(ids, 5) == as_searched(store, ids, 5)
        ids += [e.entry_id for e in store.add([NewEntry("p")] * 3, codes[:3] + 0.01)]
        assert store.neighbourhoods(ids, 5) == as_searched(store, ids, 5)
        store.rebuild_neighbourhoods(0)
        assert store.neighbourhoods(ids, 1) is None and store._kept(ids) == {}
    finally:
        store.close()
