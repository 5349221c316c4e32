"""A read-only, consistent view of an embedded gallery that a running server may be writing to.

The embedded store holds an exclusive lock on its directory (one server per gallery), so the gallery tools cannot
open an EmbeddedStore beside a live server. They do not need to: SQLite is the store's source of truth, and in WAL
mode a read-only connection can read it beside the writer. Everything here runs in one read transaction, so an
export or re-embedding sees the gallery as it was at one moment, whatever the server commits meanwhile (WAL
checkpoints wait for the reader, so keep snapshots short-lived on a busy gallery).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from genreid.service.store.base import Entry, GalleryError
from genreid.service.store.embedded import ADDED_COLUMNS, DATABASE_FILE, ENTRY_SELECT, entry_of, id_chunks, placeholders


@dataclass(frozen=True)
class Batch:
    """Consecutive entries of a gallery with their stored codes (as enrolled) and crops (None where not stored)."""

    entries: list[Entry]
    codes: np.ndarray  # (len(entries), code_dim) float32
    crops: list[bytes | None]


class EmbeddedSnapshot:
    """The gallery under `data_dir` as of opening, read without its lock; close() (or `with`) ends the snapshot."""

    backend = "embedded"

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / DATABASE_FILE
        if not self.path.is_file():
            raise GalleryError(f"{self.path}: no embedded gallery there")
        try:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as err:
            raise GalleryError(f"{self.path}: cannot open the gallery read-only ({err})") from None
        try:
            self._db.execute("BEGIN")  # the snapshot starts at the first read and lasts until close()
            self._check_schema()
            self.count = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            self.code_dim = self._code_dim()
            self.model_id = self._model_id()
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise GalleryError(f"{self.path}: not a usable gallery database ({err})") from None
        except GalleryError:
            self._db.close()
            raise

    def _check_schema(self) -> None:
        """A gallery from before seen_at/track_id migrates when a server opens it; read-only, we cannot."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(entries)")}
        missing = sorted(set(ADDED_COLUMNS) - present)
        if missing:
            raise GalleryError(f"{self.path}: the gallery predates its {', '.join(missing)} column(s); start "
                               "`genreid serve` on it once (it migrates the gallery), then try again")

    def _code_dim(self) -> int | None:
        """From the stored codes (float32), which must all have one size; None for an empty gallery."""
        sizes = [row[0] for row in self._db.execute("SELECT DISTINCT length(code) FROM entries LIMIT 2")]
        if len(sizes) > 1 or (sizes and sizes[0] % 4):
            raise GalleryError(f"{self.path}: holds codes of more than one size")
        return sizes[0] // 4 if sizes else None

    def _model_id(self) -> str | None:
        """The code space the gallery recorded on its first write (None: empty, or older than model ids)."""
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()
        return None if row is None else row[0]

    def entries(self) -> Iterator[Entry]:
        """Every entry, in entry-id order, without codes or crops."""
        for row in self._db.execute(f"{ENTRY_SELECT} ORDER BY e.entry_id"):
            yield entry_of(row)

    def batches(self, size: int) -> Iterator[Batch]:
        """Every entry in entry-id order, `size` at a time, with its code and crop."""
        rows = self._db.execute(f"{ENTRY_SELECT} ORDER BY e.entry_id")
        while page := [entry_of(row) for row in rows.fetchmany(size)]:
            ids = [entry.entry_id for entry in page]
            codes: dict[int, bytes] = {}
            crops: dict[int, bytes] = {}
            for chunk in id_chunks(ids):
                marks = placeholders(len(chunk))
                codes.update(self._db.execute(f"SELECT entry_id, code FROM entries WHERE entry_id IN ({marks})", chunk))
                crops.update(self._db.execute(f"SELECT entry_id, image FROM crops WHERE entry_id IN ({marks})", chunk))
            blob = b"".join(codes[i] for i in ids)
            yield Batch(page, np.frombuffer(blob, np.float32).reshape(len(ids), -1).copy(),
                        [None if i not in crops else bytes(crops[i]) for i in ids])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EmbeddedSnapshot:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
