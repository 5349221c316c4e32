"""The embedded store's vector index: exact FAISS search keyed by entry id, optionally restricted to some ids.

GPU FAISS indexes can neither remove ids nor be serialised, so a CPU IndexIDMap2 over a float flat index is always
the mutable master and a GPU search copy, when there is one, gets the same additions and is rebuilt after
removals; a GPU searches that float copy.

On the CPU a float flat scan of 1M 32-d codes takes 14.6 ms per query on one core (it streams 128 MB), so
from SCAN_FROM vectors on the CPU answers in two steps instead, 4.9 ms at 1M (docs/BENCHMARKS.md, "FAISS search
against gallery size"). Below that the float scan is as fast for one query and about twice as fast for the batches
re-ranking sends (100 candidates' neighbours at 20,000 entries: 15 against 27-43 ms), so it answers alone:

1. scan: a compact copy of the vectors, one byte per component on a fixed grid (c = round(127.5 x + 127.5), so
   [-1, 1] maps onto 0..255: unit-length codes always fit; 32 MB at 1M x 32-d beside the master's 128 MB), is
   scanned for `candidates(k)` nearest codes. FAISS compares the byte-rounded query with the codes in integers,
   exactly, about 4.5 ns per vector at 32-d while the codes are in cache (from memory its loop stalls: 11 ns,
   still below the float scan's 14).
2. re-rank: the candidates' float vectors, from the master, are ranked by exact distance (float64 over the
   float32 vectors), ties by id; a second, float scan settles the queries whose candidates are not certain to
   hold the top k (below).

The certificate. Let e_q = |q - q'| and E >= |x - x'| for every x the index holds (' = the grid point), and t
the k'-th (last) candidate's scan distance |q' - x'|. By the triangle inequality every x outside the candidates
has |q - x| >= t - e_q - E. If that exceeds the k-th exact distance among the candidates, rho, no outsider can
be in the top k or tie with it, so the candidates hold the exact top k. Otherwise a float range search collects
every x whose float32 squared distance could be <= rho^2 (plus FAISS's float32 rounding bound), a superset of
the top k and its ties, which is ranked exactly. For unit-length codes E <= sqrt(dim) / 255 (0.022 at 32-d).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import numpy as np

# faiss logs at INFO each instruction-set build it could not load before the one it does: noise on every command.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402

# Makes a search-only copy of the master index (e.g. on a GPU); None searches the master itself.
SearchCopy = Callable[[faiss.Index], faiss.Index]

GRID = 127.5  # byte codes per unit: [-1, 1] -> 0..255
FLT_MAX = float(np.finfo(np.float32).max)  # FAISS's distance for a missing result (id -1)
UNIT_ROUNDING = 2.0**-24  # float32's unit roundoff
SLACK = 1e-9  # covers float64 rounding in the certificate's sums and square roots
SCAN_FROM = 250_000  # vectors from which the byte scan answers (one query at 250,000: 1.13 ms against 1.14)


def candidates(k: int) -> int:
    """Codes the scan returns for a top-k search: 67, 94 and 364 for k = 1, 10 and 100, where 300 queries over 1M
    random unit codes (uniform and clustered) needed at most 12, 50 and 283 for the certificate to hold. More are
    cheap (the scan's heap is rarely touched), a second scan is not (bench/faiss_search.py reports its share)."""
    return 3 * k + 64


def gpu_search_copy(device: str) -> SearchCopy | None:
    """A GPU copier when FAISS has GPUs and `device` allows them; None means search on the CPU."""
    if device == "cpu" or faiss.get_num_gpus() == 0:
        return None
    return partial(faiss.index_cpu_to_gpu, faiss.StandardGpuResources(), 0)


def to_grid(vectors: np.ndarray) -> np.ndarray:
    """Each component's nearest grid byte, as the float32 integers FAISS's 8-bit direct codes take."""
    return np.rint(np.clip(vectors, -1.0, 1.0) * GRID + GRID).astype(np.float32)


def grid_error(vectors: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Each row's distance to its grid point, in float64."""
    return np.linalg.norm(vectors.astype(np.float64) - (grid.astype(np.float64) / GRID - 1.0), axis=1)


class VectorIndex:
    """Exact squared-L2 search over the vectors it is given (the store gives it unit-length codes; others stay
    exact, but the further they leave [-1, 1], the more queries need the second scan)."""

    def __init__(self, dim: int, search_copy: SearchCopy | None = None, threads: int = 1, *,
                 scan_from: int = SCAN_FROM):
        """`threads`: FAISS's OpenMP threads per search (1 keeps them from spinning against inference threads);
        `scan_from`: the size from which the byte scan answers (0: always)."""
        self.dim = dim
        self.scan_from = scan_from
        self.master = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
        self.codes = faiss.IndexIDMap(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit_direct))
        self.threads = threads
        # Upper bounds over every vector ever added (removals leave them bounds): E of the certificate, and the
        # largest norm, which bounds FAISS's float32 rounding.
        self.code_error = 0.0
        self.max_norm = 0.0
        self.full_scans = 0  # queries the scan could not certify, answered by the second scan
        self._search_copy = search_copy
        self._searcher = self._copy()

    def _copy(self) -> faiss.Index:
        return self.master if self._search_copy is None else self._search_copy(self.master)

    @property
    def device(self) -> str:
        return "cpu" if self._searcher is self.master else "gpu"

    @property
    def size(self) -> int:
        return int(self.master.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, np.float32)
        if not len(vectors):
            return
        grid = to_grid(vectors)
        self.master.add_with_ids(vectors, ids)
        self.codes.add_with_ids(grid, ids)
        self.code_error = max(self.code_error, float(grid_error(vectors, grid).max()))
        self.max_norm = max(self.max_norm, float(np.linalg.norm(vectors.astype(np.float64), axis=1).max()))
        if self._searcher is not self.master:
            self._searcher.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> None:
        self.master.remove_ids(ids)
        self.codes.remove_ids(ids)
        if self._searcher is not self.master:
            self._searcher = self._copy()

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), dim) the vectors held under `ids`, which must all be held."""
        return self.master.reconstruct_batch(np.ascontiguousarray(ids, np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) squared distances and ids, nearest first; ids are -1 (distance FLT_MAX) past the index's size.
        Through the byte scan equal distances come by id; the float scan (a GPU copy, or the CPU below
        `scan_from`) orders them as FAISS's flat search does."""
        self._limit_threads()
        if self._searcher is not self.master:
            return self._searcher.search(queries, k)
        return self._exact(queries, k, None)

    def _limit_threads(self) -> None:
        """OpenMP's thread count belongs to the calling thread: set it in the request's own worker thread, or
        FAISS would spread each search over every core and spin against ONNX Runtime (a 1-entry /query went
        from 5 to 8 ms when the count was set once, in the thread that opened the store)."""
        faiss.omp_set_num_threads(self.threads)

    def search_among(self, queries: np.ndarray, k: int, *, allowed: np.ndarray, refused: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Like `search`, over the `allowed` ids only (on the CPU, whatever the device: both scans skip the
        `refused` rest of the index). The selector holds whichever of the two sets is smaller."""
        self._limit_threads()
        if len(allowed) <= len(refused):
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64))
            return self._exact(queries, k, faiss.SearchParameters(sel=selector))
        inner = faiss.IDSelectorBatch(np.ascontiguousarray(refused, np.int64))  # kept alive through the search
        selector = faiss.IDSelectorNot(inner)
        return self._exact(queries, k, faiss.SearchParameters(sel=selector))

    def _exact(self, queries: np.ndarray, k: int, params: faiss.SearchParameters | None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The scan, the re-rank and the certificate of the module's docstring, for each query (the float scan
        alone below `scan_from`)."""
        queries = np.ascontiguousarray(queries, np.float32)
        if self.size < self.scan_from:
            return self.master.search(queries, k, params=params)
        grid = to_grid(queries)
        scanned, ids = self.codes.search(grid, candidates(k), params=params)
        distances, found = self._ranked(queries, ids, k)
        reach = np.sqrt(scanned[:, -1].astype(np.float64)) / GRID - grid_error(queries, grid) - self.code_error
        certain = (ids[:, -1] < 0) | (reach - SLACK > np.sqrt(distances[:, k - 1]))
        for row in np.flatnonzero(~certain):
            query = queries[row:row + 1]
            norm = float(np.linalg.norm(query.astype(np.float64)))
            # float32 distances, direct (sum of squared differences) or by BLAS (norms minus twice the inner
            # product), are within (dim + 3) u (|q| + |x|)^2 of the exact ones; twice that, to be safe
            rounding = 2 * (self.dim + 3) * UNIT_ROUNDING * (norm + self.max_norm) ** 2
            radius = np.nextafter(np.float32(distances[row, k - 1] + rounding), np.float32(np.inf))
            _, _, within = self.master.range_search(query, float(radius), params=params)
            row_distances, row_found = self._ranked(query, within[None], k)
            distances[row], found[row] = row_distances[0], row_found[0]
            self.full_scans += 1
        return np.where(found >= 0, distances, FLT_MAX).astype(np.float32), found

    def _ranked(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest of each query's candidate `ids` (-1: none) by exact distance, equal ones by id: float64
        squared distances (inf for no candidate) and ids."""
        if ids.shape[1] < k:
            ids = np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)
        held = ids >= 0
        exact = np.full(ids.shape, np.inf)
        if held.any():
            # every slot gets a held vector, so that reconstruct_batch takes one flat batch; missing ones stay inf
            vectors = self.vectors(np.where(held, ids, ids[held][0]).ravel())
            differences = (vectors.reshape(*ids.shape, self.dim).astype(np.float64)
                           - queries.astype(np.float64)[:, None, :])
            exact = np.where(held, np.einsum("qcd,qcd->qc", differences, differences), np.inf)
        order = np.lexsort((np.where(held, ids, np.iinfo(np.int64).max), exact), axis=-1)[:, :k]
        return np.take_along_axis(exact, order, axis=-1), np.take_along_axis(ids, order, axis=-1)
