"""The optional API key: every route but /health needs X-API-Key once the server has one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from genreid.service.app import create_app

KEY = "s3cret-key"


@pytest.fixture
def keyed(make_settings) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        yield client


def routes(crop) -> list[tuple[str, str, dict]]:
    image = crop(1)
    return [
        ("GET", "/gallery", {}),
        ("POST", "/gallery", {"files": [("files", ("a.png", image))], "data": {"person_id": ["p1"]}}),
        ("POST", "/query", {"files": {"file": ("q.png", image)}}),
        ("POST", "/transfer", {"files": {"identity": ("a.png", image), "pose": ("b.png", image)}}),
        ("DELETE", "/gallery/entries/1", {}),
        ("DELETE", "/gallery/persons/p1", {}),
    ]


@pytest.mark.parametrize("header", [None, "wrong", KEY + "x", KEY[:-1], ""])
def test_every_route_but_health_refuses_a_missing_or_wrong_key(keyed: TestClient, crop, header: str | None):
    headers = {} if header is None else {"X-API-Key": header}
    for method, path, kwargs in routes(crop):
        response = keyed.request(method, path, headers=headers, **kwargs)
        assert response.status_code == 401, (method, path)
        assert "X-API-Key" in response.json()["detail"]
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/gallery", headers={"X-API-Key": KEY}).json()["entries"] == 0  # nothing got in


def test_the_right_key_opens_every_route(keyed: TestClient, crop):
    statuses = [
        keyed.request(method, path, headers={"X-API-Key": KEY}, **kwargs).status_code
        for method, path, kwargs in routes(crop)
    ]
    assert statuses == [200, 201, 200, 200, 200, 404]  # entry 1 was p1's only crop, so p1 is gone


def test_no_key_configured_means_open(client: TestClient):
    assert client.get("/gallery").status_code == 200
    assert client.get("/gallery", headers={"X-API-Key": "anything"}).status_code == 200
