"""The audit log's durability follows the gallery's: flushed always, fsync'd only when power-safe."""

from __future__ import annotations

import json
import os

import pytest

from genreid.service.audit import AuditLog, AuditRecord


@pytest.mark.parametrize("power_safe", [False, True])
def test_a_record_is_in_the_file_at_once_and_fsyncd_only_when_power_safe(tmp_path, monkeypatch, power_safe):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    audit = AuditLog(tmp_path / "audit.jsonl", power_safe=power_safe)
    try:
        for n in range(3):
            audit.record(AuditRecord(actor="ops", action="enrol", route="POST /gallery", entry_ids=[n],
                                     person_ids=["p"]))
            # another reader sees the line before close: it left this process, so kill -9 cannot lose it
            lines = (tmp_path / "audit.jsonl").read_text().splitlines()
            assert json.loads(lines[-1])["entry_ids"] == [n] and len(lines) == n + 1
    finally:
        audit.close()
    assert len(synced) == (3 if power_safe else 0)
