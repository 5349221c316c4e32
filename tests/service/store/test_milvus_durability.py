"""Concurrent writes survive kill -9 of the engine: through a `milvus-lite server` run the way
service/store/milvus_lite.py says, through Milvus itself (standalone, its own etcd and storage), and through the
in-process milvus-lite that a store serialises itself.

Each drives many small concurrent batches (the pattern that tore milvus-lite's write-ahead log when its calls ran in
parallel), kills the engine's process with SIGKILL mid-load, and requires every acknowledged entry after the restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="needs the milvus extra (pip install -e '.[milvus]')")

from genreid.service.store import GalleryStore, NewEntry, StoreUnavailable  # noqa: E402
from genreid.service.store.milvus import MilvusStore  # noqa: E402

DIM = 8
WRITERS = 6
ACKNOWLEDGED_BEFORE_KILL = 300

# One process of writers on an in-process engine: prints each acknowledged entry id, flushed, until killed.
WRITER_PROCESS = """
import sys, threading
import numpy as np
from genreid.service.store import NewEntry
from genreid.service.store.milvus import MilvusStore
store = MilvusStore(sys.argv[1], collection="g", code_dim={dim}, model_id=None)
out = threading.Lock()
def write(worker):
    rng = np.random.default_rng(worker)
    while True:
        entry, = store.add([NewEntry(person_id=f"p{{worker}}")], rng.standard_normal((1, {dim})).astype(np.float32))
        with out:
            print(entry.entry_id, flush=True)
threads = [threading.Thread(target=write, args=(w,)) for w in range({writers})]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


def every_id(store: GalleryStore) -> set[int]:
    page = store.list_entries(limit=100_000)
    return {entry.entry_id for entry in page.entries}


def test_concurrent_writes_through_an_engine_server_survive_its_kill(start_milvus_server):
    engine = start_milvus_server()
    stores = [MilvusStore(engine.uri, collection="g", code_dim=DIM, model_id=None, timeout=5) for _ in range(2)]
    acknowledged: set[int] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def write(worker: int) -> None:
        rng = np.random.default_rng(worker)
        store = stores[worker % 2]
        while not stop.is_set():
            try:
                entry, = store.add([NewEntry(person_id=f"p{worker}")], rng.standard_normal((1, DIM)).astype(np.float32))
            except StoreUnavailable:
                time.sleep(0.05)
                continue
            with lock:
                acknowledged.add(entry.entry_id)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    for writer in writers:
        writer.start()
    try:
        deadline = time.monotonic() + 120
        while len(acknowledged) < ACKNOWLEDGED_BEFORE_KILL and time.monotonic() < deadline:
            time.sleep(0.05)
        with lock:  # no acknowledgement is counted after the kill
            engine.kill()
            before_kill = set(acknowledged)
    finally:
        stop.set()
        for writer in writers:
            writer.join(30)
        for store in stores:
            store.close()
    assert len(before_kill) >= ACKNOWLEDGED_BEFORE_KILL
    engine.start()
    reopened = MilvusStore(engine.uri, collection="g", code_dim=DIM, model_id=None)
    try:
        missing = before_kill - every_id(reopened)
    finally:
        reopened.close()
    assert not missing, f"{len(missing)} of {len(before_kill)} acknowledged entries lost by the restart"


def test_concurrent_writes_to_an_in_process_engine_survive_a_kill_of_its_process(tmp_path: Path):
    uri = str(tmp_path / "gallery.db")
    script = WRITER_PROCESS.format(dim=DIM, writers=WRITERS)
    root = Path(__file__).resolve().parents[3]
    process = subprocess.Popen([sys.executable, "-c", script, uri], stdout=subprocess.PIPE, cwd=root,
                               env={**os.environ, "PYTHONPATH": str(root)}, text=True)
    acknowledged: set[int] = set()
    try:
        assert process.stdout is not None
        for line in process.stdout:  # ids arrive as the writers' adds return
            acknowledged.add(int(line))
            if len(acknowledged) >= ACKNOWLEDGED_BEFORE_KILL:
                break
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert len(acknowledged) >= ACKNOWLEDGED_BEFORE_KILL, "the writer process stopped early"
    reopened = MilvusStore(uri, collection="g", code_dim=DIM, model_id=None)
    try:
        missing = acknowledged - every_id(reopened)
    finally:
        reopened.close()
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged entries lost by the restart"
