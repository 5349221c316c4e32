"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) of a gallery store's answers, over a small neighbourhood.

A query's top-K candidates come from the store's own search (with the query's filter); each candidate's own
nearest entries come from the neighbourhoods the store keeps for every entry (service/store/neighbourhoods.py),
or, under a filter that leaves out more than a few ids, from one batched search of the candidates' codes. The
query, its candidates and their neighbours are the whole world the published algorithm then runs in
(k-reciprocal sets, local query expansion, Jaccard distance), so a query costs the same at 2,000 entries as at
100,000 apart from the store's search, and nothing is cached by the server (replicas sharing a Milvus gallery
see each other's writes at once). Entries past the top K keep the code-distance order after the re-ranked ones.

Distances inside the algorithm are d^2 / 4 for the code distance d (core.similarity), in [0, 1]: the same order
as d, and a fixed scale instead of the reference code's per-column maximum, which would depend on the neighbourhood.
`rerank_all` runs the same algorithm with every query and gallery code as the world (the evaluation tools' variant,
a reference row: it needs all queries at once and is quadratic in the gallery).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from genreid.service.core.similarity import unit_length
from genreid.service.store.base import NO_FILTER, Entry, EntryFilter, GalleryStore

if TYPE_CHECKING:
    from genreid.service.core.model_json import ModelMetadata

_CHUNK = 256  # rows per block of query expansion: bounds memory in the all-queries variant


@dataclass(frozen=True)
class RerankParams:
    """Zhong et al.'s k1 (k-reciprocal neighbours), k2 (query expansion) and lambda (weight of the original
    distance), and K: how many of a query's nearest entries are re-ranked. Each model carries its own, chosen on
    its validation identities (model.json's `rerank`)."""

    k1: int
    k2: int
    lambda_: float
    candidates: int

    def __post_init__(self) -> None:
        if self.k1 < 1 or self.k2 < 1 or self.candidates < 1 or not 0.0 <= self.lambda_ <= 1.0:
            raise ValueError(f"re-ranking parameters out of range: {self}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RerankParams:
        return cls(k1=int(raw["k1"]), k2=int(raw["k2"]), lambda_=float(raw["lambda"]),
                   candidates=int(raw["candidates"]))

    @classmethod
    def from_model(cls, metadata: ModelMetadata) -> RerankParams | None:
        """The parameters an exported model carries (model.json `rerank`), or None for a model tuned without."""
        return None if metadata.rerank is None else cls.from_dict(metadata.rerank)

    @property
    def neighbours_kept(self) -> int:
        """How many nearest others a gallery keeps per entry for these parameters: the most the algorithm reads
        (k1 or k2), and one more, so a query from a stored entry, which leaves that entry out, still has enough."""
        return max(self.k1, self.k2) + 1

    def as_dict(self) -> dict[str, int | float]:
        values = asdict(self)
        values["lambda"] = values.pop("lambda_")
        return values


def neighbours_kept(metadata: ModelMetadata) -> int:
    """How many nearest others a gallery for this model keeps per entry (0 for a model without re-ranking)."""
    params = RerankParams.from_model(metadata)
    return 0 if params is None else params.neighbours_kept


@dataclass(frozen=True)
class RankedMatch:
    entry: Entry
    distance: float  # between unit-length codes (genreid.service.core.similarity), as the store found it
    rerank_distance: float | None  # (1 - lambda) * Jaccard + lambda * distance^2 / 4; None past the top K


def _nearest_first(keys: np.ndarray, width: int) -> np.ndarray:
    """(n, width) column indices of each row's `width` smallest keys, smallest first, equal keys by column (as a
    stable sort of the whole row orders them). A partition of the values, then a sort of the `width` kept per row:
    an index partition (argpartition) of a few hundred columns costs twice as much."""
    if width >= keys.shape[1]:
        return np.argsort(keys, axis=1, kind="stable")
    bound = np.partition(keys, width - 1, axis=1)[:, width - 1 : width]
    kept = keys <= bound
    flat = np.flatnonzero(kept)  # row by row, columns ascending
    if len(flat) != len(keys) * width:  # ties at a row's bound: keep those in the first columns only
        at_bound = keys == bound
        kept &= ~at_bound | (np.cumsum(at_bound, axis=1) <= width - np.count_nonzero(keys < bound, axis=1)[:, None])
        flat = np.flatnonzero(kept)
    columns = flat.reshape(len(keys), width) % keys.shape[1]
    order = np.argsort(np.take_along_axis(keys, columns, axis=1), axis=1, kind="stable")
    return np.take_along_axis(columns, order, axis=1)


def _reciprocal(rank: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each of `rows`' k+1 nearest (itself first) and which of them count the row among their own k+1 nearest."""
    forward = rank[rows, : k + 1]
    return forward, (rank[forward, : k + 1] == rows[:, None, None]).any(-1)


def _weights(nearness: np.ndarray, rank: np.ndarray, rows: np.ndarray, k1: int) -> np.ndarray:
    """(len(rows), n) Gaussian-kernel weights of each of `rows` on its expanded k-reciprocal set (eq. 7-10, rows
    sum to 1); only the rows query expansion reads, since the dense steps cost as much as the rows they cover."""
    n = len(nearness)
    half = min(int(np.around(k1 / 2)), n - 1)
    own_forward, own_mutual = _reciprocal(rank, k1, rows)
    local = np.arange(len(rows))
    in_set = np.zeros((len(rows), n), dtype=bool)
    in_set[local[:, None], own_forward] = own_mutual
    # A k-reciprocal neighbour's own (k1/2)-reciprocal set joins when 2/3 of it is already in the row's set.
    half_forward, half_mutual = _reciprocal(rank, half, np.arange(n))
    their_sets, their_mutual = half_forward[own_forward], half_mutual[own_forward]  # (rows, k1+1, half+1)
    overlap = (their_mutual & in_set[local[:, None, None], their_sets]).sum(-1)
    joins = own_mutual & (overlap > 2.0 / 3.0 * their_mutual.sum(-1))
    row, neighbour, member = np.nonzero(joins[:, :, None] & their_mutual)
    expanded = in_set.copy()
    expanded[row, their_sets[row, neighbour, member]] = True
    row, column = np.nonzero(expanded)
    kernel = np.exp(-_original(nearness, rows[row], column))
    weights = np.zeros((len(rows), n))
    weights[row, column] = kernel / np.bincount(row, weights=kernel, minlength=len(rows))[row]
    return weights


def _expanded(weights: np.ndarray, position: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Local query expansion (eq. 12): each row's weights averaged over its nearest (`nearest`, world indices;
    `position` maps them to rows of `weights`)."""
    return np.concatenate([weights[position[nearest[start:start + _CHUNK]]].mean(1)
                           for start in range(0, len(nearest), _CHUNK)])


def _jaccard(probes: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(P, T) Jaccard distances between rows of weights summing to 1 (eq. 11: 1 - sum min / sum max), summed
    over the columns both rows hold, as the reference code's inverted index does."""
    p_row, p_col = np.nonzero(probes)
    t_col, t_row = np.nonzero(targets.T)  # sorted by column: each column's targets are one run
    starts = np.searchsorted(t_col, np.arange(targets.shape[1] + 1))
    counts = starts[p_col + 1] - starts[p_col]
    which = np.repeat(np.arange(len(p_row)), counts)
    run_offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    other = np.repeat(starts[p_col], counts) + run_offsets
    shared = np.minimum(probes[p_row[which], p_col[which]], targets[t_row[other], t_col[other]])
    cells = p_row[which] * len(targets) + t_row[other]
    total = np.bincount(cells, weights=shared, minlength=len(probes) * len(targets)).reshape(len(probes), -1)
    return 1.0 - total / (2.0 - total)


def _nearness(unit: np.ndarray) -> np.ndarray:
    """(n, n) float32 keys in the order of the original distance d^2 / 4 = (1 - cosine) / 2 between unit-length
    codes, ties included: -cosine, at least -1 (a product rounded past 1 is distance 0), and -1 on the diagonal.
    One float32 matrix where there were two float64 ones (a quarter of the all-queries variant's memory): the
    distances themselves are computed only where the algorithm reads them (`_original`)."""
    nearness = unit @ unit.T  # a world of a few hundred codes: the server runs BLAS on the calling thread
    np.negative(nearness, out=nearness)
    np.maximum(nearness, -1.0, out=nearness)
    np.fill_diagonal(nearness, -1.0)
    return nearness


def _original(nearness: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The original distances d^2 / 4 at (rows, columns), in float64 (numpy's indexing rules apply)."""
    return 0.5 + 0.5 * nearness[rows, columns].astype(np.float64)


def reranked_distances(codes: np.ndarray, probes: np.ndarray, targets: np.ndarray, params: RerankParams
                       ) -> np.ndarray:
    """(len(probes), len(targets)) final distances of the published algorithm with `codes` as the whole world;
    `probes` and `targets` index into it."""
    nearness = _nearness(unit_length(codes))
    k1 = min(params.k1, len(nearness) - 1)
    rank = _nearest_first(nearness, max(k1 + 1, params.k2))
    expansion = rank[:, : min(params.k2, rank.shape[1])]  # each row's k2 nearest, itself first
    rows = np.unique(expansion[np.concatenate([probes, targets])])
    position = np.zeros(len(nearness), dtype=np.int64)
    position[rows] = np.arange(len(rows))
    weights = _weights(nearness, rank, rows, k1)
    jaccard = _jaccard(_expanded(weights, position, expansion[probes]),
                       _expanded(weights, position, expansion[targets]))
    return (1.0 - params.lambda_) * jaccard + params.lambda_ * _original(nearness, *np.ix_(probes, targets))


def rerank_all(q_codes: np.ndarray, g_codes: np.ndarray, params: RerankParams) -> np.ndarray:
    """(Q, G) final distances with all queries and the whole gallery re-ranked together (the query-query term
    included, as torchreid and fast-reid evaluate): a reference, not what /query serves."""
    codes = np.concatenate([q_codes, g_codes])
    return reranked_distances(codes, np.arange(len(q_codes)), np.arange(len(q_codes), len(codes)), params)


def rerank_search(store: GalleryStore, queries: np.ndarray, k: int, entry_filter: EntryFilter = NO_FILTER, *,
                  params: RerankParams) -> list[list[RankedMatch]]:
    """Like `store.search`, each query's top `params.candidates` re-ranked over its neighbourhood, in five store
    calls for the whole batch, read together (a remote engine waits for its clock once): its search (ids only),
    the candidates' codes, their kept neighbourhoods (or one search of their codes under the same filter, so no
    excluded entry comes in), the neighbours' codes and the entries of the k returned. An entry removed in
    between is left out."""
    queries = np.asarray(queries, dtype=np.float32).reshape(-1, store.code_dim)
    with store.reading_together():
        found = store.nearest_ids(queries, max(k, params.candidates), entry_filter)
        heads = [row[: params.candidates] for row in found]
        candidates = list(dict.fromkeys(entry_id for head in heads for entry_id, _ in head))
        codes = store.known_unit_codes(candidates)
        neighbours = _neighbours(store, [i for i in candidates if i in codes], codes, max(params.k1, params.k2),
                                 entry_filter)
        codes |= store.known_unit_codes(list({i for row in neighbours.values() for i in row} - codes.keys()))
        ranked = [_reranked_row(query, head, row[len(head):], codes, neighbours, params)[:k]
                  for query, head, row in zip(queries, heads, found, strict=True)]
        entries = {entry.entry_id: entry for entry in store.get(list({i for row in ranked for i, _, _ in row}))}
    return [[RankedMatch(entries[i], distance, final) for i, distance, final in row if i in entries]
            for row in ranked]


def _neighbours(store: GalleryStore, entry_ids: list[int], codes: dict[int, np.ndarray], count: int,
                entry_filter: EntryFilter) -> dict[int, list[int]]:
    """Each entry's `count` nearest other entries that the filter admits: the store's kept neighbourhoods when
    the filter at most leaves out a few ids (those ids dropped from lists kept that much longer), else searched
    under the filter, as for entries the store has no kept neighbourhood for."""
    excluded = entry_filter.exclude_ids
    kept = (store.neighbourhoods(entry_ids, count + len(excluded))
            if entry_filter.only_excludes_ids else None) or {}
    found = {i: [n for n in row if n not in excluded][:count] for i, row in kept.items()}
    searched = [i for i in entry_ids if i not in found]
    rows = store.nearest_ids(np.stack([codes[i] for i in searched]), count + 1, entry_filter) if searched else []
    found |= {i: [n for n, _ in row if n != i][:count] for i, row in zip(searched, rows, strict=True)}
    return found


def _reranked_row(query: np.ndarray, head: list[tuple[int, float]], tail: list[tuple[int, float]],
                  codes: dict[int, np.ndarray], neighbours: dict[int, list[int]], params: RerankParams
                  ) -> list[tuple[int, float, float | None]]:
    """(entry id, distance, re-ranked distance or None past the head) best first."""
    head = [(i, d) for i, d in head if i in codes]
    if not head:
        return [(i, d, None) for i, d in tail]
    world = list(dict.fromkeys([i for i, _ in head] + [n for i, _ in head for n in neighbours[i] if n in codes]))
    local = np.stack([query, *(codes[i] for i in world)])
    final = reranked_distances(local, np.zeros(1, dtype=np.int64), np.arange(1, len(head) + 1), params)[0]
    order = np.argsort(final, kind="stable")  # ties keep the code-distance order
    return [(head[j][0], head[j][1], float(final[j])) for j in order] + [(i, d, None) for i, d in tail]
