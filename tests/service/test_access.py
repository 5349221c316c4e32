"""Who may do what: named keys with roles (metrics < query < admin), several at once for rotation, the legacy
single key as an admin key, Authorization: Bearer beside X-API-Key, and the audit log of every write."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from genreid.service.app import create_app
from genreid.service.keys import match, parse_api_keys
from genreid.service.settings import Settings, describe_errors

KEYS = "ops:admin:admin-secret,viewer:query:query-secret,prom:metrics:scrape-secret,old:admin:old:secret"
ADMIN, QUERY, SCRAPE = ({"X-API-Key": secret} for secret in ("admin-secret", "query-secret", "scrape-secret"))


def reads(crop) -> list[tuple[str, str, dict]]:
    image = crop(1)
    return [
        ("GET", "/gallery", {}),
        ("GET", "/gallery/entries", {}),
        ("GET", "/gallery/entries/1", {}),
        ("GET", "/gallery/entries/1/crop", {}),
        ("POST", "/query", {"files": {"file": ("q.png", image)}}),
        ("POST", "/query/batch", {"files": [("files", ("q.png", image))]}),
        ("POST", "/transfer", {"files": {"identity": ("a.png", image), "pose": ("b.png", image)}}),
    ]


def writes(crop) -> list[tuple[str, str, dict]]:
    return [
        ("POST", "/gallery", {"files": [("files", ("a.png", crop(2)))], "data": {"person_id": ["p2"]}}),
        ("PATCH", "/gallery/entries/1", {"json": {"person_id": "renamed"}}),
        ("POST", "/gallery/persons/renamed/merge", {"json": {"into": "p2"}}),
        ("DELETE", "/gallery/entries/2", {}),
        ("DELETE", "/gallery/persons/p2", {}),
    ]


@pytest.fixture
def keyed(make_settings) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(api_keys=KEYS)), headers=ADMIN) as client:
        yield client


def test_roles_open_reads_to_query_keys_and_writes_to_admin_keys(keyed: TestClient, enrol, crop, make_settings,
                                                                  caplog):
    client = keyed
    enrol(client, [(1, 0)])
    for headers, allowed in ((QUERY, True), (SCRAPE, False)):
        for method, path, kwargs in reads(crop):
            response = client.request(method, path, headers=headers, **kwargs)
            assert (response.status_code == 200) == allowed, (headers, method, path, response.text)
    for method, path, kwargs in writes(crop):
        refused = client.request(method, path, headers=QUERY, **kwargs)
        assert refused.status_code == 403, (method, path)
        assert refused.json()["detail"] == "the API key 'viewer' has the query role; this route needs the admin role"
    assert client.get("/gallery").json() == {"entries": 1, "persons": 1}  # nothing got in or out
    with caplog.at_level(logging.INFO, logger="genreid.access"):
        client.get("/gallery", headers=QUERY)
    assert caplog.records[-1].key == "viewer" and "key=viewer" in caplog.records[-1].getMessage()
    statuses = [client.request(method, path, **kwargs).status_code for method, path, kwargs in writes(crop)]
    assert statuses == [201, 200, 200, 200, 200]

    records = [json.loads(line) for line in make_settings().audit_path.read_text().splitlines()]
    assert [(r["actor"], r["action"], r["route"]) for r in records] == [
        ("ops", "enrol", "POST /gallery"),
        ("ops", "enrol", "POST /gallery"),
        ("ops", "relabel", "PATCH /gallery/entries/{entry_id}"),
        ("ops", "merge", "POST /gallery/persons/{person_id}/merge"),
        ("ops", "remove_entries", "DELETE /gallery/entries/{entry_id}"),
        ("ops", "remove_person", "DELETE /gallery/persons/{person_id}"),
    ]
    assert [(r["entry_ids"], r["person_ids"]) for r in records[1:]] == [
        ([2], ["p2"]), ([1], ["renamed"]), ([1], ["renamed", "p2"]), ([2], ["p2"]), ([1], ["p2"])]
    assert all(r["request_id"] and r["at"].endswith("+00:00") for r in records)
    assert "secret" not in make_settings().audit_path.read_text()


def test_rotation_and_the_legacy_key(make_settings):
    """The server restarted with the old keys left out: they stop working, the others go on."""
    with TestClient(create_app(make_settings(api_key="legacy-secret", api_keys=KEYS))) as client:
        for headers in ({"X-API-Key": "legacy-secret"}, {"X-API-Key": "old:secret"}, ADMIN,
                        {"Authorization": "Bearer admin-secret"}):
            assert client.get("/gallery", headers=headers).status_code == 200, headers
    with TestClient(create_app(make_settings(api_keys="ops:admin:admin-secret"))) as rotated:
        for headers, status in (({"X-API-Key": "old:secret"}, 401), ({"X-API-Key": "legacy-secret"}, 401),
                                (ADMIN, 200), ({"Authorization": "Basic admin-secret"}, 401), ({}, 401)):
            assert rotated.get("/gallery", headers=headers).status_code == status, headers
        assert "X-API-Key" in rotated.get("/gallery").json()["detail"]
        assert rotated.get("/health").status_code == 200


def test_key_lists_are_checked_without_showing_secrets():
    with pytest.raises(ValidationError) as refused:
        Settings(api_keys="ops:admin:top-secret,bad:owner:other-secret")
    assert "'bad': role 'owner'" in describe_errors(refused.value) and "secret" not in describe_errors(refused.value)
    for spec in ("a:admin:same,b:query:same", "a:admin:x,a:query:y", "no-role-or-secret", "sp ace:admin:x",
                 "a:admin:"):
        with pytest.raises(ValidationError):
            Settings(api_keys=spec)
    with pytest.raises(ValidationError, match="name is used twice"):
        Settings(api_key="x", api_keys="default:query:y")
    keys = parse_api_keys(" a:query:p:q , b:admin:r ,")
    assert [(k.name, k.role, k.secret.get_secret_value()) for k in keys] == [("a", "query", "p:q"), ("b", "admin", "r")]
    assert match(keys, "r") is keys[1] and match(keys, "p") is None and match(keys, "") is None
    assert "p:q" not in repr(keys) and isinstance(keys[0].secret, SecretStr)
