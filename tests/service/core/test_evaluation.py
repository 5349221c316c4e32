"""Market-1501 retrieval metrics (genreid.service.core.evaluation) against hand-computed cases and a straight port of
torchreid's eval_market1501 loop, under the standard protocol and the paper's lenient one."""

from __future__ import annotations

import numpy as np
import pytest

from genreid.service.core.evaluation import PROTOCOLS, EvalProtocol, RetrievalMetrics, evaluate_codes, evaluate_ranking
from genreid.service.core.similarity import code_distances, euclidean_distances, unit_length


def reference_market1501(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 10,
    *,
    lenient: bool = False,
) -> tuple[np.ndarray, float, float, int]:
    """torchreid.metrics.rank.eval_market1501, one query at a time: (cmc[:max_rank], mAP, mINP, valid); `lenient`
    skips the same-camera removal, as the paper's main.py does (`new_row = row`)."""
    num_q, num_g = distmat.shape
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    num_valid_q = 0
    for q_idx in range(num_q):
        q_pid, q_camid = q_pids[q_idx], q_camids[q_idx]
        order = indices[q_idx]
        remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid) & (not lenient)
        keep = np.invert(remove)
        raw_cmc = matches[q_idx][keep]
        if not np.any(raw_cmc):
            continue  # this query identity does not appear in the gallery (other cameras)
        cmc = raw_cmc.cumsum()
        pos_idx = np.where(raw_cmc == 1)
        max_pos_idx = np.max(pos_idx)
        all_inp.append(cmc[max_pos_idx] / (max_pos_idx + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_valid_q += 1
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = np.asarray([x / (i + 1.0) for i, x in enumerate(tmp_cmc)]) * raw_cmc
        all_ap.append(tmp_cmc.sum() / num_rel)
    assert num_valid_q > 0
    cmc_curve = np.asarray(all_cmc).astype(np.float64).sum(0) / num_valid_q
    return cmc_curve, float(np.mean(all_ap)), float(np.mean(all_inp)), num_valid_q


# ------------------------------------------------------------------------------------------ hand-made case


def test_hand_computed_case() -> None:
    # Gallery:      g0      g1      g2      g3          g4      g5
    #   person       1       1       2       0 (distr.)  1       3
    #   camera       1       2       2       3           3       2
    g_pids = np.array([1, 1, 2, 0, 1, 3])
    g_cams = np.array([1, 2, 2, 3, 3, 2])
    # Queries: q0 = person 1 camera 1, q1 = person 2 camera 1, q2 = person 3 camera 2.
    q_pids = np.array([1, 2, 3])
    q_cams = np.array([1, 1, 2])
    dist = np.array(
        [
            # q0 ranking: g0 g3 g1 g2 g5 g4. g0 is person 1 seen by camera 1 like the query: removed, though
            # it is the nearest. What is left: g3 (distractor), g1 HIT, g2, g5, g4 HIT -> hits at ranks 2, 5.
            #   AP = (1/2 + 2/5) / 2 = 0.45; INP = 2 matches / rank 5 of the last = 0.4; first hit rank 2.
            [0.1, 0.3, 0.4, 0.2, 0.6, 0.5],
            # q1 ranking: g2 g0 g1 g3 g4 g5; its only true match g2 (camera 2) is first.
            #   AP = 1; INP = 1 / 1 = 1; first hit rank 1.
            [0.2, 0.3, 0.1, 0.4, 0.5, 0.6],
            # q2: its only gallery crop g5 was taken by its own camera 2 -> no valid match -> skipped.
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
        ]
    )
    metrics = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    assert metrics.queries == 2
    assert metrics.gallery == 6
    assert metrics.mAP == pytest.approx((0.45 + 1.0) / 2, abs=1e-12)  # 0.725
    assert metrics.mINP == pytest.approx((0.4 + 1.0) / 2, abs=1e-12)  # 0.7
    assert metrics.rank1 == 0.5  # only q1 hits first
    assert metrics.rank5 == 1.0
    assert metrics.rank10 == 1.0


def test_hand_computed_case_lenient() -> None:
    # The case above under the paper's lenient protocol: every gallery crop stays.
    g_pids = np.array([1, 1, 2, 0, 1, 3])
    g_cams = np.array([1, 2, 2, 3, 3, 2])
    q_pids, q_cams = np.array([1, 2, 3]), np.array([1, 1, 2])
    dist = np.array([[0.1, 0.3, 0.4, 0.2, 0.6, 0.5], [0.2, 0.3, 0.1, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    metrics = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, protocol="lenient")
    # q0: g0 (same camera, now kept) HIT, g3, g1 HIT, g2, g5, g4 HIT -> hits at ranks 1, 3, 6.
    #   AP = (1/1 + 2/3 + 3/6) / 3 = 13/18; INP = 3 / 6 = 0.5; first hit rank 1.
    # q1: unchanged, AP = INP = 1. q2: its same-camera crop g5 is kept and ranked first: valid, AP = INP = 1.
    assert metrics.queries == 3
    assert metrics.gallery == 6
    assert metrics.mAP == pytest.approx((13 / 18 + 1.0 + 1.0) / 3, abs=1e-12)  # 49/54
    assert metrics.mINP == pytest.approx((0.5 + 1.0 + 1.0) / 3, abs=1e-12)
    assert (metrics.rank1, metrics.rank5, metrics.rank10) == (1.0, 1.0, 1.0)
    standard = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    assert standard == evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, protocol="standard")
    assert (standard.queries, standard.mAP, standard.rank1) == (2, pytest.approx(0.725, abs=1e-12), 0.5)


def test_lenient_can_score_lower_than_standard() -> None:
    # One query (person 1, camera 1): its other-camera crop g0 ranks first, its same-camera crop g3 last.
    # Standard drops g3: AP = INP = 1. Lenient keeps it: hits at ranks 1 and 4, AP = (1 + 2/4) / 2 = 0.75,
    # INP = 2 / 4 = 0.5. Rank-1 is a hit under both.
    g_pids, g_cams = np.array([1, 0, 4, 1]), np.array([2, 1, 1, 1])
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    q_pids, q_cams = np.array([1]), np.array([1])
    standard = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, protocol="standard")
    lenient = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, protocol="lenient")
    assert (standard.mAP, standard.mINP, standard.rank1) == (1.0, 1.0, 1.0)
    assert lenient.mAP == pytest.approx(0.75, abs=1e-12)
    assert lenient.mINP == pytest.approx(0.5, abs=1e-12)
    assert lenient.rank1 == 1.0


def test_hand_computed_late_hit() -> None:
    # One query (person 5, camera 1); 8 gallery crops ranked in index order. Crops 0-5 are other people,
    # crop 6 is person 5 by camera 1 (removed), crop 7 is person 5 by camera 2: after the removal it is at
    # rank 7. AP = 1/7, INP = 1/7, rank-1 and rank-5 miss, rank-10 hits.
    g_pids = np.array([1, 2, 3, 0, 0, 4, 5, 5])
    g_cams = np.array([1, 2, 3, 1, 2, 1, 1, 2])
    dist = np.arange(8, dtype=np.float64)[None, :]
    metrics = evaluate_ranking(dist, np.array([5]), g_pids, np.array([1]), g_cams)
    assert metrics.mAP == pytest.approx(1 / 7, abs=1e-12)
    assert metrics.mINP == pytest.approx(1 / 7, abs=1e-12)
    assert (metrics.rank1, metrics.rank5, metrics.rank10) == (0.0, 0.0, 1.0)
    assert (metrics.queries, metrics.gallery) == (1, 8)


def test_perfect_ranking_scores_one() -> None:
    # Every true match (other camera) ranked ahead of everything else: all metrics are 1.
    g_pids = np.array([1, 1, 2, 2, 0])
    g_cams = np.array([2, 3, 2, 3, 1])
    q_pids, q_cams = np.array([1, 2]), np.array([1, 1])
    dist = np.array([[0.1, 0.2, 0.8, 0.9, 0.5], [0.8, 0.9, 0.2, 0.1, 0.5]])
    metrics = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    assert (metrics.mAP, metrics.rank1, metrics.rank5, metrics.mINP) == (1.0, 1.0, 1.0, 1.0)


def test_as_dict() -> None:
    metrics = RetrievalMetrics(mAP=0.5, rank1=0.25, rank5=0.75, rank10=1.0, mINP=0.125, queries=4, gallery=9)
    assert metrics.as_dict() == {
        "mAP": 0.5,
        "rank1": 0.25,
        "rank5": 0.75,
        "rank10": 1.0,
        "mINP": 0.125,
        "queries": 4,
        "gallery": 9,
    }


# ------------------------------------------------------------------------------- against the reference


def random_problem(seed: int, num_q: int, num_g: int, people: int, cameras: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, people + 1, num_q)
    q_cams = rng.integers(1, cameras + 1, num_q)
    g_pids = rng.integers(0, people + 1, num_g)  # 0: distractors, never a match
    g_cams = rng.integers(1, cameras + 1, num_g)
    dist = rng.random((num_q, num_g))  # continuous: no ties, so every argsort agrees
    return dist, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize(
    ("seed", "num_q", "num_g", "people", "cameras"),
    [
        (0, 40, 60, 12, 6),
        (1, 200, 150, 60, 3),
        (2, 1100, 300, 120, 6),  # > 2 chunks of 512 queries
        (3, 513, 80, 50, 2),  # one query past a chunk boundary
        (4, 700, 200, 400, 6),  # many people without a valid gallery crop
    ],
)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_agrees_with_torchreid_loop(seed: int, num_q: int, num_g: int, people: int, cameras: int,
                                    protocol: EvalProtocol) -> None:
    problem = random_problem(seed, num_q, num_g, people, cameras)
    cmc, m_ap, m_inp, valid = reference_market1501(*problem, lenient=protocol == "lenient")
    assert 0 < valid  # the test must exercise skipped queries on at least the sparse problems
    if people >= num_g // 2:
        assert valid < num_q
    metrics = evaluate_ranking(*problem, protocol=protocol)
    assert metrics.queries == valid
    assert metrics.gallery == num_g
    assert abs(metrics.mAP - m_ap) < 1e-9
    assert abs(metrics.mINP - m_inp) < 1e-9
    # CMC values are fractions k / valid; compare exactly as counts.
    for value, rank in ((metrics.rank1, 1), (metrics.rank5, 5), (metrics.rank10, 10)):
        assert round(value * valid) == round(cmc[rank - 1] * valid)
        assert value == pytest.approx(cmc[rank - 1], abs=1e-12)


def test_chunking_does_not_change_results() -> None:
    # The same 600 queries scored at once and in two halves that each fit one chunk.
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(11, 600, 120, 40, 4)
    whole = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    halves = [
        evaluate_ranking(dist[part], q_pids[part], g_pids, q_cams[part], g_cams)
        for part in (slice(0, 300), slice(300, None))
    ]
    total = sum(h.queries for h in halves)
    assert whole.queries == total
    for name in ("mAP", "mINP", "rank1", "rank5", "rank10"):
        combined = sum(getattr(h, name) * h.queries for h in halves) / total
        assert getattr(whole, name) == pytest.approx(combined, abs=1e-12), name


def test_labels_as_lists() -> None:
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(5, 30, 40, 8, 3)
    as_arrays = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    as_lists = evaluate_ranking(dist, q_pids.tolist(), g_pids.tolist(), q_cams.tolist(), g_cams.tolist())
    assert as_lists == as_arrays


# --------------------------------------------------------------------------------- codes and distances


def test_euclidean_distances_match_direct_computation() -> None:
    rng = np.random.default_rng(8)
    query, gallery = rng.normal(size=(17, 24)), rng.normal(size=(31, 24))
    expected = np.sqrt(((query[:, None, :] - gallery[None, :, :]) ** 2).sum(-1))
    result = euclidean_distances(query, gallery)
    assert result.shape == (17, 31) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4)


def test_euclidean_distance_to_itself_is_zero_not_nan() -> None:
    codes = np.random.default_rng(9).normal(size=(50, 64)).astype(np.float32)
    distances = euclidean_distances(codes, codes)
    assert np.isfinite(distances).all() and (distances >= 0).all()
    np.testing.assert_allclose(np.diag(distances), 0.0, atol=2e-2)
    off_diagonal = distances[~np.eye(50, dtype=bool)]
    assert off_diagonal.min() > 1.0  # distinct random 64-d codes are far apart


def test_unit_length_scales_rows_to_one_and_keeps_zero_codes_zero() -> None:
    codes = np.random.default_rng(11).normal(size=(20, 8)) * np.arange(1, 21)[:, None]
    unit = unit_length(np.vstack([codes, np.zeros((1, 8))]))
    assert unit.dtype == np.float32 and unit.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(unit[:-1], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(unit[:-1] * np.linalg.norm(codes, axis=1, keepdims=True), codes, rtol=1e-5)
    assert not unit[-1].any()


def test_code_distances_ignore_length_and_follow_the_angle() -> None:
    rng = np.random.default_rng(12)
    query, gallery = rng.normal(size=(7, 16)), rng.normal(size=(9, 16))
    scaled = code_distances(query * rng.uniform(0.1, 10, (7, 1)), gallery * rng.uniform(0.1, 10, (9, 1)))
    np.testing.assert_allclose(scaled, code_distances(query, gallery), rtol=1e-4, atol=1e-5)
    cosine = (query @ gallery.T) / np.outer(np.linalg.norm(query, axis=1), np.linalg.norm(gallery, axis=1))
    np.testing.assert_allclose(scaled, np.sqrt(2.0 - 2.0 * cosine), rtol=1e-4, atol=1e-4)


def test_evaluate_codes_ranks_by_direction() -> None:
    rng = np.random.default_rng(10)
    people, cameras = 30, 4
    centres = rng.normal(size=(people + 1, 16))
    g_pids = rng.integers(0, people + 1, 400)
    g_cams = rng.integers(1, cameras + 1, 400)
    q_pids = rng.integers(1, people + 1, 90)
    q_cams = rng.integers(1, cameras + 1, 90)
    # Lengths vary at random, as image quality does: only the direction tells people apart.
    g_codes = (centres[g_pids] + rng.normal(scale=0.8, size=(400, 16))) * rng.uniform(0.2, 5.0, (400, 1))
    q_codes = (centres[q_pids] + rng.normal(scale=0.8, size=(90, 16))) * rng.uniform(0.2, 5.0, (90, 1))
    from_codes = evaluate_codes(q_codes, g_codes, q_pids, g_pids, q_cams, g_cams)
    # Against the reference on directly computed float64 distances between unit-length codes.
    q_unit = q_codes / np.linalg.norm(q_codes, axis=1, keepdims=True)
    g_unit = g_codes / np.linalg.norm(g_codes, axis=1, keepdims=True)
    direct = np.sqrt(((q_unit[:, None, :] - g_unit[None, :, :]) ** 2).sum(-1))
    cmc, m_ap, _, valid = reference_market1501(direct, q_pids, g_pids, q_cams, g_cams)
    assert from_codes.queries == valid
    assert from_codes.mAP == pytest.approx(m_ap, abs=1e-6)
    assert from_codes.rank1 == pytest.approx(cmc[0], abs=1e-12)
    assert from_codes.rank1 > 0.5  # clustered codes retrieve well: the ranking is not reversed
    by_length = evaluate_ranking(euclidean_distances(q_codes, g_codes), q_pids, g_pids, q_cams, g_cams)
    assert from_codes.mAP > by_length.mAP  # raw Euclidean distance is misled by the lengths
    lenient = evaluate_codes(q_codes, g_codes, q_pids, g_pids, q_cams, g_cams, protocol="lenient")
    _, lenient_ap, _, _ = reference_market1501(direct, q_pids, g_pids, q_cams, g_cams, lenient=True)
    assert lenient.mAP == pytest.approx(lenient_ap, abs=1e-6) and lenient.mAP != pytest.approx(from_codes.mAP)


# ---------------------------------------------------------------------------------------------- errors


def test_shape_mismatch_raises() -> None:
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(6, 5, 7, 3, 2)
    with pytest.raises(ValueError, match="does not match"):
        evaluate_ranking(dist[:, :6], q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match="does not match"):
        evaluate_ranking(dist.T, q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError):
        evaluate_codes(np.zeros((5, 4)), np.zeros((6, 4)), q_pids, g_pids, q_cams, g_cams)


def test_unknown_protocol_raises() -> None:
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(7, 5, 7, 3, 2)
    with pytest.raises(ValueError, match="unknown protocol 'paper'"):
        evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, protocol="paper")  # type: ignore[arg-type]


def test_no_valid_query_raises() -> None:
    # Every true match shares the query's camera, the rest are other people or distractors.
    g_pids, g_cams = np.array([1, 2, 0, 3]), np.array([1, 2, 3, 1])
    q_pids, q_cams = np.array([1, 2]), np.array([1, 2])
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_ranking(np.random.default_rng(0).random((2, 4)), q_pids, g_pids, q_cams, g_cams)
