"""Retention on a fake clock: entries enrolled more than N days ago go (crops with them), by the server's hourly
task and by `genreid gallery prune`, and every pruning is audited."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from genreid.service.app import create_app, open_services
from genreid.service.audit import AuditLog
from genreid.service.retention import prune, prune_periodically
from genreid.service.store import NewEntry
from genreid.service.store.embedded import EmbeddedStore

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAY = 24 * 3600.0
CODE_DIM = 32  # the tiny test models' (tests/service/conftest.py)


class Stop(Exception):
    """Ends the (endless) pruning loop."""


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def add(store: EmbeddedStore, *people: str, enrolled_at: datetime | None = None) -> list[int]:
    entries = [NewEntry(person, crop=b"webp", enrolled_at=enrolled_at) for person in people]
    codes = np.random.default_rng(len(people)).normal(size=(len(people), CODE_DIM)).astype(np.float32)
    return [entry.entry_id for entry in store.add(entries, codes)]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_server_loop_prunes_on_its_own_schedule(tmp_path: Path):
    """Days pass on the fake clock, one per (fake) sleep; each run removes what has aged past 30 days."""
    clock = FakeClock()
    store = EmbeddedStore(tmp_path / "data", code_dim=CODE_DIM, clock=clock)
    audit = AuditLog(tmp_path / "audit.jsonl", clock=clock)
    first = add(store, "a", "b")
    clock.advance(10 * DAY)
    second = add(store, "c")
    remaining: list[int] = []

    async def sleep(seconds: float) -> None:
        remaining.append(store.counts()[0])
        clock.advance(seconds)
        if clock.now > START + timedelta(days=42):
            raise Stop

    def once() -> list[int]:
        return prune(store, audit, older_than_days=30, actor="retention")

    with pytest.raises(Stop):
        asyncio.run(prune_periodically(once, every_s=DAY, sleep=sleep))
    # runs at days 10..42: entries of day 0 go at the run of day 31 (enrolled before day 1), day 10's at day 41
    assert remaining == [3] * 21 + [1] * 10 + [0] * 2
    assert [(r["actor"], r["action"], r["entry_ids"]) for r in records(audit.path)] == [
        ("retention", "retention", first), ("retention", "retention", second)]
    assert records(audit.path)[0]["at"] == (START + timedelta(days=31)).isoformat()
    assert store.crop(first[0]) is None
    store.close()
    audit.close()


def test_the_server_prunes_at_start_and_audits_it(make_settings):
    settings = make_settings(retention_days=30)
    services = open_services(settings)
    old = add(services.gallery, "old", "older", enrolled_at=datetime.now(timezone.utc) - timedelta(days=31))
    fresh = add(services.gallery, "fresh")
    with TestClient(create_app(settings, services)) as client:
        deadline = time.monotonic() + 10
        while client.get("/gallery").json()["entries"] != 1:
            assert time.monotonic() < deadline, "retention did not run at start-up"
            time.sleep(0.05)
        listed = client.get("/gallery/entries").json()["entries"]
    assert [entry["entry_id"] for entry in listed] == fresh
    [record] = records(settings.audit_path)
    assert (record["actor"], record["action"], record["entry_ids"], record["route"]) == (
        "retention", "retention", old, None)


def test_gallery_prune_command(models_dir: Path, tmp_path: Path):
    data = tmp_path / "data"
    store = EmbeddedStore(data, code_dim=CODE_DIM)
    old = add(store, "old", enrolled_at=datetime.now(timezone.utc) - timedelta(days=8))
    add(store, "fresh", enrolled_at=datetime.now(timezone.utc) - timedelta(days=6))
    store.close()

    def prune_command(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "genreid.service.cli", "gallery", "prune", *flags,
                               "--data", str(data), "--models", str(models_dir)],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "GENREID_DEVICE": "cpu"})

    refused = prune_command("--older-than-days", "0")
    assert refused.returncode == 2 and "at least 1" in refused.stderr
    done = prune_command("--older-than-days", "7")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"removed": 1}
    [record] = records(data / "audit.jsonl")
    assert record["actor"].startswith("cli:") and record["entry_ids"] == old
    store = EmbeddedStore(data, code_dim=CODE_DIM)  # held, as a running server holds it
    assert [e.person_id for e in store.list_entries().entries] == ["fresh"]
    held = prune_command("--older-than-days", "1")
    assert held.returncode == 2 and "in use by another process" in held.stderr
    store.close()
