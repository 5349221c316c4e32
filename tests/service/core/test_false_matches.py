"""Per-query false matches (genreid.service.core.false_matches): measured on codes whose answers are known, on a
Market-1501 folder through the tiny models, and the estimate /health gives for a gallery's size."""

from __future__ import annotations

from math import comb, log
from pathlib import Path

import numpy as np
import pytest

from genreid.service.core.false_matches import (
    EXTRAPOLATED,
    INDEPENDENT_PAIRS,
    INTERPOLATED,
    MEASURED,
    estimate,
    measure,
    measure_market,
    strangers_best,
)
from genreid.service.core.model_json import FalseMatches, GalleryFalseMatches
from genreid.service.encoders import Encoders

E = np.eye(4, dtype=np.float32)


def test_strangers_best_leaves_the_querys_identity_out():
    distances = np.array([[0.0, 0.3, 0.5], [0.4, 0.1, 0.2]])
    best = strangers_best(distances, query_ids=np.array([7, 8]), gallery_ids=np.array([7, 8, 9]), size=None,
                          rng=np.random.default_rng(0))
    np.testing.assert_array_equal(best, [0.3, 0.2])


def test_a_query_whose_strangers_are_all_far_never_passes_though_its_own_crops_are_near():
    """A's strangers (B's crops) all lie on A's code; B's (A's crops) all far. B's own crops lie on its code, so
    only removing the query's identity keeps B's rate at 0: half the queries pass at every size, exactly."""
    gallery = np.stack([E[1]] * 200 + [E[0]] * 200)  # A's crops far from both queries, B's on both
    result = measure(np.stack([E[0], E[0]]), gallery, query_ids=np.array(["A", "B"]),
                     gallery_ids=np.array(["A"] * 200 + ["B"] * 200), threshold=0.5, draws=3, seed=0,
                     sizes=(10, 100, 200))
    assert result.per_pair == 0.5 and (result.queries, result.gallery_crops) == (2, 400)
    measured = [row for row in result.rows if row.kind == MEASURED]
    assert [row.gallery for row in measured] == [10, 100, 200]  # 200: every stranger, the drawn 200 left out
    assert all(row.rate == 0.5 and row.spread == 0.0 for row in measured)
    assert [(row.gallery, row.rate, row.kind) for row in result.rows[3:]] == [
        (size, 1.0, INDEPENDENT_PAIRS) for size in EXTRAPOLATED]


def test_drawn_galleries_pass_as_often_as_the_hypergeometric_answer():
    """Each query's 20 strangers hold one near crop: a gallery of 10 of them holds it with probability 1/2, of 5
    with 1/4 (1 - C(19, s) / C(20, s))."""
    queries, strangers = 200, np.stack([E[0] * 0.99 + E[1] * 0.1] + [E[2]] * 19)
    gallery = np.concatenate([strangers, np.stack([E[0]] * 3)])
    ids = np.array([1] * 20 + [0] * 3)
    result = measure(np.tile(E[0], (queries, 1)), gallery, query_ids=np.zeros(queries, int), gallery_ids=ids,
                     threshold=0.5, draws=5, seed=1, sizes=(5, 10))
    for row, size in zip(result.rows[:2], (5, 10), strict=True):
        assert row.rate == pytest.approx(1 - comb(19, size) / comb(20, size), abs=0.05), size
    assert result.rows[2].gallery == 20 and result.rows[2].rate == 1.0
    assert result.per_pair == pytest.approx(1 / 20)


def test_measure_refuses_what_it_cannot_measure():
    with pytest.raises(ValueError, match="draws"):
        measure(E[:1], E[1:], query_ids=np.array([0]), gallery_ids=np.array([1]), threshold=0.5, draws=0, seed=0)
    with pytest.raises(ValueError, match="no gallery crop of another identity"):
        measure(E[:1], E[1:], query_ids=np.array([0]), gallery_ids=np.array([0]), threshold=0.5, draws=1, seed=0)


def test_on_a_market_folder_through_the_tiny_models(tmp_path: Path, models_dir: Path, crop):
    """Three query people, each with two gallery crops of their own (near: removed), and one distractor that
    looks like person 1: only person 1's queries find a stranger within the threshold."""
    names = {"query": [(f"{p:04d}_c1s1_000001_00.png", crop(p, 7)) for p in (1, 2, 3)],
             "bounding_box_test": [(f"{p:04d}_c2s1_00000{v}_00.png", crop(p, v)) for p in (1, 2, 3) for v in (0, 5)]
             + [("0000_c3s1_000009_00.png", crop(1, 9))]}
    for folder, files in names.items():
        (tmp_path / folder).mkdir()
        for name, data in files:
            (tmp_path / folder / name).write_bytes(data)
    encoders = Encoders(models_dir, device="cpu", threads=1)
    result = measure_market(tmp_path, encoders, draws=2, seed=0)
    assert (result.queries, result.gallery_crops, result.threshold) == (3, 7, encoders.metadata.match_threshold)
    assert result.per_pair == pytest.approx(1 / 15, abs=1e-5)  # 3 queries x 5 strangers, one pair near
    assert [(row.gallery, row.rate, row.kind) for row in result.rows[:1]] == [(5, pytest.approx(1 / 3, abs=1e-4),
                                                                              MEASURED)]
    record = result.record(data_name="tiny", precision="float32")
    assert record.measured_on == "tiny: 3 queries, 7 gallery crops, identity removed"
    assert [(row.gallery, row.kind) for row in record.per_query] == [(5, MEASURED), *((size, INDEPENDENT_PAIRS)
                                                                                      for size in EXTRAPOLATED)]
    assert record.per_pair == result.per_pair and record.precision == "float32"


RECORD = FalseMatches(
    per_pair=0.01,
    per_query=(GalleryFalseMatches(gallery=10_000, rate=0.9, kind=MEASURED),
               GalleryFalseMatches(gallery=100, rate=0.5, kind=MEASURED),
               GalleryFalseMatches(gallery=100_000, rate=1.0, kind=INDEPENDENT_PAIRS)),
    measured_on="synthetic", precision="int8",
)


def test_the_estimate_at_measured_sizes_is_the_measurement():
    assert estimate(RECORD, 100) == GalleryFalseMatches(gallery=100, rate=0.5, kind=MEASURED)
    assert estimate(RECORD, 10_000) == GalleryFalseMatches(gallery=10_000, rate=0.9, kind=MEASURED)


def test_between_measured_sizes_the_estimate_is_linear_in_log_size():
    assert estimate(RECORD, 1_000) == GalleryFalseMatches(gallery=1_000, rate=0.7, kind=INTERPOLATED)
    expected = 0.5 + 0.4 * (log(300) - log(100)) / (log(10_000) - log(100))
    assert estimate(RECORD, 300).rate == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("size", [0, 1, 50, 99, 10_001, 100_000, 10**7])
def test_outside_the_measured_sizes_the_estimate_assumes_independent_pairs(size: int):
    found = estimate(RECORD, size)
    assert found.kind == INDEPENDENT_PAIRS and found.gallery == size
    assert found.rate == pytest.approx(1 - 0.99**size, abs=1e-4)


def test_a_record_without_measured_sizes_is_extrapolated_everywhere():
    record = FalseMatches(per_pair=0.001, per_query=(), measured_on="synthetic", precision="int8")
    assert estimate(record, 1_000) == GalleryFalseMatches(gallery=1_000, rate=round(1 - 0.999**1_000, 4),
                                                          kind=INDEPENDENT_PAIRS)
