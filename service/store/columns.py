"""What a filtered search asks of every entry (camera, seen_at), held as numpy columns so one filter over a
million entries is a few vectorised comparisons instead of a Python loop or a database scan."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from genreid.service.store.base import EntryFilter, to_micros

NO_CAMERA = -1
NO_TIME = np.iinfo(np.int64).min


class FilterColumns:
    """Rows appended in id order, removed by marking them dead; compacted once dead rows outnumber live ones."""

    def __init__(self) -> None:
        self._ids = np.empty(0, np.int64)
        self._cameras = np.empty(0, np.int32)
        self._seen = np.empty(0, np.int64)
        self._alive = np.empty(0, bool)
        self._rows = 0
        self._dead = 0
        self._row_of: dict[int, int] = {}
        self._camera_code: dict[str, int] = {}

    def _camera(self, camera: str | None) -> int:
        if camera is None:
            return NO_CAMERA
        return self._camera_code.setdefault(camera, len(self._camera_code))

    def append(self, rows: Iterable[tuple[int, str | None, int | None]]) -> None:
        """(entry id, camera, seen_at in microseconds or None) per new entry."""
        rows = list(rows)
        need = self._rows + len(rows)
        if need > len(self._ids):
            capacity = max(need, 2 * len(self._ids), 1024)
            self._ids, self._cameras, self._seen, self._alive = (
                np.resize(column, capacity) for column in (self._ids, self._cameras, self._seen, self._alive))
        for offset, (entry_id, camera, seen) in enumerate(rows):
            row = self._rows + offset
            self._ids[row] = entry_id
            self._cameras[row] = self._camera(camera)
            self._seen[row] = NO_TIME if seen is None else seen
            self._alive[row] = True
            self._row_of[entry_id] = row
        self._rows = need

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._row_of

    def remove(self, entry_ids: Iterable[int]) -> None:
        for entry_id in entry_ids:
            self._alive[self._row_of.pop(entry_id)] = False
            self._dead += 1
        if self._dead > 1024 and self._dead > len(self._row_of):
            self._compact()

    def _compact(self) -> None:
        keep = np.flatnonzero(self._alive[: self._rows])
        self._ids, self._cameras, self._seen = (c[keep] for c in (self._ids, self._cameras, self._seen))
        self._alive = np.ones(len(keep), bool)
        self._rows, self._dead = len(keep), 0
        self._row_of = {int(entry_id): row for row, entry_id in enumerate(self._ids)}

    def split(self, entry_filter: EntryFilter) -> tuple[np.ndarray, np.ndarray]:
        """(admitted ids, refused ids) among the live entries. Listing-only fields (person_id) are not read."""
        n = self._rows
        alive = self._alive[:n]
        admitted = alive.copy()
        cameras = self._cameras[:n]
        if entry_filter.cameras is not None:
            wanted = [self._camera_code[c] for c in entry_filter.cameras if c in self._camera_code]
            admitted &= np.isin(cameras, wanted)
        if entry_filter.exclude_cameras:
            unwanted = [self._camera_code[c] for c in entry_filter.exclude_cameras if c in self._camera_code]
            admitted &= ~np.isin(cameras, unwanted)
        if entry_filter.seen_after is not None or entry_filter.seen_before is not None:
            seen = self._seen[:n]
            admitted &= seen != NO_TIME
            if entry_filter.seen_after is not None:
                admitted &= seen >= to_micros(entry_filter.seen_after)
            if entry_filter.seen_before is not None:
                admitted &= seen <= to_micros(entry_filter.seen_before)
        for entry_id in entry_filter.exclude_ids:
            row = self._row_of.get(entry_id)
            if row is not None:
                admitted[row] = False
        ids = self._ids[:n]
        return ids[admitted], ids[alive & ~admitted]
