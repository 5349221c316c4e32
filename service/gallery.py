"""The durable gallery: SQLite is the source of truth, a FAISS index and a small in-memory table mirror it.

Every mutation commits to SQLite (WAL) before touching the mirrors, all under one lock
that searches also take, so an acknowledged write survives kill -9 and no reader sees half of one.
GPU FAISS indexes can neither remove ids nor be serialised, so a CPU IndexIDMap2 is always the mutable
master and a GPU search copy, when there is one, gets the same additions and is rebuilt after removals.
"""

from __future__ import annotations

import fcntl
import math
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TextIO

import faiss
import numpy as np

from service.similarity import unit_length

DATABASE_FILE = "gallery.sqlite3"
LOCK_FILE = "gallery.lock"
SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
    person_id TEXT NOT NULL,
    camera TEXT,
    code BLOB NOT NULL
);
"""

# Makes a search-only copy of the master index (e.g. on a GPU); None searches the master itself.
SearchCopy = Callable[[faiss.Index], faiss.Index]


class GalleryError(RuntimeError):
    """The gallery directory cannot be used (held by another server, or codes of another model)."""


@dataclass(frozen=True)
class Entry:
    entry_id: int
    person_id: str
    camera: str | None


@dataclass(frozen=True)
class Match:
    entry: Entry
    distance: float


def gpu_search_copy(device: str) -> SearchCopy | None:
    """A GPU copier when FAISS has GPUs and `device` allows them; None means search on the CPU."""
    if device == "cpu" or faiss.get_num_gpus() == 0:
        return None
    return partial(faiss.index_cpu_to_gpu, faiss.StandardGpuResources(), 0)


class VectorIndex:
    """Exact search keyed by entry id, by direction (service.similarity): codes are stored and queried at
    unit length, so FAISS's L2 distances are the service's distances."""

    def __init__(self, dim: int, search_copy: SearchCopy | None = None):
        self.master = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
        self._search_copy = search_copy
        self._searcher = self._copy()

    def _copy(self) -> faiss.Index:
        return self.master if self._search_copy is None else self._search_copy(self.master)

    @property
    def size(self) -> int:
        return int(self.master.ntotal)

    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        codes = unit_length(codes)
        self.master.add_with_ids(codes, ids)
        if self._searcher is not self.master:
            self._searcher.add_with_ids(codes, ids)

    def remove(self, ids: np.ndarray) -> None:
        self.master.remove_ids(ids)
        if self._searcher is not self.master:
            self._searcher = self._copy()

    def search(self, code: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared distances (between unit-length codes) and ids of the k nearest, for one (1, dim) query."""
        return self._searcher.search(unit_length(code), k)


class Gallery:
    """Thread-safe store of identity codes; entry ids are per image, person ids are labels."""

    def __init__(
        self, data_dir: str | Path, dim: int, search_copy: SearchCopy | None = None, power_safe: bool = False
    ):
        """`power_safe` fsyncs every commit (survives power loss); without it a commit in WAL mode still
        survives kill -9 of the server, at a fraction of the cost per write."""
        self.dim = dim
        self.path = Path(data_dir) / DATABASE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._exclusive(self.path.parent / LOCK_FILE)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if power_safe else 'NORMAL'}")
        self._db.executescript(SCHEMA)
        self._entries: dict[int, Entry] = {}
        self._persons: dict[str, set[int]] = {}
        self.index = VectorIndex(dim, search_copy)
        self._load()

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

    def _load(self) -> None:
        rows = self._db.execute("SELECT entry_id, person_id, camera, code FROM entries").fetchall()
        if not rows:
            return
        if any(len(row[3]) != self.dim * 4 for row in rows):
            raise GalleryError(f"{self.path}: holds codes of another size than this model's {self.dim}-d")
        for entry_id, person_id, camera, _ in rows:
            self._remember(Entry(entry_id, person_id, camera))
        ids = np.fromiter((row[0] for row in rows), np.int64, len(rows))
        codes = np.frombuffer(b"".join(row[3] for row in rows), np.float32).reshape(len(rows), self.dim)
        self.index.add(ids, codes)

    def _remember(self, entry: Entry) -> None:
        self._entries[entry.entry_id] = entry
        self._persons.setdefault(entry.person_id, set()).add(entry.entry_id)

    def _forget(self, entry_ids: Sequence[int]) -> None:
        for entry_id in entry_ids:
            entry = self._entries.pop(entry_id)
            people = self._persons[entry.person_id]
            people.discard(entry_id)
            if not people:
                del self._persons[entry.person_id]

    def counts(self) -> tuple[int, int]:
        """(entries, distinct persons)."""
        with self._lock:
            return len(self._entries), len(self._persons)

    def add(self, person_ids: Sequence[str], cameras: Sequence[str | None], codes: np.ndarray) -> list[Entry]:
        """Store all codes in one transaction, committed before this returns; all or nothing."""
        codes = np.ascontiguousarray(codes, dtype=np.float32)
        if codes.shape != (len(person_ids), self.dim) or len(cameras) != len(person_ids):
            raise ValueError(f"{len(person_ids)} labels, {len(cameras)} cameras, codes {codes.shape}")
        with self._lock:
            with self._db:  # one transaction, committed on leaving the block: mirror only what is durable
                ids = [
                    self._db.execute(
                        "INSERT INTO entries (person_id, camera, code) VALUES (?, ?, ?)",
                        (person_id, camera, code.tobytes()),
                    ).lastrowid
                    for person_id, camera, code in zip(person_ids, cameras, codes, strict=True)
                ]
            entries = [Entry(i, p, c) for i, p, c in zip(ids, person_ids, cameras, strict=True)]
            for entry in entries:
                self._remember(entry)
            self.index.add(np.asarray(ids, np.int64), codes)
        return entries

    def remove_entry(self, entry_id: int) -> list[int]:
        """Ids removed: [entry_id], or [] when it is unknown."""
        with self._lock:
            return self._remove([entry_id] if entry_id in self._entries else [])

    def remove_person(self, person_id: str) -> list[int]:
        """Ids of all the person's entries, now removed; [] when the person is unknown."""
        with self._lock:
            return self._remove(sorted(self._persons.get(person_id, ())))

    def _remove(self, entry_ids: list[int]) -> list[int]:
        if entry_ids:
            with self._db:
                self._db.executemany("DELETE FROM entries WHERE entry_id = ?", [(i,) for i in entry_ids])
            self._forget(entry_ids)
            self.index.remove(np.asarray(entry_ids, np.int64))
        return entry_ids

    def search(self, code: np.ndarray, k: int) -> list[Match]:
        """The k nearest entries (k capped at the gallery size), best first, with their distances
        (service.similarity: between unit-length codes)."""
        query = np.reshape(code, (1, self.dim))
        with self._lock:
            k = min(k, self.index.size)
            if k == 0:
                return []
            squared, ids = self.index.search(query, k)
            return [
                Match(self._entries[int(i)], math.sqrt(max(float(d), 0.0)))
                for d, i in zip(squared[0], ids[0], strict=True)
                if i >= 0
            ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lock_file.close()
