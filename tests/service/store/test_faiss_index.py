"""VectorIndex's CPU search (a byte-code scan, an exact re-rank and a certificate) returns exactly what float32
brute force does: the same ids in the same order, equal distances by id, the distances within float32 rounding,
also where distances differ by far less than one step of the scan's grid."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from genreid.service.store.faiss_index import FLT_MAX, GRID, VectorIndex, candidates, grid_error, to_grid

DIM = 32
STEP = 1 / GRID  # one step of the scan's grid, per component


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float64)
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def random_unit(n: int, seed: int) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, DIM)))


def filled(vectors: np.ndarray, seed: int = 0) -> tuple[VectorIndex, np.ndarray]:
    """An index over `vectors` under shuffled, gappy ids (so that id order is not insertion order)."""
    ids = np.random.default_rng([seed, 1]).permutation(len(vectors)).astype(np.int64) * 3 + 7
    index = VectorIndex(DIM, scan_from=0)  # the byte scan at every size
    index.add(ids, vectors)
    return index, ids


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 squared distances to every vector, sorted by distance then id; padded as FAISS pads."""
    distances = np.stack([np.square(vectors - q).sum(axis=1) for q in queries])
    order = np.lexsort((np.broadcast_to(ids, distances.shape), distances), axis=-1)[:, :k]
    found_d, found_i = np.take_along_axis(distances, order, axis=1), ids[order]
    missing = k - found_i.shape[1]
    return (np.pad(found_d, ((0, 0), (0, missing)), constant_values=FLT_MAX),
            np.pad(found_i, ((0, 0), (0, missing)), constant_values=-1))


def assert_exact(index: VectorIndex, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> None:
    distances, found = index.search(queries, k)
    want_d, want_i = brute_force(vectors, ids, queries, k)
    np.testing.assert_array_equal(found, want_i)
    np.testing.assert_allclose(distances, want_d, rtol=1e-5, atol=1e-6)


def boundary_ties(query: np.ndarray, near: int, tied: int, seed: int, spread: float = 1e-5) -> np.ndarray:
    """`near` vectors clearly nearest to the unit `query`, then `tied` at nearly one angle (0.7 rad) from it: their
    angles differ by `spread` (their distances by about as much), far below what the grid resolves."""
    rng = np.random.default_rng(seed)
    angles = np.concatenate([rng.uniform(0.2, 0.4, near), 0.7 + spread * rng.permutation(tied)])
    sideways = rng.standard_normal((near + tied, DIM))
    sideways -= np.outer(sideways @ query, query)  # orthogonal to the query
    sideways /= np.linalg.norm(sideways, axis=1, keepdims=True)
    return unit(np.cos(angles)[:, None] * query + np.sin(angles)[:, None] * sideways)


def test_grid_codes_of_unit_vectors_are_within_the_bound_and_are_what_faiss_stores():
    vectors = random_unit(5000, seed=1)
    grid = to_grid(vectors)
    assert grid_error(vectors, grid).max() <= np.sqrt(DIM) * STEP / 2 + 1e-9
    sq = faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_8bit_direct)
    sq.add(grid)
    np.testing.assert_array_equal(sq.sa_decode(faiss.vector_to_array(sq.codes).reshape(len(grid), DIM)), grid)


def test_the_scan_distance_is_the_exact_integer_distance_of_the_grid_points():
    vectors, queries = random_unit(3000, seed=2), random_unit(4, seed=3)
    index, ids = filled(vectors)
    scanned, found = index.codes.search(to_grid(queries), 50)
    position = {int(i): p for p, i in enumerate(ids)}
    grid = to_grid(vectors)[[[position[int(i)] for i in row] for row in found]]
    np.testing.assert_array_equal(scanned, np.square(grid - to_grid(queries)[:, None, :]).sum(axis=-1))


@pytest.fixture(scope="module")
def random_100k() -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    vectors = random_unit(100_000, seed=4)
    return *filled(vectors), vectors


@pytest.mark.parametrize("k", [1, 10, 100])
def test_random_unit_codes_in_a_batch_match_brute_force(random_100k, k: int):
    index, ids, vectors = random_100k
    queries = random_unit(40, seed=5)
    assert_exact(index, vectors, ids, queries, k)
    one_by_one = [index.search(q[None], k) for q in queries]
    np.testing.assert_array_equal(index.search(queries, k)[1], np.concatenate([i for _, i in one_by_one]))


@pytest.mark.parametrize("tied", [20, 400])
def test_near_ties_closer_than_a_grid_step_at_the_kth_place_come_out_exact(tied: int):
    """5 clear neighbours, then `tied` vectors whose distances differ by about 1e-5 (the grid's step is 8e-3 per
    component), so the k-th place falls among them. 400 of them is more than the scan's candidates: only the
    second scan can sort them."""
    query = random_unit(1, seed=6)[0]
    vectors = np.concatenate([random_unit(50_000, seed=7), boundary_ties(query, 5, tied, seed=8)])
    index, ids = filled(vectors)
    k = 10
    assert tied + 5 > k and (tied + 5 > candidates(k)) == (tied == 400)
    distances, _ = brute_force(vectors, ids, query[None], k + 1)
    assert 0 < np.diff(distances[0, 5:]).min() < 1e-4  # distinct, and far closer than the grid resolves
    assert_exact(index, vectors, ids, query[None], k)
    assert index.full_scans == (1 if tied == 400 else 0)


def test_many_exact_duplicates_of_the_kth_vector_give_the_lowest_ids():
    """300 copies at the k-th place of each query: no candidate list holds them all, so the second scan must find
    every copy (FAISS's float32 distance to them may round above the exact one) and the lowest ids among them win,
    as in brute force."""
    queries = random_unit(12, seed=9)
    parts = [random_unit(30_000, seed=10)]
    for seed, query in enumerate(queries):
        near = boundary_ties(query, 9, 1, seed=100 + seed)
        parts += [near, np.repeat(near[-1:], 299, axis=0)]
    vectors = np.concatenate(parts)
    index, ids = filled(vectors)
    assert_exact(index, vectors, ids, queries, 10)
    assert_exact(index, vectors, ids, queries, 50)
    assert index.full_scans == 2 * len(queries)


def test_removed_vectors_are_not_found_and_the_rest_stay_exact():
    vectors, queries = random_unit(40_000, seed=12), random_unit(10, seed=13)
    index, ids = filled(vectors)
    _, nearest = index.search(queries, 5)
    gone = np.union1d(nearest.ravel(), ids[::7])
    index.remove(gone)
    kept = ~np.isin(ids, gone)
    assert index.size == kept.sum()
    assert_exact(index, vectors[kept], ids[kept], queries, 10)


@pytest.mark.parametrize("share", [0.05, 0.9])
def test_a_restricted_search_matches_brute_force_over_the_allowed_ids(share: float):
    """A small allowed set selects by allowed ids, a large one by the refused rest: both stay exact, ties too."""
    query = random_unit(1, seed=14)[0]
    vectors = np.concatenate([random_unit(40_000, seed=15), boundary_ties(query, 3, 400, seed=16)])
    index, ids = filled(vectors)
    admitted = np.random.default_rng(17).random(len(ids)) < share
    admitted[-403:] = True  # the ties are all admitted: the k-th place is among them
    distances, found = index.search_among(query[None], 10, allowed=ids[admitted], refused=ids[~admitted])
    want_d, want_i = brute_force(vectors[admitted], ids[admitted], query[None], 10)
    np.testing.assert_array_equal(found, want_i)
    np.testing.assert_allclose(distances, want_d, rtol=1e-5, atol=1e-6)


def test_k_beyond_the_size_pads_as_faiss_does():
    vectors, queries = random_unit(6, seed=18), random_unit(3, seed=19)
    index, ids = filled(vectors)
    assert_exact(index, vectors, ids, queries, 9)
    _, found = index.search_among(queries, 9, allowed=ids[:2], refused=ids[2:])
    assert (found[:, 2:] == -1).all() and set(found[:, :2].ravel()) == set(ids[:2])
    assert VectorIndex(DIM, scan_from=0).search(queries, 2)[1].tolist() == [[-1, -1]] * 3


def test_vectors_off_the_grid_stay_exact():
    """Codes that are not unit length leave [-1, 1]: the grid clips them, the certificate fails and the second scan
    answers, still exactly."""
    rng = np.random.default_rng(20)
    vectors = rng.standard_normal((5000, DIM)).astype(np.float32) * 3
    queries = rng.standard_normal((4, DIM)).astype(np.float32) * 3
    index, ids = filled(vectors)
    assert_exact(index, vectors, ids, queries, 10)
    assert index.full_scans == len(queries)


def test_a_search_copy_answers_searches_and_the_master_restricted_ones():
    """The GPU layout, with a CPU clone for the copy: it follows adds and removals."""
    vectors, queries = random_unit(2000, seed=21), random_unit(3, seed=22)
    ids = np.arange(len(vectors), dtype=np.int64)
    index = VectorIndex(DIM, search_copy=faiss.clone_index)
    index.add(ids[:1500], vectors[:1500])
    index.remove(ids[:100])
    index.add(ids[1500:], vectors[1500:])
    assert index.device == "gpu" and index.size == 1900
    _, found = index.search(queries, 10)
    np.testing.assert_array_equal(found, brute_force(vectors[100:], ids[100:], queries, 10)[1])
    _, found = index.search_among(queries, 10, allowed=ids[100:300], refused=np.concatenate([ids[:100], ids[300:]]))
    np.testing.assert_array_equal(found, brute_force(vectors[100:300], ids[100:300], queries, 10)[1])


def test_below_scan_from_the_float_scan_answers_exactly():
    """A gallery of the usual size is searched by FAISS's float flat scan alone: the same neighbours and distances
    as brute force (ties aside), and no byte scan runs."""
    vectors, queries = random_unit(5000, seed=23), random_unit(40, seed=24)
    ids = np.random.default_rng(25).permutation(len(vectors)).astype(np.int64) * 3 + 7
    index = VectorIndex(DIM, scan_from=len(vectors) + 1)
    index.add(ids, vectors)
    distances, found = index.search(queries, 10)
    want_d, want_i = brute_force(vectors, ids, queries, 10)
    np.testing.assert_array_equal(found, want_i)
    np.testing.assert_allclose(distances, want_d, rtol=1e-5, atol=1e-6)
    _, among = index.search_among(queries, 10, allowed=ids[:500], refused=ids[500:])
    np.testing.assert_array_equal(among, brute_force(vectors[:500], ids[:500], queries, 10)[1])
    index.codes.reset()  # the byte copy is not consulted: emptying it changes nothing
    np.testing.assert_array_equal(index.search(queries, 10)[1], want_i)
