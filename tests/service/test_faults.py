"""Machine faults, injected without root (CI runs as root, where chmod stops no write): a full database through
SQLite's max_page_count, a store that refuses writes through `PRAGMA query_only`, a store call that raises what
no handler knows, and, at start-up, a truncated gallery, a garbage ONNX file, a data directory that cannot be
one, and a port in use. Each answer is checked for its status and JSON body, that nothing changed (entries,
search mirror, audit log), that reads go on, and that writes work again once the cause is gone."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from genreid.service.app import create_app, open_services
from genreid.service.core.model_json import MODEL_FILES
from genreid.service.dependencies import Services
from genreid.service.settings import Settings
from genreid.service.store.embedded import EmbeddedStore


@dataclass
class Served:
    client: TestClient
    services: Services
    settings: Settings

    def sql(self, statement: str) -> int | None:
        """On the store's own connection: the fault injection (a private attribute, on purpose)."""
        store = self.services.gallery
        assert isinstance(store, EmbeddedStore)
        row = store._db.execute(statement).fetchone()
        return None if row is None else row[0]

    def snapshot(self, crop) -> tuple:
        """Everything a refused write must leave as it was: entries, the search mirror's answer, the audit log."""
        entries = self.client.get("/gallery/entries", params={"limit": 1000}).json()["entries"]
        best = self.client.post("/query", files={"file": ("q.png", crop(1))}, params={"include_noise": "false"})
        assert best.status_code == 200, best.text
        audit = self.settings.audit_path.read_text() if self.settings.audit_path.exists() else ""
        return entries, best.json()["matches"], audit


@pytest.fixture
def served(make_settings, enrol) -> Iterator[Served]:
    settings = make_settings()
    services = open_services(settings)
    with TestClient(create_app(settings, services)) as client:
        enrol(client, [(1, 0), (2, 0), (3, 0)])
        yield Served(client, services, settings)


def write_requests(crop) -> list[tuple[str, str, dict]]:
    """One of every write route, each on something that exists (entries 1-3 of p1-p3)."""
    return [
        ("POST", "/gallery", {"files": [("files", ("a.png", crop(4)))], "data": {"person_id": ["p4"]}}),
        ("PATCH", "/gallery/entries/1", {"json": {"person_id": "renamed"}}),
        ("DELETE", "/gallery/persons/p2", {}),
        ("POST", "/gallery/persons/p3/merge", {"json": {"into": "p4"}}),
        ("DELETE", "/gallery/entries/3", {}),
    ]


def check_refused(served: Served, crop, status: int, words: str, requests: list[tuple[str, str, dict]]) -> None:
    before = served.snapshot(crop)
    for method, path, kwargs in requests:
        response = served.client.request(method, path, **kwargs)
        assert response.status_code == status, (method, path, response.text)
        body = response.json()
        assert words in body["detail"] and "nothing was written" in body["detail"], body
        assert response.headers["X-Request-ID"]
    assert served.snapshot(crop) == before  # nothing changed, and reads (list, query) kept working
    assert served.client.get("/health").status_code == 200


def audited(served: Served) -> int:
    return len(served.settings.audit_path.read_text().splitlines())


def test_a_full_database_is_507_and_changes_nothing(served: Served, crop):
    served.sql(f"PRAGMA max_page_count = {served.sql('PRAGMA page_count')}")
    method, path, enrol_one = write_requests(crop)[0]
    for _ in range(500):  # fill the pages' free space; SQLite then needs a page it may not have
        if served.client.request(method, path, **enrol_one).status_code == 507:
            break
    check_refused(served, crop, 507, "full", [(method, path, enrol_one)] * 3)
    before = audited(served)
    served.sql("PRAGMA max_page_count = 1073741823")  # space freed
    assert served.client.request(method, path, **enrol_one).status_code == 201
    assert audited(served) == before + 1


def test_a_store_refusing_writes_is_503_with_retry_after(served: Served, crop):
    served.sql("PRAGMA query_only = ON")  # what a read-only directory or file does to SQLite, without root
    check_refused(served, crop, 503, "cannot write the gallery", write_requests(crop))
    assert served.client.delete("/gallery/entries/1").headers["Retry-After"] == "5"
    served.sql("PRAGMA query_only = OFF")
    statuses = [served.client.request(method, path, **kwargs).status_code
                for method, path, kwargs in write_requests(crop)]
    assert statuses == [201, 200, 200, 200, 200]
    assert audited(served) == 1 + 5  # the fixture's enrolment, then the five writes once they succeeded


def test_an_unhandled_error_is_a_json_500_with_the_request_id(served: Served, monkeypatch, caplog):
    def broken() -> tuple[int, int]:
        raise RuntimeError("disk controller on fire")

    monkeypatch.setattr(served.services.gallery, "counts", broken)
    response = served.client.get("/gallery", headers={"X-Request-ID": "trace-42"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json()["request_id"] == response.headers["X-Request-ID"] == "trace-42"
    assert "fire" not in response.text  # the cause goes to the log, not to the client
    logged = [r for r in caplog.records if r.name == "genreid.service.observability"]
    assert "trace-42" in logged[0].getMessage() and logged[0].exc_info[1].args == ("disk controller on fire",)
    monkeypatch.undo()
    assert served.client.get("/gallery").status_code == 200


def serve(*flags: str, level: str = "warning") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "genreid.service.cli", "serve", "--log-level", level, *flags],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "GENREID_DEVICE": "cpu"})


def check_one_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genreid serve: "), result.stderr
    assert all(words in lines[0] for words in expected), lines[0]


def test_start_up_faults_are_one_line_and_exit_2(models_dir: Path, tmp_path: Path, make_settings, enrol):
    with TestClient(create_app(make_settings())) as client:  # a gallery with entries, then truncated
        enrol(client, [(i, 0) for i in range(20)])
    database = tmp_path / "data" / "gallery.sqlite3"
    os.truncate(database, database.stat().st_size // 2)
    check_one_line(serve("--models", str(models_dir), "--data", str(database.parent)),
                   "gallery.sqlite3: not a usable gallery database")

    garbage = tmp_path / "garbage-models"
    shutil.copytree(models_dir, garbage)
    (garbage / MODEL_FILES["inv_noise"]).write_bytes(os.urandom(4096))
    check_one_line(serve("--models", str(garbage), "--data", str(tmp_path / "fresh")),
                   str(garbage / MODEL_FILES["inv_noise"]), "ONNX Runtime cannot load it")

    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("a file where the data directory should be")
    check_one_line(serve("--models", str(models_dir), "--data", str(not_a_directory)),
                   str(not_a_directory), "cannot create the gallery directory")
    check_one_line(serve("--models", str(models_dir), "--data", str(tmp_path / "fresh"),
                         "--audit-log", str(not_a_directory / "audit.jsonl")), "cannot open the audit log")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        check_one_line(serve("--models", str(models_dir), "--data", str(tmp_path / "fresh"), "--port", port),
                       f"cannot listen on 127.0.0.1:{port}", "in use")
        at_debug = serve("--models", str(models_dir), "--data", str(tmp_path / "fresh"), "--port", port,
                         level="debug")
    assert at_debug.returncode == 2 and "Traceback" in at_debug.stderr  # the traceback, only at debug
    assert at_debug.stderr.strip().splitlines()[-1].startswith("genreid serve: cannot listen")
