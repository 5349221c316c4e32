"""The audit log: one JSON object per line for every write and deletion the gallery acknowledged (who by key name,
never its secret; when; which route; which entries and persons), appended before the answer leaves.

A record is as durable as the gallery write it records: flushed to the operating system always (it survives kill -9
of the server), fsync'd only with `--power-safe`, which fsyncs the gallery's commits too (it survives power loss).
An fsync on every record cost more than a fifth of a one-crop enrolment (docs/BENCHMARKS.md#post-gallery).

Records are written after the store acknowledged, so the log never claims a change that did not happen. If the
record itself cannot be written (its disk is full), the change stands and the record goes to the error log
instead, whole, so an operator can copy it back.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditRecord:
    actor: str  # the API key's name; "anonymous" on a server without keys; "retention" for the server's pruning
    action: str  # enrol, relabel, merge, remove_entry, remove_person, retention
    route: str | None  # the route template ("METHOD /path/{param}"); None outside a request (retention, CLI)
    entry_ids: list[int]
    person_ids: list[str] = field(default_factory=list)
    detail: dict[str, str] = field(default_factory=dict)  # e.g. relabel's new person id, merge's target
    request_id: str | None = None


class AuditLogError(RuntimeError):
    """The audit log cannot be opened for appending: the server refuses to start rather than run unaudited."""


class AuditLog:
    """An append-only file (opened once with O_APPEND; every record flushed, and fsync'd when `power_safe`)."""

    def __init__(self, path: Path, *, power_safe: bool = False, clock: Callable[[], datetime] | None = None):
        self.path = path
        self.power_safe = power_safe
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
        except OSError as err:
            raise AuditLogError(f"{path}: cannot open the audit log for appending ({err.strerror})") from None
        self._lock = threading.Lock()

    def record(self, record: AuditRecord) -> None:
        line = json.dumps({"at": self.clock().isoformat(), **asdict(record)}, ensure_ascii=False) + "\n"
        try:
            with self._lock:
                self._file.write(line)
                self._file.flush()
                if self.power_safe:
                    os.fsync(self._file.fileno())
        except OSError as err:
            log.error("audit record not written to %s (%s): %s", self.path, err, line.rstrip())

    def close(self) -> None:
        with self._lock:
            self._file.close()

