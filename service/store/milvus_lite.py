"""How milvus-lite must be run for the Milvus store's guarantees to hold: one engine call at a time.

milvus-lite 3.2.2 appends every insert and delete to an Arrow IPC write-ahead log without a lock, while its gRPC
server handles calls on a pool of 10 threads. Concurrent writes interleave their bytes in the log; the engine keeps
answering from memory, but after a restart its recovery stops at the first torn record and drops every write after
it, acknowledged or not (docs/GALLERY_STORE.md#milvus-lite-and-concurrent-writes has the measurement). Serialising
the engine's calls avoids it: a server runs with one worker, and a store on milvus-lite inside this process takes
a lock per data directory. A Milvus server or cluster needs neither.

Nothing here imports pymilvus, so the test and bench harnesses that start `milvus-lite server` can use it without
the extra.
"""

from __future__ import annotations

import threading
from pathlib import Path

# `milvus-lite server ... --max-workers 1`: the engine takes one call at a time.
SERVER_ARGS: tuple[str, ...] = ("--max-workers", "1")

_locks: dict[Path, threading.RLock] = {}
_locks_guard = threading.Lock()


def is_in_process(uri: str) -> bool:
    """A URI naming a `.db` path runs milvus-lite inside this process (pymilvus starts it)."""
    return uri.endswith(".db")


def engine_lock(uri: str) -> threading.RLock:
    """The lock every store in this process takes around its calls to the in-process engine at `uri` (one engine
    per data directory, so one lock per resolved path). Re-entrant: opening a store sweeps through the same lock."""
    path = Path(uri).resolve()
    with _locks_guard:
        return _locks.setdefault(path, threading.RLock())
