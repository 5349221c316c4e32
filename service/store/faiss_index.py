"""The embedded store's vector index: exact FAISS search keyed by entry id, optionally restricted to some ids.

GPU FAISS indexes can neither remove ids nor be serialised, so a CPU IndexIDMap2 is always the mutable master
and a GPU search copy, when there is one, gets the same additions and is rebuilt after removals. Restricted
searches run on the master, whose flat scan takes an id selector and stays exact.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import faiss
import numpy as np

# Makes a search-only copy of the master index (e.g. on a GPU); None searches the master itself.
SearchCopy = Callable[[faiss.Index], faiss.Index]


def gpu_search_copy(device: str) -> SearchCopy | None:
    """A GPU copier when FAISS has GPUs and `device` allows them; None means search on the CPU."""
    if device == "cpu" or faiss.get_num_gpus() == 0:
        return None
    return partial(faiss.index_cpu_to_gpu, faiss.StandardGpuResources(), 0)


class VectorIndex:
    """Exact squared-L2 search over the vectors it is given (the store gives it unit-length codes)."""

    def __init__(self, dim: int, search_copy: SearchCopy | None = None, threads: int = 1):
        """`threads`: FAISS's OpenMP threads per search (1 keeps them from spinning against inference threads)."""
        self.master = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
        self.threads = threads
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
        self.master.add_with_ids(vectors, ids)
        if self._searcher is not self.master:
            self._searcher.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> None:
        self.master.remove_ids(ids)
        if self._searcher is not self.master:
            self._searcher = self._copy()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) squared distances and ids, nearest first; ids are -1 past the index's size."""
        self._limit_threads()
        return self._searcher.search(queries, k)

    def _limit_threads(self) -> None:
        """OpenMP's thread count belongs to the calling thread: set it in the request's own worker thread, or
        FAISS would spread each search over every core and spin against ONNX Runtime (a 1-entry /query went
        from 5 to 8 ms when the count was set once, in the thread that opened the store)."""
        faiss.omp_set_num_threads(self.threads)

    def search_among(self, queries: np.ndarray, k: int, *, allowed: np.ndarray, refused: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Like `search`, over the `allowed` ids only (exact: the scan skips the `refused` rest of the index). The
        selector holds whichever of the two sets is smaller."""
        self._limit_threads()
        if len(allowed) <= len(refused):
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64))
            return self.master.search(queries, k, params=faiss.SearchParameters(sel=selector))
        inner = faiss.IDSelectorBatch(np.ascontiguousarray(refused, np.int64))  # kept alive through the search
        selector = faiss.IDSelectorNot(inner)
        return self.master.search(queries, k, params=faiss.SearchParameters(sel=selector))
