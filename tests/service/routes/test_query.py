"""/query and /query/batch (TestClient, tiny ONNX models): the verdict is on the code distance whatever orders the
list, `ranked_by` says what does, and `same_person` is its deprecated twin."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from genreid.service.app import create_app

from ..conftest import MATCH_THRESHOLD

PEOPLE = [(p, v) for p in range(6) for v in range(3)]


def answers(client: TestClient, crop, **params: str) -> list[dict]:
    """A crop's, a stored entry's and a batch's answers, k covering the gallery."""
    params = {"k": str(len(PEOPLE)), **params}
    single = client.post("/query", params={**params, "include_noise": "false"},
                         files={"file": ("q.png", crop(1, 7), "image/png")})
    from_entry = client.post("/query", params=params, data={"entry_id": "1"})
    batch = client.post("/query/batch", params=params,
                        files=[("files", (f"{p}.png", crop(p, 7), "image/png")) for p in (2, 3)])
    for response in (single, from_entry, batch):
        assert response.status_code == 200, response.text
    return [single.json(), from_entry.json(), *batch.json()["results"]]


@pytest.mark.parametrize(("params", "server_default", "ranked_by"), [
    ({}, False, "distance"),
    ({"rerank": "false"}, True, "distance"),
    ({"rerank": "true"}, False, "rerank_distance"),
    ({}, True, "rerank_distance"),
], ids=["plain", "plain-over-server-default", "re-ranked", "re-ranked-by-server-default"])
def test_the_verdict_is_the_code_distance_under_the_threshold_whatever_orders_the_list(
        make_settings, reranking_models: Path, enrol, crop, params: dict[str, str], server_default: bool,
        ranked_by: str):
    with TestClient(create_app(make_settings(models=reranking_models, rerank=server_default))) as client:
        enrol(client, PEOPLE)
        results = answers(client, crop, **params)
    for result in results:
        assert result["ranked_by"] == ranked_by
        matches = result["matches"]
        assert {m["within_match_threshold"] for m in matches} == {True, False}, "the test needs both verdicts"
        for match in matches:
            assert match["within_match_threshold"] == (match["distance"] <= MATCH_THRESHOLD)
            assert match["same_person"] == match["within_match_threshold"]
        reranked = [m["rerank_distance"] for m in matches if m["rerank_distance"] is not None]
        if ranked_by == "distance":
            assert not reranked and [m["distance"] for m in matches] == sorted(m["distance"] for m in matches)
        else:
            assert reranked and reranked == sorted(reranked)


def test_same_person_is_deprecated_in_the_schema(client: TestClient):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    match = schemas["MatchOut"]["properties"]
    assert match["same_person"]["deprecated"] is True and "deprecated" in match["same_person"]["description"]
    assert "deprecated" not in match["within_match_threshold"]
    assert "not on the re-ranked order" in match["within_match_threshold"]["description"]
    result = schemas["QueryResult"]
    assert "ranked_by" in result["required"]
    assert result["properties"]["ranked_by"]["enum"] == ["distance", "rerank_distance"]
