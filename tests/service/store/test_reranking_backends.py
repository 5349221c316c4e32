"""Re-ranking gives the same answer on every gallery backend: it sees only the store contract (search, codes), so
each backend must match one backend-free expectation, worked out here in numpy from the codes alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genreid.service.core.reranking import RerankParams, rerank_search, reranked_distances
from genreid.service.core.similarity import code_distances
from genreid.service.store import EntryFilter, NewEntry

PARAMS = RerankParams(k1=6, k2=3, lambda_=0.3, candidates=20)


def expected_order(query: np.ndarray, gallery: np.ndarray, allowed: np.ndarray, params: RerankParams
                   ) -> tuple[list[int], list[float]]:
    """Gallery indices best first over the `allowed` ones, and the re-ranked distances of the first K, from the
    design itself: the K nearest, each one's own k1+1 nearest (among the allowed), re-ranked in that world."""
    codes = gallery[allowed]
    nearest = np.argsort(code_distances(query[None], codes)[0], kind="stable")
    head = nearest[: params.candidates]
    own = np.argsort(code_distances(codes[head], codes), axis=1, kind="stable")[:, : max(params.k1, params.k2) + 1]
    world = list(dict.fromkeys([*head.tolist(), *own.ravel().tolist()]))
    final = reranked_distances(np.concatenate([query[None], codes[world]]), np.zeros(1, dtype=np.int64),
                               np.arange(1, len(head) + 1), params)[0]
    order = np.argsort(final, kind="stable")
    return allowed[np.concatenate([head[order], nearest[params.candidates:]])].tolist(), final[order].tolist()


def test_rerank_is_the_same_on_every_backend(backend, tmp_path: Path):
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(15, 32))
    gallery = (centres[rng.integers(0, 15, 160)] + 0.6 * rng.normal(size=(160, 32))).astype(np.float32)
    cameras = np.array([str(1 + i % 4) for i in range(len(gallery))])
    queries = (centres[:5] + 0.6 * rng.normal(size=(5, 32))).astype(np.float32)
    store = backend.open(tmp_path / "gallery", 32, None)
    try:
        entries = store.add([NewEntry(person_id=f"g{i}", camera=c) for i, c in enumerate(cameras)], gallery)
        index = {e.entry_id: i for i, e in enumerate(entries)}
        for entry_filter, allowed in ((EntryFilter(), np.arange(len(gallery))),
                                      (EntryFilter(exclude_cameras=frozenset({"2"})), np.flatnonzero(cameras != "2"))):
            rows = rerank_search(store, queries, 60, entry_filter, params=PARAMS)
            for query, row in zip(queries, rows, strict=True):
                order, final = expected_order(query, gallery, allowed, PARAMS)
                assert [index[m.entry.entry_id] for m in row] == order[:60]
                np.testing.assert_allclose([m.rerank_distance for m in row[: PARAMS.candidates]], final, atol=1e-6)
                assert all(m.rerank_distance is None for m in row[PARAMS.candidates:])
    finally:
        store.close()

