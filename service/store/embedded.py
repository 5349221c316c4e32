"""The default store, embedded in the server: SQLite is the source of truth, FAISS and numpy columns mirror it.

Every mutation commits to SQLite (WAL) before touching the mirrors, all under one lock that reads also take,
so an acknowledged write survives kill -9 and no reader sees half of one. Crops live in their own table, so the
start-up scan reads codes and filter columns only. One process per gallery directory (a file lock): a second
server would serve a stale mirror of the first one's writes; replicas share a Milvus gallery instead.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np

from genreid.service.core.similarity import unit_length
from genreid.service.store.base import (
    NO_FILTER,
    Entry,
    EntryFilter,
    EntryPage,
    GalleryError,
    GalleryStore,
    Neighbourhood,
    NewEntry,
    StorageFull,
    StoreUnavailable,
    UnknownEntries,
    check_code_space,
    from_micros,
    to_micros,
    utc,
)
from genreid.service.store.columns import EntryColumns
from genreid.service.store.faiss_index import SearchCopy, VectorIndex
from genreid.service.store.neighbourhoods import rebuild, updates_after_insert, updates_before_removal

log = logging.getLogger(__name__)
T = TypeVar("T")

DATABASE_FILE = "gallery.sqlite3"
LOCK_FILE = "gallery.lock"
SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
    person_id TEXT NOT NULL,
    camera TEXT,
    code BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS crops (entry_id INTEGER PRIMARY KEY, image BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entries_by_person ON entries (person_id);
CREATE TABLE IF NOT EXISTS neighbourhoods (
    entry_id INTEGER PRIMARY KEY,
    radius REAL NOT NULL,
    ids BLOB NOT NULL,
    distances BLOB NOT NULL
);
"""
# Columns added after the first release, so galleries made before them open unchanged.
ADDED_COLUMNS = {"seen_at": "INTEGER", "track_id": "TEXT", "enrolled_at": "INTEGER"}
ENTRY_SELECT = ("SELECT e.entry_id, e.person_id, e.camera, e.seen_at, e.track_id, c.entry_id IS NOT NULL, "
                "e.enrolled_at FROM entries e LEFT JOIN crops c ON c.entry_id = e.entry_id")
CHUNK = 500  # ids per `IN (...)`: far below SQLite's limit on bound parameters
PADDED_EXCLUSIONS = 256  # stored ids a search leaves out by searching as many more; past that, by an id filter


def entry_of(row: tuple) -> Entry:
    entry_id, person_id, camera, seen_at, track_id, has_crop, enrolled_at = row
    return Entry(entry_id, person_id, camera, from_micros(seen_at), track_id, bool(has_crop),
                 from_micros(enrolled_at))


def id_chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield [int(i) for i in ids[start : start + CHUNK]]


def placeholders(n: int) -> str:
    return ", ".join("?" * n)


def _where(entry_filter: EntryFilter) -> tuple[str, list[Any]]:
    """The filter as SQL over `entries e`, with the semantics of EntryFilter.admits."""
    clauses, params = [], []
    if entry_filter.cameras is not None:
        clauses.append(f"e.camera IN ({placeholders(len(entry_filter.cameras))})")
        params += sorted(entry_filter.cameras)
    if entry_filter.exclude_cameras:
        clauses.append(f"(e.camera IS NULL OR e.camera NOT IN ({placeholders(len(entry_filter.exclude_cameras))}))")
        params += sorted(entry_filter.exclude_cameras)
    if entry_filter.seen_after is not None:
        clauses.append("e.seen_at >= ?")
        params.append(to_micros(entry_filter.seen_after))
    if entry_filter.seen_before is not None:
        clauses.append("e.seen_at <= ?")
        params.append(to_micros(entry_filter.seen_before))
    if entry_filter.person_id is not None:
        clauses.append("e.person_id = ?")
        params.append(entry_filter.person_id)
    if entry_filter.exclude_ids:
        clauses.append(f"e.entry_id NOT IN ({placeholders(len(entry_filter.exclude_ids))})")
        params += sorted(entry_filter.exclude_ids)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class EmbeddedStore(GalleryStore):
    """SQLite + FAISS in one directory."""

    backend = "embedded"

    def __init__(self, data_dir: str | Path, *, code_dim: int, model_id: str | None = None,
                 search_copy: SearchCopy | None = None, search_threads: int = 1, power_safe: bool = False,
                 neighbourhood_size: int = 0, clock: Callable[[], datetime] | None = None):
        """`power_safe` fsyncs every commit (survives power loss); without it a commit in WAL mode still survives
        kill -9 of the server, at a fraction of the cost per write. `search_threads`: FAISS's OpenMP threads
        (1 keeps them from spinning against inference threads). `neighbourhood_size`: how many nearest others a
        new gallery keeps per entry (an existing one keeps what it recorded: `_kept_size`)."""
        super().__init__(code_dim=code_dim, clock=clock)
        self.model_id = model_id
        self.path = Path(data_dir) / DATABASE_FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise GalleryError(f"{self.path.parent}: cannot create the gallery directory: {err.strerror}") from None
        self._lock_file = self._exclusive(self.path.parent / LOCK_FILE)
        self._lock = threading.RLock()  # re-entrant: a write's neighbourhood upkeep searches through the store
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if power_safe else 'NORMAL'}")
            with self._db:
                self._db.executescript(SCHEMA)
                present = {row[1] for row in self._db.execute("PRAGMA table_info(entries)")}
                for column, kind in ADDED_COLUMNS.items():
                    if column not in present:
                        self._db.execute(f"ALTER TABLE entries ADD COLUMN {column} {kind}")
                if "enrolled_at" not in present:  # retention counts older entries from their migration
                    self._db.execute("UPDATE entries SET enrolled_at = ?", (to_micros(self.clock()),))
        except sqlite3.DatabaseError as err:
            self._db.close()
            self._lock_file.close()
            raise GalleryError(f"{self.path}: not a usable gallery database ({err})") from None
        self.index = VectorIndex(code_dim, search_copy, threads=search_threads)
        self._columns = EntryColumns(code_dim)
        self._persons: Counter[str] = Counter()
        self._recorded_model = self._meta("model_id")
        try:
            check_code_space(recorded=self._recorded_model, model_id=model_id, where=str(self.path))
            self._load()
            self.neighbourhood_size = self._kept_size(neighbourhood_size)
        except GalleryError:
            self.close()  # free the directory's lock: a refused gallery is not held
            raise

    @staticmethod
    def _exclusive(path: Path) -> TextIO:
        """Two servers on one directory would each serve a stale mirror of the other's writes."""
        handle = path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise GalleryError(f"{path.parent}: the gallery is in use by another process") from None
        return handle

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _load(self) -> None:
        rows = self._db.execute("SELECT entry_id, person_id, camera, seen_at, code FROM entries").fetchall()
        if not rows:
            return
        if any(len(row[4]) != self.code_dim * 4 for row in rows):
            raise GalleryError(f"{self.path}: holds codes of another size than this model's {self.code_dim}-d")
        if self._recorded_model is None and self.model_id is not None:
            log.warning("%s predates model ids: its codes are taken to be of this model (%s)", self.path,
                        self.model_id)
        self._persons.update(row[1] for row in rows)
        ids = np.fromiter((row[0] for row in rows), np.int64, len(rows))
        codes = np.frombuffer(b"".join(row[4] for row in rows), np.float32).reshape(len(rows), self.code_dim)
        radii = dict(self._db.execute("SELECT entry_id, radius FROM neighbourhoods").fetchall())
        units = unit_length(codes)
        self.index.add(ids, units)
        self._columns.append(ids, cameras=(row[2] for row in rows), seen=(row[3] for row in rows), units=units,
                             radii=np.array([radii.get(int(i), np.inf) for i in ids]))

    def _kept_size(self, wanted: int) -> int:
        """The size the gallery's neighbourhoods are kept at: what it recorded, or `wanted` for a gallery that
        recorded none and holds no entry yet (one made before neighbourhoods were kept keeps none until
        `genreid gallery neighbourhoods` builds them)."""
        recorded = self._meta("neighbourhood_size")
        if recorded is not None:
            size = int(recorded)
        elif self.index.size:
            size = 0
        else:
            size = wanted
            with self._transaction():
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('neighbourhood_size', ?)", (str(size),))
        if size < wanted:
            log.warning("%s keeps %d neighbours per entry, re-ranking needs %d: it searches them until "
                        "`genreid gallery neighbourhoods` rebuilds them", self.path.parent, size, wanted)
        return size

    # --- writes -------------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One SQLite transaction, committed on leaving the block (mirror only what is durable) or rolled back;
        a full disk is StorageFull (507), any other storage fault StoreUnavailable (503)."""
        try:
            with self._db:
                yield
        except sqlite3.OperationalError as err:
            text = str(err)
            if "full" in text:
                raise StorageFull(f"{self.path}: the disk or database is full ({text}); nothing was written") from None
            raise StoreUnavailable(f"{self.path}: cannot write the gallery ({text}); nothing was written") from None
        except sqlite3.DatabaseError as err:
            raise StoreUnavailable(f"{self.path}: the gallery database failed ({err}); nothing was written") from None

    def _insert(self, entries: list[NewEntry], codes: np.ndarray, unit_codes: np.ndarray) -> list[Entry]:
        now = self.clock()
        enrolled = [e.enrolled_at or now for e in entries]
        with self._lock:
            with self._transaction():
                if self._recorded_model is None and self.model_id is not None:
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES ('model_id', ?)", (self.model_id,))
                ids = []
                for entry, code, when in zip(entries, codes, enrolled, strict=True):
                    seen = None if entry.seen_at is None else to_micros(entry.seen_at)
                    entry_id = self._db.execute(
                        "INSERT INTO entries (person_id, camera, seen_at, track_id, enrolled_at, code) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (entry.person_id, entry.camera, seen, entry.track_id, to_micros(when), code.tobytes()),
                    ).lastrowid
                    if entry.crop is not None:
                        self._db.execute("INSERT INTO crops VALUES (?, ?)", (entry_id, entry.crop))
                    ids.append(entry_id)
                radii = self._write_kept(updates_after_insert(self, ids, unit_codes, self.neighbourhood_size)
                                         if self.neighbourhood_size else {}, size=self.neighbourhood_size)
            self._recorded_model = self._recorded_model or self.model_id
            self._persons.update(e.person_id for e in entries)
            self.index.add(np.asarray(ids, np.int64), unit_codes)
            self._columns.append(ids, cameras=(e.camera for e in entries), units=unit_codes,
                                 seen=(None if e.seen_at is None else to_micros(e.seen_at) for e in entries))
            self._columns.set_radii(radii)  # the new entries' and those they joined
        return [Entry(i, e.person_id, e.camera, e.seen_at, e.track_id, e.crop is not None, when)
                for i, e, when in zip(ids, entries, enrolled, strict=True)]

    def _relabel(self, entry_id: int, person_id: str) -> Entry:
        with self._lock:
            found = self._get([entry_id])
            if not found:
                raise UnknownEntries([entry_id])
            with self._transaction():
                self._db.execute("UPDATE entries SET person_id = ? WHERE entry_id = ?", (person_id, entry_id))
            self._persons.subtract([found[0].person_id])
            self._persons[person_id] += 1
            self._persons = +self._persons  # drop persons left with no entry
            return self._get([entry_id])[0]

    def _merge(self, person_id: str, into: str) -> list[int]:
        with self._lock:
            ids = self._ids_of(person_id)
            if ids:
                with self._transaction():
                    self._db.execute("UPDATE entries SET person_id = ? WHERE person_id = ?", (into, person_id))
                self._persons[into] += self._persons.pop(person_id)
            return ids

    def remove_entries(self, entry_ids: Sequence[int]) -> list[int]:
        with self._lock:
            return self._remove([entry.entry_id for entry in self._get(list(dict.fromkeys(entry_ids)))])

    def remove_person(self, person_id: str) -> list[int]:
        with self._lock:
            return self._remove(self._ids_of(person_id))

    def remove_enrolled_before(self, cutoff: datetime) -> list[int]:
        with self._lock:
            rows = self._db.execute("SELECT entry_id FROM entries WHERE enrolled_at < ? ORDER BY entry_id",
                                    (to_micros(utc(cutoff)),))
            return self._remove([row[0] for row in rows])

    def _ids_of(self, person_id: str) -> list[int]:
        rows = self._db.execute("SELECT entry_id FROM entries WHERE person_id = ? ORDER BY entry_id", (person_id,))
        return [row[0] for row in rows]

    def _remove(self, entry_ids: list[int]) -> list[int]:
        if not entry_ids:
            return []
        persons = [entry.person_id for entry in self._get(entry_ids)]
        kept = updates_before_removal(self, entry_ids, self.neighbourhood_size) if self.neighbourhood_size else {}
        with self._transaction():
            for table in ("crops", "neighbourhoods", "entries"):
                self._db.executemany(f"DELETE FROM {table} WHERE entry_id = ?", [(i,) for i in entry_ids])
            radii = self._write_kept(kept, size=self.neighbourhood_size)
        self._columns.remove(entry_ids)
        self._columns.set_radii(radii)
        self._persons.subtract(persons)
        self._persons = +self._persons
        self.index.remove(np.asarray(entry_ids, np.int64))
        return entry_ids

    # --- kept neighbourhoods --------------------------------------------------------------------------------
    def _write_kept(self, lists: dict[int, Neighbourhood], *, size: int) -> dict[int, float]:
        """Within the caller's transaction; the entries' new radii, for the mirror once it commits."""
        radii = {entry_id: hood.radius(size) for entry_id, hood in lists.items()}
        self._db.executemany(
            "INSERT OR REPLACE INTO neighbourhoods VALUES (?, ?, ?, ?)",
            [(entry_id, radii[entry_id], np.asarray(hood.ids, np.int64).tobytes(),
              np.asarray(hood.distances, np.float32).tobytes()) for entry_id, hood in lists.items()])
        return radii

    def _kept(self, entry_ids: Sequence[int]) -> dict[int, Neighbourhood]:
        found = {}
        with self._lock:
            for chunk in id_chunks(entry_ids):
                rows = self._db.execute("SELECT entry_id, ids, distances FROM neighbourhoods "
                                        f"WHERE entry_id IN ({placeholders(len(chunk))})", chunk)
                found.update((row[0], Neighbourhood(tuple(np.frombuffer(row[1], np.int64).tolist()),
                                                    tuple(np.frombuffer(row[2], np.float32).tolist())))
                             for row in rows)
        return found

    def _reached_by(self, unit_codes: np.ndarray, size: int, *, leaving: Sequence[int]) -> list[dict[int, float]]:
        with self._lock:
            return self._columns.reached_by(unit_codes, leaving={int(i) for i in leaving})

    def rebuild_neighbourhoods(self, size: int, progress: Callable[[int], None] = lambda done: None) -> None:
        with self._lock:
            ids = [row[0] for row in self._db.execute("SELECT entry_id FROM entries ORDER BY entry_id")]
            with self._transaction():
                self._db.execute("DELETE FROM neighbourhoods")
                if size:
                    rebuild(self, ids, size, progress, keep=self._write_kept)
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('neighbourhood_size', ?)", (str(size),))
            radii = dict(self._db.execute("SELECT entry_id, radius FROM neighbourhoods").fetchall())
            self._columns.set_radii({i: radii.get(i, np.inf) for i in ids})
            self.neighbourhood_size = size

    # --- reads --------------------------------------------------------------------------------------------
    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.index.size, len(self._persons)

    def get(self, entry_ids: Sequence[int]) -> list[Entry]:
        with self._lock:
            return self._get(entry_ids)

    def _get(self, entry_ids: Sequence[int]) -> list[Entry]:
        found: dict[int, Entry] = {}
        for chunk in id_chunks(entry_ids):
            rows = self._db.execute(f"{ENTRY_SELECT} WHERE e.entry_id IN ({placeholders(len(chunk))})", chunk)
            found.update((row[0], entry_of(row)) for row in rows)
        return [found[int(i)] for i in entry_ids if int(i) in found]

    def codes(self, entry_ids: Sequence[int]) -> np.ndarray:
        found: dict[int, bytes] = {}
        with self._lock:
            for chunk in id_chunks(entry_ids):
                rows = self._db.execute(
                    f"SELECT entry_id, code FROM entries WHERE entry_id IN ({placeholders(len(chunk))})", chunk)
                found.update(rows)
        unknown = [int(i) for i in entry_ids if int(i) not in found]
        if unknown:
            raise UnknownEntries(unknown)
        blob = b"".join(found[int(i)] for i in entry_ids)
        return np.frombuffer(blob, np.float32).reshape(len(entry_ids), self.code_dim).copy()

    def known_unit_codes(self, entry_ids: Sequence[int]) -> dict[int, np.ndarray]:
        """From the index's own vectors: a re-ranked query reads a few hundred, 20 times faster than from the
        database (docs/BENCHMARKS.md, "What a fresh server does")."""
        with self._lock:
            known = [int(i) for i in entry_ids if int(i) in self._columns]
            return dict(zip(known, self.index.vectors(np.asarray(known, np.int64)), strict=True)) if known else {}

    def crop(self, entry_id: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT image FROM crops WHERE entry_id = ?", (entry_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def list_entries(self, entry_filter: EntryFilter = NO_FILTER, *, offset: int = 0, limit: int = 50
                     ) -> EntryPage:
        where, params = _where(entry_filter)
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM entries e{where}", params).fetchone()[0]
            rows = self._db.execute(f"{ENTRY_SELECT}{where} ORDER BY e.entry_id LIMIT ? OFFSET ?",
                                    [*params, limit, offset]).fetchall()
        return EntryPage(total, [entry_of(row) for row in rows])

    def _nearest(self, unit_queries: np.ndarray, k: int, entry_filter: EntryFilter
                 ) -> list[list[tuple[Entry, float]]]:
        with self._lock:  # entries read under the same lock as the search: none can go in between
            squared, ids = self._search_index(unit_queries, k, entry_filter)
            entries = {e.entry_id: e for e in self._get(np.unique(ids[ids >= 0]).tolist())}
        return _rows(squared, ids, entries.__getitem__)

    def _nearest_ids(self, unit_queries: np.ndarray, k: int, entry_filter: EntryFilter
                     ) -> list[list[tuple[int, float]]]:
        with self._lock:
            squared, ids = self._search_index(unit_queries, k, entry_filter)
        return _rows(squared, ids, int)

    def _search_index(self, unit_queries: np.ndarray, k: int, entry_filter: EntryFilter
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k') squared distances and ids (-1: none) from the FAISS index, k' = k or fewer when fewer are
        admitted; the caller holds the lock."""
        if entry_filter.person_id is not None:
            raise ValueError("a search cannot filter by person id")
        if entry_filter.only_excludes_ids:
            leaving = [i for i in entry_filter.exclude_ids if i in self._columns]
            if len(leaving) <= PADDED_EXCLUSIONS:
                return self._search_leaving(unit_queries, k, leaving)
        allowed, refused = self._columns.split(entry_filter)
        k = min(k, len(allowed))
        return (self.index.search_among(unit_queries, k, allowed=allowed, refused=refused) if k
                else _no_results(len(unit_queries)))

    def _search_leaving(self, unit_queries: np.ndarray, k: int, leaving: list[int]
                        ) -> tuple[np.ndarray, np.ndarray]:
        """`_search_index` leaving out a few stored ids: the unfiltered search for as many more, those dropped (a
        query from a stored entry, a write's neighbourhood upkeep); no filter pass over every entry."""
        k = min(k, self.index.size - len(leaving))
        if not k:
            return _no_results(len(unit_queries))
        squared, ids = self.index.search(unit_queries, k + len(leaving))
        if not leaving:
            return squared, ids
        order = np.argsort(np.isin(ids, leaving), axis=1, kind="stable")[:, :k]  # the others, in their order
        return np.take_along_axis(squared, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "location": str(self.path.parent), "faiss_device": self.index.device}

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lock_file.close()


def _no_results(queries: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((queries, 0), np.float32), np.zeros((queries, 0), np.int64)


def _rows(squared: np.ndarray, ids: np.ndarray, resolve: Callable[[int], T]) -> list[list[tuple[T, float]]]:
    """Per query, (resolve(id), squared distance) for the ids found, nearest first."""
    return [[(resolve(int(i)), float(d)) for d, i in zip(row_d, row_i, strict=True) if i >= 0]
            for row_d, row_i in zip(squared, ids, strict=True)]
