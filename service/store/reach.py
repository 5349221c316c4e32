"""The embedded store's exact answer to "whose kept neighbourhood does this code enter": every entry's unit code
and kept radius as row-aligned numpy arrays, so a write compares its codes with the whole gallery in one matrix
product (as cheap as the search for their own neighbours) instead of searching around each code.
"""

from __future__ import annotations

import numpy as np

from genreid.service.store.base import RADIUS_SLACK

CHUNK = 65_536  # gallery rows per product: bounds the (codes x rows) distance block's memory


class Reach:
    """Rows appended, removed by marking them dead, compacted once dead rows outnumber live ones."""

    def __init__(self, dim: int) -> None:
        self._ids = np.empty(0, np.int64)
        self._units = np.empty((0, dim), np.float32)
        self._radii = np.empty(0, np.float64)
        self._alive = np.empty(0, bool)
        self._rows = 0
        self._dead = 0
        self._row_of: dict[int, int] = {}

    def add(self, ids: np.ndarray, units: np.ndarray, radii: np.ndarray) -> None:
        need = self._rows + len(ids)
        if need > len(self._ids):
            capacity = max(need, 2 * len(self._ids), 1024)
            self._ids, self._radii, self._alive = (np.resize(column, capacity)
                                                   for column in (self._ids, self._radii, self._alive))
            self._units = np.resize(self._units, (capacity, self._units.shape[1]))
        rows = slice(self._rows, need)
        self._ids[rows], self._units[rows], self._radii[rows], self._alive[rows] = ids, units, radii, True
        self._row_of.update((int(entry_id), row) for row, entry_id in enumerate(ids, start=self._rows))
        self._rows = need

    def set_radii(self, radii: dict[int, float]) -> None:
        for entry_id, radius in radii.items():
            self._radii[self._row_of[entry_id]] = radius

    def remove(self, ids: list[int]) -> None:
        for entry_id in ids:
            self._alive[self._row_of.pop(entry_id)] = False
            self._dead += 1
        if self._dead > 1024 and self._dead > len(self._row_of):
            keep = np.flatnonzero(self._alive[: self._rows])
            self._ids, self._units, self._radii = (column[keep] for column in (self._ids, self._units, self._radii))
            self._alive = np.ones(len(keep), bool)
            self._rows, self._dead = len(keep), 0
            self._row_of = {int(entry_id): row for row, entry_id in enumerate(self._ids)}

    def reached_by(self, unit_codes: np.ndarray, *, leaving: set[int]) -> list[dict[int, float]]:
        """Per code, {entry id: distance} of the live entries, other than `leaving`, within their radius of it."""
        reached: list[dict[int, float]] = [{} for _ in unit_codes]
        codes = np.asarray(unit_codes, np.float64)
        for start in range(0, self._rows, CHUNK):
            rows = slice(start, min(start + CHUNK, self._rows))
            # einsum's own loop: OpenBLAS threads stall beside inference (service/core/reranking.py)
            cosine = np.einsum("ik,jk->ij", codes, self._units[rows].astype(np.float64))
            # d <= r + slack, as 2 - 2 cos(x, e) <= (r + slack)^2 (d^2 for unit-length codes), rows alive only
            bound = np.where(self._alive[rows], 1.0 - 0.5 * np.square(self._radii[rows] + RADIUS_SLACK), np.inf)
            code_rows, gallery_rows = np.nonzero(cosine >= bound)
            distances = np.sqrt(np.maximum(2.0 - 2.0 * cosine[code_rows, gallery_rows], 0.0))
            for code, row, distance in zip(code_rows, gallery_rows, distances, strict=True):
                entry_id = int(self._ids[start + row])
                if entry_id not in leaving:
                    reached[code][entry_id] = float(distance)
        return reached
