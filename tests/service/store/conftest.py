"""The gallery backends the conformance suite runs on: the embedded store, milvus-lite in the test's process, a
`milvus-lite server` process and Milvus itself (tests/conftest.py starts the engines). A new backend adds one
`Backend` to BACKENDS: how to open it (here and, as source, in a fresh process) and how to make its engine fail in
the middle of a write."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from genreid.service.store import GalleryStore
from genreid.service.store.embedded import EmbeddedStore


@dataclass(frozen=True)
class Backend:
    name: str
    # (location, code_dim, model_id, neighbourhood_size=0) -> an open store; the location is a fresh temporary
    # directory per test
    open: Callable[..., GalleryStore]
    # Python source that binds `store` from `location`, `code_dim` and `model_id`, for a separate process
    open_source: str
    # makes the engine itself fail once `rows` more rows of a write have gone in (`table`: entries or crops)
    fail_after: Callable[[GalleryStore, int, str], AbstractContextManager[None]]


@contextmanager
def _sqlite_fails_after(store: GalleryStore, rows: int, table: str) -> Iterator[None]:
    """A temporary trigger: SQLite itself aborts the statement that inserts row `rows` + 1 of this write."""
    assert isinstance(store, EmbeddedStore)
    db: sqlite3.Connection = store._db
    before = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    db.execute(f"CREATE TEMP TRIGGER inject_failure AFTER INSERT ON {table} "
               f"WHEN (SELECT COUNT(*) FROM {table}) > {before + rows} "
               "BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
    try:
        yield
    finally:
        db.execute("DROP TRIGGER inject_failure")


@contextmanager
def _engine_fails_after(store: GalleryStore, rows: int, table: str) -> Iterator[None]:
    """The engine accepts `rows` more rows of this write, then fails (a crop is a field of its row in Milvus, so
    `table` makes no difference)."""
    from genreid.service.store.milvus import MilvusStore

    assert isinstance(store, MilvusStore)
    insert = store._insert_rows
    budget = [rows]

    def failing(chunk: list[dict]) -> None:
        accepted = chunk[: budget[0]]
        if accepted:
            insert(accepted)
        budget[0] -= len(accepted)
        if len(accepted) < len(chunk):
            raise RuntimeError("injected failure")

    store._insert_rows = failing  # type: ignore[method-assign]
    try:
        yield
    finally:
        del store._insert_rows


def _collection(location: Path) -> str:
    """One collection per test location on the shared engine, the same again when the test reopens it."""
    return "t" + hashlib.sha1(str(location).encode()).hexdigest()[:16]


def _embedded(request: pytest.FixtureRequest) -> Backend:
    return Backend(
        name="embedded",
        open=lambda location, code_dim, model_id, neighbourhood_size=0: EmbeddedStore(
            location, code_dim=code_dim, model_id=model_id, neighbourhood_size=neighbourhood_size),
        open_source="from genreid.service.store.embedded import EmbeddedStore\n"
                    "store = EmbeddedStore(location, code_dim=code_dim, model_id=model_id)",
        fail_after=_sqlite_fails_after,
    )


def _milvus_lite(request: pytest.FixtureRequest) -> Backend:
    """milvus-lite in the test's own process, on a .db path (one process per data directory)."""
    pytest.importorskip("pymilvus", reason="needs the milvus extra (pip install -e '.[milvus]')")
    from genreid.service.store.milvus import MilvusStore

    return Backend(
        name="milvus",
        open=lambda location, code_dim, model_id, neighbourhood_size=0: MilvusStore(
            f"{location}.db", collection="gallery", code_dim=code_dim, model_id=model_id,
            neighbourhood_size=neighbourhood_size),
        open_source="from genreid.service.store.milvus import MilvusStore\n"
                    "store = MilvusStore(f'{location}.db', collection='gallery', code_dim=code_dim, "
                    "model_id=model_id)",
        fail_after=_engine_fails_after,
    )


def _on_server(server) -> Backend:
    """A store on an engine process on 127.0.0.1 that every client, in any process, talks to over gRPC."""
    from genreid.service.store.milvus import MilvusStore

    return Backend(
        name="milvus",
        open=lambda location, code_dim, model_id, neighbourhood_size=0: MilvusStore(
            server.uri, collection=_collection(location), code_dim=code_dim, model_id=model_id,
            neighbourhood_size=neighbourhood_size),
        open_source="from genreid.service.store.milvus import MilvusStore\n"
                    f"store = MilvusStore({server.uri!r}, collection='t' + __import__('hashlib').sha1("
                    "str(location).encode()).hexdigest()[:16], code_dim=code_dim, model_id=model_id)",
        fail_after=_engine_fails_after,
    )


def _milvus_server(request: pytest.FixtureRequest) -> Backend:
    """A `milvus-lite server` process."""
    return _on_server(request.getfixturevalue("milvus_server"))


def _milvus_engine(request: pytest.FixtureRequest) -> Backend:
    """Milvus itself (standalone 2.3.5), one engine for the session; the collections a test made are dropped after
    it, so the engine does not carry hundreds of loaded collections (each consumes its time ticks)."""
    server = request.getfixturevalue("milvus_engine_server")
    dropped = ExitStack()
    dropped.enter_context(server.collections_dropped_after())
    request.addfinalizer(dropped.close)
    return _on_server(server)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Backend]] = {
    "embedded": _embedded, "milvus-lite": _milvus_lite, "milvus-server": _milvus_server,
    "milvus-engine": _milvus_engine,
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param](request)
