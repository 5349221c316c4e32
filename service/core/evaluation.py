"""Market-1501 retrieval metrics (CMC, mAP, mINP), vectorised in numpy, and the one evaluation path
(`Evaluator`: embed a query and a gallery split, then rank and score them) that `genreid evaluate`, the training
pipeline's validation and the model card share.

Two protocols. `standard` is torchreid's eval_market1501, the one genreid's numbers use unless labelled
otherwise: per query, gallery crops with the same person AND the same camera are removed (finding a person
again in the camera that just saw them is not re-identification). `lenient` keeps every gallery crop, so a
same-camera crop of the same person counts as a true match: the paper's reference code
(asperti/GenerativePersonReID, main.py) scored its 73 mAP that way, and this protocol exists only to compare
with it. In both, queries left with no true match are skipped; CMC rank-k counts a hit when any true match is
among the first k; AP is non-interpolated; INP is matches / rank of the hardest match. (The paper's code
reported recall@k as its "rank-k"; here rank-k is CMC under either protocol.)
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeVar, get_args

import numpy as np

from genreid.service.core.similarity import code_distances

if TYPE_CHECKING:
    from genreid.service.core.reranking import RerankParams

_CHUNK = 512  # queries per block: bounds memory at the official size (3,368 x 15,913)

EvalProtocol = Literal["standard", "lenient"]
PROTOCOLS: tuple[EvalProtocol, ...] = get_args(EvalProtocol)


@dataclass(frozen=True)
class RetrievalMetrics:
    mAP: float
    rank1: float
    rank5: float
    rank10: float
    mINP: float
    queries: int
    gallery: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _block_stats(
    dist: np.ndarray,
    q_pids: np.ndarray,
    q_cams: np.ndarray,
    g_pids: np.ndarray,
    g_cams: np.ndarray,
    *,
    protocol: EvalProtocol,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per query of one block: first-hit rank, AP, INP and whether it has any valid match."""
    order = np.argsort(dist, axis=1, kind="stable")
    matches = g_pids[order] == q_pids[:, None]
    if protocol == "standard":
        keep = ~(matches & (g_cams[order] == q_cams[:, None]))
        # Drop removed gallery items by moving kept ones to the front, preserving their order.
        compact = np.argsort(~keep, axis=1, kind="stable")
        matches = np.take_along_axis(matches & keep, compact, axis=1)
    num_matches = matches.sum(1)
    valid = num_matches > 0
    first_hit = np.where(valid, matches.argmax(1), -1)
    hits_so_far = np.cumsum(matches, axis=1)
    ranks = np.arange(1, matches.shape[1] + 1)
    precision_sum = np.where(matches, hits_so_far / ranks, 0.0).sum(1)
    ap = np.divide(precision_sum, num_matches, out=np.zeros(len(dist)), where=valid)
    last_hit = matches.shape[1] - 1 - np.argmax(matches[:, ::-1], axis=1)
    inp = np.divide(num_matches, last_hit + 1.0, out=np.zeros(len(dist)), where=valid)
    return first_hit, ap, inp, valid


def evaluate_ranking(
    dist: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    *,
    protocol: EvalProtocol = "standard",
) -> RetrievalMetrics:
    """Metrics from a (Q, G) distance matrix and the person/camera labels of both sides, under `protocol`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_cams, g_cams = np.asarray(q_cams), np.asarray(g_cams)
    if dist.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"distance matrix {dist.shape} does not match {len(q_pids)} queries x {len(g_pids)}")
    first_hits, aps, inps, valids = [], [], [], []
    for start in range(0, len(q_pids), _CHUNK):
        block = slice(start, start + _CHUNK)
        stats = _block_stats(dist[block], q_pids[block], q_cams[block], g_pids, g_cams, protocol=protocol)
        for bucket, value in zip((first_hits, aps, inps, valids), stats, strict=True):
            bucket.append(value)
    valid = np.concatenate(valids)
    if not valid.any():
        raise ValueError("no query has a true match in the gallery")
    first_hit = np.concatenate(first_hits)[valid]

    def cmc(k: int) -> float:
        return float((first_hit < k).mean())

    return RetrievalMetrics(
        mAP=float(np.concatenate(aps)[valid].mean()),
        rank1=cmc(1),
        rank5=cmc(5),
        rank10=cmc(10),
        mINP=float(np.concatenate(inps)[valid].mean()),
        queries=int(valid.sum()),
        gallery=len(g_pids),
    )


def evaluate_codes(
    q_codes: np.ndarray,
    g_codes: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    *,
    protocol: EvalProtocol = "standard",
) -> RetrievalMetrics:
    """Rank the gallery as the service does (genreid.service.core.similarity) and score it."""
    return evaluate_ranking(code_distances(q_codes, g_codes), q_pids, g_pids, q_cams, g_cams, protocol=protocol)


class Labelled(Protocol):
    """A split's crops as the evaluator needs them labelled (training's ImageSet, the CLI's MarketCrops)."""

    @property
    def person_ids(self) -> np.ndarray: ...

    @property
    def cameras(self) -> np.ndarray: ...


Split = TypeVar("Split", bound=Labelled)


class Evaluator(Generic[Split]):
    """A query and a gallery split, embedded once, scored under either protocol by any ranking: by code
    distance, re-ranked per query exactly as /query?rerank=true ranks (reranking.rerank_search over a
    gallery store holding the gallery codes), or re-ranked with all queries together (the evaluation tools'
    variant, a reference)."""

    def __init__(self, embed: Callable[[Split], np.ndarray], query: Split, gallery: Split):
        self.q_codes, self.g_codes = embed(query), embed(gallery)
        self.query, self.gallery = query, gallery

    def metrics(self, *, rerank: RerankParams | None = None, all_queries: bool = False,
                protocol: EvalProtocol = "standard") -> RetrievalMetrics:
        if all_queries:
            if rerank is None:
                raise ValueError("all_queries re-ranks: give the re-ranking parameters")
            from genreid.service.core.reranking import rerank_all

            dist = rerank_all(self.q_codes, self.g_codes, rerank)
        elif rerank is None:
            dist = code_distances(self.q_codes, self.g_codes)
        else:
            dist = np.empty((len(self.q_codes), len(self.g_codes)))
            np.put_along_axis(dist, self.served_orders(rerank), np.arange(len(self.g_codes), dtype=float)[None, :],
                              axis=1)
        return evaluate_ranking(dist, self.query.person_ids, self.gallery.person_ids, self.query.cameras,
                                self.gallery.cameras, protocol=protocol)

    def served_orders(self, rerank: RerankParams) -> np.ndarray:
        """(Q, G) gallery indices, best first, as /query?rerank=true returns them with k = G: the gallery codes in
        a temporary embedded store (the service's default backend), searched and re-ranked by the service's code."""
        from genreid.service.core.reranking import rerank_search
        from genreid.service.store import NewEntry
        from genreid.service.store.embedded import EmbeddedStore

        with tempfile.TemporaryDirectory(prefix="genreid-evaluate-") as scratch:
            store = EmbeddedStore(Path(scratch), code_dim=self.g_codes.shape[1], model_id=None)
            try:
                added = store.add([NewEntry(person_id=str(pid)) for pid in self.gallery.person_ids], self.g_codes)
                rows = rerank_search(store, self.q_codes, len(added), params=rerank)
            finally:
                store.close()
        index = {entry.entry_id: i for i, entry in enumerate(added)}
        return np.array([[index[m.entry.entry_id] for m in row] for row in rows], dtype=np.int64)
