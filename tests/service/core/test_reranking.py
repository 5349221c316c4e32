"""k-reciprocal re-ranking (genreid.service.core.reranking): a hand-made case it must reorder, agreement with the
published algorithm's loops, the neighbourhood's limits (filters, K), and /query?rerank against the evaluation path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from genreid.service.app import create_app
from genreid.service.core.evaluation import Evaluator
from genreid.service.core.reranking import RerankParams, _nearest_first, rerank_all, rerank_search
from genreid.service.encoders import Encoders
from genreid.service.store import EntryFilter, NewEntry
from genreid.service.store.embedded import EmbeddedStore

PARAMS = RerankParams(k1=3, k2=1, lambda_=0.3, candidates=100)


def published_rerank(q: np.ndarray, g: np.ndarray, k1: int, k2: int, lambda_: float) -> np.ndarray:
    """Zhong et al.'s re_ranking as published (github.com/zhunzhong07/person-re-ranking), loop for loop, on
    the original distance genreid uses (d^2 / 4 between unit-length codes) instead of the per-column maximum."""
    codes = np.concatenate([q, g]).astype(np.float32)
    unit = codes / np.linalg.norm(codes, axis=1, keepdims=True)
    original_dist = np.maximum(0.5 - 0.5 * (unit @ unit.T).astype(np.float64), 0.0)
    np.fill_diagonal(original_dist, 0.0)
    query_num, all_num = len(q), len(codes)
    V = np.zeros_like(original_dist)
    initial_rank = np.argsort(original_dist, axis=1, kind="stable")
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for candidate in k_reciprocal_index:
            half = int(np.around(k1 / 2.0)) + 1
            candidate_forward_k_neigh_index = initial_rank[candidate, :half]
            candidate_backward_k_neigh_index = initial_rank[candidate_forward_k_neigh_index, :half]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2.0 / 3 * len(
                    candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = weight / np.sum(weight)
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros((query_num, all_num))
    for i in range(query_num):
        temp_min = np.zeros(all_num)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[indImages[j]] += np.minimum(V[i, indNonZero[j]], V[indImages[j], indNonZero[j]])
        jaccard_dist[i] = 1 - temp_min / (2 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_) + original_dist[:query_num] * lambda_
    return final_dist[:, query_num:]


def clustered(rng: np.random.Generator, people: int, count: int, spread: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """`count` codes of `people` identities: (codes, person index)."""
    centres = rng.normal(size=(people, 32))
    labels = rng.integers(0, people, count)
    return (centres[labels] + spread * rng.normal(size=(count, 32))).astype(np.float32), labels


@pytest.fixture
def store(tmp_path: Path):
    opened = EmbeddedStore(tmp_path / "gallery", code_dim=32, model_id=None)
    yield opened
    opened.close()


def on_plane(points: list[tuple[float, float]]) -> np.ndarray:
    """Codes whose directions lie on a small patch of the sphere: (x, y) in hundredths of a radian."""
    codes = np.zeros((len(points), 32), np.float32)
    codes[:, 0] = 1.0
    codes[:, 1:3] = np.asarray(points, np.float32) / 100.0
    return codes


def test_hand_made_case_puts_the_reciprocal_neighbours_first(store: EmbeddedStore):
    """The query sits among person A's crops (A1-A3, 11-12 from it, each with the query among its 3 nearest), while
    B1 (10 from it, the nearest by code) belongs to the tight cluster B2-B4 and has the query nowhere near its own
    3 nearest. With k1 = 3, B1 shares no k-reciprocal neighbour with the query (Jaccard distance 1) and every A
    does, so re-ranking must move A1-A3 ahead of B1 while code distance alone ranks B1 first."""
    query = on_plane([(0, 0)])
    gallery = on_plane([(10, 0), (14, 2), (14, -2), (16, 0),  # B1, then B1's own cluster
                        (0, 11), (-11.5, 0), (0, -12)])  # A1-A3 around the query
    names = ["B1", "B2", "B3", "B4", "A1", "A2", "A3"]
    ids = [e.entry_id for e in store.add([NewEntry(person_id=name) for name in names], gallery)]
    plain = [m.entry.person_id for m in store.search(query, 7)[0]]
    reranked = rerank_search(store, query, 7, params=RerankParams(k1=3, k2=1, lambda_=0.3, candidates=7))[0]
    assert plain[:2] == ["B1", "A1"]
    assert [m.entry.person_id for m in reranked][:3] == ["A1", "A2", "A3"]
    by_name = {m.entry.person_id: m for m in reranked}
    assert by_name["B1"].rerank_distance == pytest.approx(0.7 + 0.3 * (0.1**2) / 4, abs=1e-4)  # Jaccard 1
    assert by_name["B1"].distance == pytest.approx(store.search(query, 1)[0][0].distance)  # code distance kept
    assert sorted(m.entry.entry_id for m in reranked) == sorted(ids)


@pytest.mark.parametrize(("k1", "k2", "lambda_"), [(20, 6, 0.3), (6, 3, 0.5), (4, 1, 0.0), (10, 4, 1.0), (3, 8, 0.3)])
def test_all_queries_variant_equals_the_published_loops(k1: int, k2: int, lambda_: float):
    rng = np.random.default_rng(k1)
    gallery, _ = clustered(rng, 25, 200)
    queries, _ = clustered(rng, 25, 15)
    ours = rerank_all(queries, gallery, RerankParams(k1=k1, k2=k2, lambda_=lambda_, candidates=1))
    np.testing.assert_allclose(ours, published_rerank(queries, gallery, k1, k2, lambda_), atol=1e-9)


@pytest.mark.parametrize("width", [1, 4, 11, 60])
def test_neighbour_lists_order_equal_distances_as_the_published_stable_sort(width: int):
    """Keys with many equal values (distances rounded to a few levels): each row's nearest, cut through a run of
    equal ones, are those a stable sort of the whole row puts first, as in the published code."""
    keys = np.round(np.random.default_rng(width).uniform(-1, 1, size=(40, 50)), 1).astype(np.float32)
    np.testing.assert_array_equal(_nearest_first(keys, width), np.argsort(keys, axis=1, kind="stable")[:, :width])


@pytest.mark.parametrize(("k1", "k2"), [(20, 6), (5, 1), (8, 3), (3, 8)])
def test_neighbourhood_covering_the_gallery_equals_the_published_loops_per_query(store: EmbeddedStore, k1: int,
                                                                                 k2: int):
    rng = np.random.default_rng(k2)
    gallery, _ = clustered(rng, 20, 150)
    queries, _ = clustered(rng, 20, 8)
    ids = np.array([e.entry_id for e in store.add([NewEntry(person_id="p")] * len(gallery), gallery)])
    params = RerankParams(k1=k1, k2=k2, lambda_=0.3, candidates=len(gallery))
    for query, row in zip(queries, rerank_search(store, queries, len(gallery), params=params), strict=True):
        expected = published_rerank(query[None], gallery, k1, k2, 0.3)[0]  # one query: the service's world
        got = np.array([m.rerank_distance for m in row])
        order = np.searchsorted(ids, [m.entry.entry_id for m in row])
        np.testing.assert_allclose(got, expected[order], atol=1e-6)
        assert (order == np.argsort(expected, kind="stable")).all()


def test_only_the_top_k_are_reordered_and_the_rest_keep_code_distance_order(store: EmbeddedStore):
    rng = np.random.default_rng(3)
    gallery, _ = clustered(rng, 10, 120)
    store.add([NewEntry(person_id="p")] * len(gallery), gallery)
    query = gallery[:1] + 0.1
    plain = store.search(query, 60)[0]
    row = rerank_search(store, query, 60, params=RerankParams(k1=6, k2=3, lambda_=0.3, candidates=25))[0]
    assert len(row) == 60
    assert {m.entry.entry_id for m in row[:25]} == {m.entry.entry_id for m in plain[:25]}
    assert [m.entry.entry_id for m in row[25:]] == [m.entry.entry_id for m in plain[25:]]
    assert all(m.rerank_distance is not None for m in row[:25]) and all(m.rerank_distance is None for m in row[25:])
    assert [m.rerank_distance for m in row[:25]] == sorted(m.rerank_distance for m in row[:25])
    assert [m.entry.entry_id for m in row[:25]] != [m.entry.entry_id for m in plain[:25]]  # it did reorder
    short = rerank_search(store, query, 5, params=RerankParams(k1=6, k2=3, lambda_=0.3, candidates=25))[0]
    assert [m.entry.entry_id for m in short] == [m.entry.entry_id for m in row[:5]]


def test_a_filtered_search_never_brings_excluded_entries_into_the_neighbourhood(store: EmbeddedStore,
                                                                               tmp_path: Path):
    """Re-ranking within cameras 1-2 of a gallery equals re-ranking a gallery that holds only those entries."""
    rng = np.random.default_rng(4)
    gallery, _ = clustered(rng, 12, 150)
    cameras = [str(1 + i % 3) for i in range(len(gallery))]
    store.add([NewEntry(person_id=f"g{i}", camera=c) for i, c in enumerate(cameras)], gallery)
    kept = [i for i, c in enumerate(cameras) if c != "3"]
    alone = EmbeddedStore(tmp_path / "alone", code_dim=32, model_id=None)
    alone.add([NewEntry(person_id=f"g{i}", camera=cameras[i]) for i in kept], gallery[kept])
    queries = gallery[:6] + 0.2
    params = RerankParams(k1=8, k2=3, lambda_=0.3, candidates=30)
    filtered = rerank_search(store, queries, 40, EntryFilter(exclude_cameras=frozenset({"3"})), params=params)
    expected = rerank_search(alone, queries, 40, params=params)
    alone.close()
    for got, want in zip(filtered, expected, strict=True):
        assert [m.entry.person_id for m in got] == [m.entry.person_id for m in want]
        np.testing.assert_allclose([m.rerank_distance or -1 for m in got], [m.rerank_distance or -1 for m in want])


def test_entries_removed_between_the_searches_are_left_out(store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch):
    """Another replica may delete a candidate after the search found it: the answer leaves it out, no error."""
    rng = np.random.default_rng(5)
    gallery, _ = clustered(rng, 8, 80)
    store.add([NewEntry(person_id="p")] * len(gallery), gallery)
    query = gallery[:1] + 0.05
    victim = store.search(query, 2)[0][1].entry.entry_id
    nearest_ids = store.nearest_ids
    deleted = []

    def search_then_delete(*args, **kwargs):
        found = nearest_ids(*args, **kwargs)
        if not deleted:  # the first search only: the removal itself searches around its entry
            deleted.append(victim)
            store.remove_entries([victim])
        return found

    monkeypatch.setattr(store, "nearest_ids", search_then_delete)
    row = rerank_search(store, query, 10, params=PARAMS)[0]
    assert victim not in {m.entry.entry_id for m in row} and len(row) == 10


def test_params_round_trip_and_refuse_nonsense():
    params = RerankParams(k1=15, k2=4, lambda_=0.3, candidates=50)
    assert params.as_dict() == {"k1": 15, "k2": 4, "lambda": 0.3, "candidates": 50}
    assert RerankParams.from_dict(params.as_dict()) == params
    with pytest.raises(ValueError):
        RerankParams(k1=0, k2=4, lambda_=0.3, candidates=50)
    with pytest.raises(ValueError):
        RerankParams(k1=5, k2=4, lambda_=1.5, candidates=50)


def test_http_rerank_equals_the_evaluation_path_entry_for_entry(make_settings, reranking_models: Path, crop):
    """/query?rerank=true (and /query/batch) ranks every query exactly as `genreid evaluate --rerank` does."""
    people = [(p, v) for p in range(12) for v in range(3)]
    gallery = [crop(p, v) for p, v in people]
    queries = [crop(p, 7) for p in range(12)]
    with TestClient(create_app(make_settings(models=reranking_models))) as client:
        files = [("files", (f"{i}.png", image, "image/png")) for i, image in enumerate(gallery)]
        response = client.post("/gallery", files=files, data={"person_id": [f"p{p}" for p, _ in people]})
        entries = [e["entry_id"] for e in response.json()["entries"]]
        answers = [client.post("/query", params={"rerank": "true", "k": len(gallery), "include_noise": "false"},
                               files={"file": ("q.png", image, "image/png")}).json() for image in queries]
        batch = client.post("/query/batch", params={"rerank": "true", "k": len(gallery)},
                            files=[("files", (f"{i}.png", image, "image/png")) for i, image in enumerate(queries)])
    encoders = Encoders(reranking_models, device="cpu")
    labelled = {
        "query": (np.stack([_pixels(encoders, image) for image in queries]), np.arange(12), np.zeros(12)),
        "gallery": (np.stack([_pixels(encoders, image) for image in gallery]), np.array([p for p, _ in people]),
                    np.ones(len(people))),
    }
    evaluator = Evaluator(lambda split: encoders.identity(split.images), _Split(*labelled["query"]),
                          _Split(*labelled["gallery"]))
    orders = evaluator.served_orders(RerankParams.from_model(encoders.metadata))
    for answer, batched, order in zip(answers, batch.json()["results"], orders, strict=True):
        assert [m["entry_id"] for m in answer["matches"]] == [entries[i] for i in order]
        assert batched["matches"] == answer["matches"]
        assert answer["matches"][0]["rerank_distance"] is not None
        assert sum(m["rerank_distance"] is None for m in answer["matches"]) == len(gallery) - 12  # past K


def test_rerank_default_and_refusal(make_settings, models_dir: Path, reranking_models: Path, crop):
    query = {"file": ("q.png", crop(1, 7), "image/png")}
    with TestClient(create_app(make_settings(models=reranking_models, rerank=True))) as client:
        client.post("/gallery", files=[("files", (f"{i}.png", crop(i), "image/png")) for i in range(4)],
                    data={"person_id": [f"p{i}" for i in range(4)]})
        assert client.post("/query", files=query).json()["matches"][0]["rerank_distance"] is not None
        plain = client.post("/query", params={"rerank": "false"}, files=query).json()["matches"]
        assert all(m["rerank_distance"] is None for m in plain)
        assert "rerank_distance" in plain[0]  # null, not missing
    with TestClient(create_app(make_settings(rerank=True))) as client:  # a model without parameters
        client.post("/gallery", files=[("files", ("0.png", crop(0), "image/png"))], data={"person_id": ["p0"]})
        assert client.post("/query", files=query).json()["matches"][0]["rerank_distance"] is None
        refused = client.post("/query", params={"rerank": "true"}, files=query)
        assert refused.status_code == 422 and "tune-rerank" in json.dumps(refused.json())


class _Split:
    def __init__(self, images: np.ndarray, person_ids: np.ndarray, cameras: np.ndarray):
        self.images, self.person_ids, self.cameras = images, person_ids, cameras


def _pixels(encoders: Encoders, image: bytes) -> np.ndarray:
    from genreid.service.core.imaging import decode_rgb, resized, to_chw_float

    return to_chw_float(resized(decode_rgb(image, 10**7), encoders.resolution))
