"""The gallery backends the conformance suite runs on. A new backend adds one `Backend` to BACKENDS: how to open
it (here and, as source, in a fresh process) and how to make its engine fail in the middle of a write."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.store import GalleryStore
from service.store.embedded import EmbeddedStore


@dataclass(frozen=True)
class Backend:
    name: str
    # (location, code_dim, model_id) -> an open store; the location is a fresh temporary directory per test
    open: Callable[[Path, int, str | None], GalleryStore]
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


BACKENDS = [
    Backend(
        name="embedded",
        open=lambda location, code_dim, model_id: EmbeddedStore(location, code_dim=code_dim, model_id=model_id),
        open_source="from service.store.embedded import EmbeddedStore\n"
                    "store = EmbeddedStore(location, code_dim=code_dim, model_id=model_id)",
        fail_after=_sqlite_fails_after,
    ),
]


@pytest.fixture(params=BACKENDS, ids=lambda backend: backend.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param
