"""Request ids, access log records, the JSON log format and /metrics (read back with prometheus_client's own
parser)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from genreid.service.app import create_app
from genreid.service.observability import JsonFormatter

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_request_ids_are_taken_when_sane_and_made_otherwise(client: TestClient):
    assert client.get("/gallery", headers={"X-Request-ID": "abc-123:x/y=z"}).headers["X-Request-ID"] == "abc-123:x/y=z"
    made = {client.get("/gallery", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
            for bad in ("two words", "x" * 129, "ünïcode".encode(), "")}
    assert len(made) == 4 and all(len(rid) == 32 and int(rid, 16) >= 0 for rid in made)
    for response in (client.get("/gallery/entries/99"), client.get("/no/such/route"),
                     client.post("/gallery", content=b"x" * 10, headers={"content-length": str(1 << 40)})):
        assert response.status_code in (404, 413) and len(response.headers["X-Request-ID"]) == 32


def test_the_access_log_has_the_request_id_route_template_status_and_latency(client: TestClient, caplog):
    with caplog.at_level(logging.INFO, logger="genreid.access"):
        client.get("/gallery/entries/7", headers={"X-Request-ID": "find-me"})
        client.get("/wp-admin/setup.php")
    found, unmatched = [r for r in caplog.records if r.name == "genreid.access"]
    assert (found.request_id, found.route, found.status, found.method) == (
        "find-me", "/gallery/entries/{entry_id}", 404, "GET")
    assert "request_id=find-me" in found.getMessage() and found.latency_ms > 0
    assert unmatched.route == "unmatched" and unmatched.path == "/wp-admin/setup.php"
    line = json.loads(JsonFormatter().format(found))
    assert {key: line[key] for key in ("request_id", "route", "status", "logger", "level")} == {
        "request_id": "find-me", "route": "/gallery/entries/{entry_id}", "status": 404, "logger": "genreid.access",
        "level": "info"}
    assert isinstance(line["latency_ms"], float) and "\n" not in JsonFormatter().format(found)


def test_json_log_lines_carry_tracebacks_on_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    formatted = JsonFormatter().format(record)
    assert "\n" not in formatted
    line = json.loads(formatted)
    assert line["message"] == "failed here" and "ValueError: boom" in line["exc_info"]


def test_metrics_count_every_request_once(client: TestClient, enrol):
    enrol(client, [(1, 0), (1, 1), (2, 0)])
    labels = {"method": "GET", "route": "/gallery/entries/{entry_id}", "status": "200"}
    before = scrape(client)
    n = 7
    for i in range(n):
        assert client.get(f"/gallery/entries/{1 + i % 3}").status_code == 200
    client.get("/gallery/entries/99")  # another status: another series
    after = scrape(client)
    assert value(after, "genreid_http_requests_total", **labels) - value(
        before, "genreid_http_requests_total", **labels) == n
    assert value(after, "genreid_http_request_duration_seconds_count", **labels) - value(
        before, "genreid_http_request_duration_seconds_count", **labels) == n
    assert value(after, "genreid_http_requests_total", **{**labels, "status": "404"}) == 1
    assert value(after, "genreid_gallery_entries") == 3 and value(after, "genreid_gallery_persons") == 2
    assert value(after, "genreid_inference_batch_size_sum", network="inv_id") == 3  # one run of the 3 crops
    info = [labels for (name, labels) in after if name == "genreid_model_info"]
    assert len(info) == 1 and ("gallery_backend", "embedded") in info[0]
    assert dict(info[0])["precision"].startswith("inv_id=")


@pytest.fixture
def keyed(make_settings) -> Iterator[TestClient]:
    keys = "prom:metrics:scrape-secret,viewer:query:query-secret"
    with TestClient(create_app(make_settings(api_keys=keys))) as client:
        yield client


def test_metrics_are_protected_and_a_stock_scrape_config_gets_in(keyed: TestClient, make_settings, tmp_path):
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    scrape(keyed, Authorization="Bearer scrape-secret")  # what Prometheus sends with `authorization: credentials`
    scrape(keyed, **{"X-API-Key": "query-secret"})
    assert keyed.get("/gallery", headers={"Authorization": "Bearer scrape-secret"}).status_code == 403
    with TestClient(create_app(make_settings(api_keys="ops:admin:x", metrics_public=True,
                                             data=tmp_path / "public"))) as public:
        scrape(public)
        assert public.get("/gallery").status_code == 401
