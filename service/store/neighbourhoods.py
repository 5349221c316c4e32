"""Kept neighbourhoods: each entry's nearest other entries, maintained by the store on every write, so a re-ranked
query reads its candidates' neighbourhoods instead of searching the gallery once per candidate (that search was
most of re-ranking's cost: docs/BENCHMARKS.md, "Re-ranking").

One algorithm for every backend, over the store's searches and three primitives of its own: `_kept` (read
neighbourhoods), `_reached_by` (which entries' kept neighbourhoods a code enters: d(e, x) <= radius(e), the
farthest kept neighbour's distance) and the write that stores the result, in the same transaction as the entries
where the backend has one. docs/GALLERY_STORE.md, "Kept neighbourhoods", states the guarantees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from genreid.service.core.similarity import unit_length
from genreid.service.store.base import RADIUS_SLACK, EntryFilter, GalleryStore, Neighbourhood, nearest_kept

REACH = 4  # a search-only backend first looks at REACH x the kept size nearest entries around a code ...
MIN_REACH = 32  # ... and at least this many
SEARCH_LIMIT = 16_384  # the most one search may ask of Milvus
BATCH = 256  # codes per search while rebuilding


def nearest_others(store: GalleryStore, entry_ids: Sequence[int], unit_codes: np.ndarray, size: int, *,
                   leaving: Iterable[int] = ()) -> dict[int, Neighbourhood]:
    """Each entry's `size` nearest other entries as the gallery stands, without the `leaving` ones."""
    if not len(entry_ids):
        return {}
    rows = store.nearest_ids(unit_codes, size + 1, EntryFilter(exclude_ids=frozenset(int(i) for i in leaving)))
    return {int(entry_id): nearest_kept(((i, d) for i, d in row if i != entry_id), size)
            for entry_id, row in zip(entry_ids, rows, strict=True)}


def reached_by_search(store: GalleryStore, unit_codes: np.ndarray, size: int, *, leaving: Sequence[int]
                      ) -> list[dict[int, float]]:
    """`_reached_by` for a backend that can only search: exact without a scan. An entry e reached by x is either
    among x's L nearest, or d(e, x) >= d_L(x), so radius(e) >= d_L(x); L grows until few entries are that wide
    (32-d codes need L in the hundreds: docs/GALLERY_STORE.md)."""
    own = frozenset(int(i) for i in leaving)
    reach = min(max(REACH * size, MIN_REACH), SEARCH_LIMIT)
    while True:
        rows = store.nearest_ids(unit_codes, reach, EntryFilter(exclude_ids=own))
        horizons = [row[-1][1] if len(row) == reach else 0.0 for row in rows]
        wide = {i: r for i, r in store._wider_than(min(horizons)).items() if i not in own}
        if len(wide) <= reach or reach >= SEARCH_LIMIT:
            break
        reach = min(REACH * reach, SEARCH_LIMIT)
    near_ids = sorted({i for row in rows for i, _ in row} - wide.keys())
    radii = wide | {i: hood.radius(size) for i, hood in store._kept(near_ids).items()}
    far = sorted(wide)
    far_codes = unit_length(store.codes(far)) if far else np.zeros((0, unit_codes.shape[1]), np.float32)
    reached = []
    for code, row, horizon in zip(unit_codes, rows, horizons, strict=True):
        found = {i: d for i, d in row if d <= radii.get(i, -1.0) + RADIUS_SLACK}
        distances = np.linalg.norm(far_codes.astype(np.float64) - code, axis=1)
        found |= {i: float(d) for i, d in zip(far, distances, strict=True)
                  if i not in found and wide[i] >= horizon and d <= wide[i] + RADIUS_SLACK}
        reached.append(found)
    return reached


def updates_after_insert(store: GalleryStore, entry_ids: Sequence[int], unit_codes: np.ndarray, size: int
                         ) -> dict[int, Neighbourhood]:
    """The neighbourhoods that change when `entry_ids` join the gallery, whether or not the store can search
    them yet: their own (the gallery's nearest and each other), and each existing entry's that one enters."""
    new = [int(i) for i in entry_ids]
    rows = store.nearest_ids(unit_codes, size, EntryFilter(exclude_ids=frozenset(new)))
    units = unit_codes.astype(np.float64)
    peers = np.sqrt(np.maximum(2.0 - 2.0 * np.einsum("ik,jk->ij", units, units), 0.0))
    np.fill_diagonal(peers, np.inf)
    nearest_peers = np.argsort(peers, axis=1, kind="stable")[:, :size]  # no more can be among the nearest
    updates = {x: nearest_kept([*((i, d) for i, d in row if i not in new),
                                *((new[b], float(peers[a, b])) for b in nearest_peers[a] if b != a)], size)
               for a, (x, row) in enumerate(zip(new, rows, strict=True))}
    reached = store._reached_by(unit_codes, size, leaving=new)
    joining: dict[int, list[tuple[int, float]]] = {}
    for x, found in zip(new, reached, strict=True):
        for entry_id, distance in found.items():
            joining.setdefault(entry_id, []).append((x, distance))
    for entry_id, hood in store._kept(sorted(joining)).items():
        updates[entry_id] = hood.with_(joining[entry_id], size)
    return updates


def updates_before_removal(store: GalleryStore, entry_ids: Sequence[int], size: int) -> dict[int, Neighbourhood]:
    """The neighbourhoods that change when `entry_ids` leave (asked while they are still in the gallery): each
    remaining entry that holds one of them, searched anew without them."""
    leaving = [int(i) for i in entry_ids]
    if not leaving:
        return {}
    reached = store._reached_by(unit_length(store.codes(leaving)), size, leaving=leaving)
    candidates = sorted({i for found in reached for i in found})
    holders = [i for i, hood in store._kept(candidates).items() if not set(leaving).isdisjoint(hood.ids)]
    return nearest_others(store, holders, unit_length(store.codes(holders)), size, leaving=leaving)


def rebuild(store: GalleryStore, all_ids: Sequence[int], size: int, progress: Callable[[int], None], *,
            keep: Callable[..., None]) -> None:
    """Every entry's neighbourhood searched anew and handed to `keep(lists, size=size)` a batch at a time (the
    gallery tool, when the kept size changes)."""
    for start in range(0, len(all_ids), BATCH):
        ids = [int(i) for i in all_ids[start:start + BATCH]]
        keep(nearest_others(store, ids, unit_length(store.codes(ids)), size), size=size)
        progress(len(ids))
