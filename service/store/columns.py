"""What the embedded store keeps of every entry in row-aligned numpy columns, beside its database and index:

- camera and seen_at, so one filter over a million entries is a few vectorised comparisons instead of a Python
  loop or a database scan (`split`);
- the unit code and the kept neighbourhood's radius, so "whose kept neighbourhood does this code enter" compares a
  write's codes with the whole gallery in one matrix product, as cheap as the search for their own neighbours,
  instead of searching around each code (`reached_by`, service/store/neighbourhoods.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from genreid.service.store.base import RADIUS_SLACK, EntryFilter, to_micros

NO_CAMERA = -1
NO_TIME = np.iinfo(np.int64).min
CHUNK = 65_536  # rows per product in `reached_by`: bounds the (codes x rows) distance block's memory


class EntryColumns:
    """Rows appended in id order, removed by marking them dead; compacted once dead rows outnumber live ones."""

    def __init__(self, dim: int) -> None:
        self._ids = np.empty(0, np.int64)
        self._cameras = np.empty(0, np.int32)
        self._seen = np.empty(0, np.int64)
        self._units = np.empty((0, dim), np.float32)
        self._radii = np.empty(0, np.float64)
        self._alive = np.empty(0, bool)
        self._rows = 0
        self._dead = 0
        self._row_of: dict[int, int] = {}
        self._camera_code: dict[str, int] = {}

    def _columns(self) -> tuple[np.ndarray, ...]:
        return self._ids, self._cameras, self._seen, self._units, self._radii, self._alive

    def _camera(self, camera: str | None) -> int:
        if camera is None:
            return NO_CAMERA
        return self._camera_code.setdefault(camera, len(self._camera_code))

    def append(self, ids: Sequence[int], *, cameras: Iterable[str | None], seen: Iterable[int | None],
               units: np.ndarray, radii: np.ndarray | None = None) -> None:
        """New entries: their ids, cameras, seen_at in microseconds (or None), unit codes and kept radii (None:
        infinite, until `set_radii`)."""
        need = self._rows + len(ids)
        if need > len(self._ids):
            capacity = max(need, 2 * len(self._ids), 1024)
            self._ids, self._cameras, self._seen, self._units, self._radii, self._alive = (
                np.resize(column, (capacity, *column.shape[1:])) for column in self._columns())
        rows = slice(self._rows, need)
        self._ids[rows] = ids
        self._cameras[rows] = [self._camera(camera) for camera in cameras]
        self._seen[rows] = [NO_TIME if at is None else at for at in seen]
        self._units[rows] = units
        self._radii[rows] = np.inf if radii is None else radii
        self._alive[rows] = True
        self._row_of.update((int(entry_id), row) for row, entry_id in enumerate(ids, start=self._rows))
        self._rows = need

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._row_of

    def set_radii(self, radii: dict[int, float]) -> None:
        for entry_id, radius in radii.items():
            self._radii[self._row_of[entry_id]] = radius

    def remove(self, entry_ids: Iterable[int]) -> None:
        for entry_id in entry_ids:
            self._alive[self._row_of.pop(entry_id)] = False
            self._dead += 1
        if self._dead > 1024 and self._dead > len(self._row_of):
            keep = np.flatnonzero(self._alive[: self._rows])
            self._ids, self._cameras, self._seen, self._units, self._radii, self._alive = (
                column[keep] for column in self._columns())
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

    def reached_by(self, unit_codes: np.ndarray, *, leaving: set[int]) -> list[dict[int, float]]:
        """Per code, {entry id: distance} of the live entries, other than `leaving`, within their radius of it."""
        reached: list[dict[int, float]] = [{} for _ in unit_codes]
        codes = np.asarray(unit_codes, np.float64)
        for start in range(0, self._rows, CHUNK):
            rows = slice(start, min(start + CHUNK, self._rows))
            cosine = codes @ self._units[rows].T.astype(np.float64)
            # d <= r + slack, as 2 - 2 cos(x, e) <= (r + slack)^2 (d^2 for unit-length codes), rows alive only
            bound = np.where(self._alive[rows], 1.0 - 0.5 * np.square(self._radii[rows] + RADIUS_SLACK), np.inf)
            code_rows, gallery_rows = np.nonzero(cosine >= bound)
            distances = np.sqrt(np.maximum(2.0 - 2.0 * cosine[code_rows, gallery_rows], 0.0))
            for code, row, distance in zip(code_rows, gallery_rows, distances, strict=True):
                entry_id = int(self._ids[start + row])
                if entry_id not in leaving:
                    reached[code][entry_id] = float(distance)
        return reached
