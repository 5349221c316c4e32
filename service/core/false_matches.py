"""What the match threshold means per query: how often a stranger's best match passes it as a gallery grows.

The threshold (model.json's `match_threshold`) is calibrated at 1 % false matches per *pair* of crops. A query
against N entries makes N pairs, so the chance that the best of them passes grows with N. Measured on a
Market-1501 query/gallery split: every query searches a gallery from which its own identity is removed (a person
who was never enrolled), of N crops drawn at random from the rest, several draws per N; the share of queries whose
best match is within the threshold is the per-query false-match rate at N. Sizes beyond the split's gallery are
extrapolated from the per-pair rate on the same codes, assuming independent pairs, and labelled so.

`measure` works on codes (no model), `measure_market` embeds a Market-1501 folder first; `genreid
calibrate-false-matches` records the result in model.json and /health turns it into an estimate (`estimate`) for
the gallery's current size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from genreid.service.core.imaging import preprocess
from genreid.service.core.market import check_layout, read_split
from genreid.service.core.model_json import FalseMatches, GalleryFalseMatches
from genreid.service.core.similarity import code_distances

if TYPE_CHECKING:
    from genreid.service.encoders import Encoders

SIZES = (100, 1_000, 10_000)  # gallery sizes measured by drawing, when the split has more strangers than that
EXTRAPOLATED = (100_000, 1_000_000)
MEASURED = "measured"
INTERPOLATED = "interpolated (log gallery size)"
INDEPENDENT_PAIRS = "extrapolated (independent pairs)"
_CHUNK = 256  # crops per Inv-Id run


@dataclass(frozen=True)
class GalleryRate:
    """The per-query false-match rate at one gallery size, with what a record leaves out."""

    gallery: int
    rate: float
    kind: str
    spread: float | None = None  # standard deviation of the rate over the random galleries drawn
    threshold_at_1pct: float | None = None  # the distance that 1 % of these queries' best strangers fall under


@dataclass(frozen=True)
class Measurement:
    """What the bench prints in full; `record` keeps what a server needs to estimate the rate for its gallery."""

    threshold: float
    per_pair: float  # the share of strangers' pairs within the threshold
    queries: int
    gallery_crops: int
    rows: tuple[GalleryRate, ...]  # measured sizes ascending (the last: every stranger), then extrapolated ones

    def record(self, *, data_name: str, precision: str) -> FalseMatches:
        """The model.json section: rates and sizes, the data they were measured on, the codes' precision."""
        return FalseMatches(
            per_pair=self.per_pair,
            per_query=tuple(GalleryFalseMatches(gallery=row.gallery, rate=row.rate, kind=row.kind)
                            for row in self.rows),
            measured_on=f"{data_name}: {self.queries} queries, {self.gallery_crops} gallery crops, identity removed",
            precision=precision,
        )


def independent_pairs(per_pair: float, gallery: int) -> float:
    """1 - (1 - per_pair)^gallery: the chance that one of `gallery` independent strangers' pairs passes."""
    return 1.0 - (1.0 - per_pair) ** gallery


def strangers_best(distances: np.ndarray, *, query_ids: np.ndarray, gallery_ids: np.ndarray, size: int | None,
                   rng: np.random.Generator) -> np.ndarray:
    """Each query's smallest distance to `size` random gallery crops of other identities (all of them: None)."""
    best = np.empty(len(query_ids))
    for row, person in enumerate(query_ids):
        others = np.flatnonzero(gallery_ids != person)
        chosen = others if size is None or size >= len(others) else rng.choice(others, size, replace=False)
        best[row] = distances[row, chosen].min()
    return best


def measure(query_codes: np.ndarray, gallery_codes: np.ndarray, *, query_ids: np.ndarray, gallery_ids: np.ndarray,
            threshold: float, draws: int, seed: int, sizes: tuple[int, ...] = SIZES) -> Measurement:
    """Per-query false-match rates of the codes at each of `sizes` smaller than every query's count of strangers
    (`draws` random galleries each), with all strangers, and extrapolated to EXTRAPOLATED sizes."""
    if draws < 1:
        raise ValueError(f"draws must be at least 1, not {draws}")
    query_ids, gallery_ids = np.asarray(query_ids), np.asarray(gallery_ids)
    distances = code_distances(query_codes, gallery_codes)
    strangers = query_ids[:, None] != gallery_ids[None, :]
    counts = strangers.sum(1)
    if counts.min() == 0:
        raise ValueError("a query has no gallery crop of another identity")
    per_pair = float((distances[strangers] <= threshold).mean())
    rng = np.random.default_rng(seed)
    rows = []
    for size in (*(size for size in sizes if size < counts.min()), None):
        bests = [strangers_best(distances, query_ids=query_ids, gallery_ids=gallery_ids, size=size, rng=rng)
                 for _ in range(1 if size is None else draws)]
        rates = [float((best <= threshold).mean()) for best in bests]
        rows.append(GalleryRate(gallery=int(round(counts.mean())) if size is None else size,
                                rate=round(float(np.mean(rates)), 4), kind=MEASURED,
                                spread=round(float(np.std(rates)), 4),
                                threshold_at_1pct=round(float(np.quantile(np.concatenate(bests), 0.01)), 4)))
    rows += [GalleryRate(gallery=size, rate=round(independent_pairs(per_pair, size), 4), kind=INDEPENDENT_PAIRS)
             for size in EXTRAPOLATED]
    return Measurement(threshold=threshold, per_pair=round(per_pair, 5), queries=len(query_ids),
                       gallery_crops=len(gallery_ids), rows=tuple(rows))


def measure_market(root: Path, encoders: Encoders, *, draws: int, seed: int,
                   sample_queries: int | None = None) -> Measurement:
    """`measure` on a Market-1501 folder's query/ and bounding_box_test/, embedded as `encoders` serve them, at
    their model's match threshold; `sample_queries`: that many queries drawn at random (a quick run)."""
    threshold = encoders.metadata.match_threshold
    if threshold is None:
        raise ValueError(f"{encoders.models_dir}: model.json has no match_threshold to measure")
    root = check_layout(root, ("query", "gallery"))
    query, gallery = read_split(root, "query"), read_split(root, "gallery")
    if sample_queries is not None:
        keep = np.random.default_rng(seed).choice(len(query), min(sample_queries, len(query)), replace=False)
        query = [query[i] for i in sorted(keep)]

    def embed(paths: list[Path]) -> np.ndarray:
        return np.concatenate([
            encoders.identity(np.stack([preprocess(path, encoders.identity_resolution)
                                        for path in paths[start:start + _CHUNK]]))
            for start in range(0, len(paths), _CHUNK)])

    return measure(embed([crop.path for crop in query]), embed([crop.path for crop in gallery]),
                   query_ids=np.array([crop.person_id for crop in query]),
                   gallery_ids=np.array([crop.person_id for crop in gallery]),
                   threshold=threshold, draws=draws, seed=seed)


def estimate(record: FalseMatches, gallery: int) -> GalleryFalseMatches:
    """The per-query rate at a gallery of `gallery` entries: between measured sizes, interpolated linearly in
    log(size); outside them, from the per-pair rate as if pairs were independent (pairs that share a query are
    not: for the shipped model that overstates every measured rate)."""
    measured = sorted((row for row in record.per_query if row.kind == MEASURED), key=lambda row: row.gallery)
    if not measured or not measured[0].gallery <= gallery <= measured[-1].gallery:
        return GalleryFalseMatches(gallery=gallery, rate=round(independent_pairs(record.per_pair, gallery), 4),
                                   kind=INDEPENDENT_PAIRS)
    sizes = [row.gallery for row in measured]
    rate = float(np.interp(np.log(gallery), np.log(sizes), [row.rate for row in measured]))
    return GalleryFalseMatches(gallery=gallery, rate=round(rate, 4),
                               kind=MEASURED if gallery in sizes else INTERPOLATED)
