"""Two real `genreid serve` replicas sharing one gallery on an engine process of its own, once on a `milvus-lite
server` and once on Milvus itself (standalone 2.3.5): writes through one are read through the other at once, a
replica's crash leaves the other serving, and the engine's crash mid-load loses nothing acknowledged and shows no
partial batch (on failure it prints what the engine holds of the missing entries). Two writer processes adding and
removing at once leave every kept neighbourhood as a fresh search finds it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from genreid.service.core.similarity import code_distances

pytestmark = pytest.mark.slow


def replicas(start_genreid, engine, models_dir: Path, count: int = 2) -> list:
    flags = ("--models", str(models_dir), "--gallery-uri", engine.uri, "--gallery-collection", "shared")
    return [start_genreid(*flags) for _ in range(count)]


def enrol(client: httpx.Client, crop: Callable[..., bytes], person: int, variant: int) -> httpx.Response:
    return client.post("/gallery", files=[("files", (f"{person}-{variant}.png", crop(person, variant)))],
                       data={"person_id": [f"p{person}"], "camera": [f"c{variant % 3}"]})


def best_match(client: httpx.Client, crop: Callable[..., bytes], person: int, variant: int) -> dict:
    response = client.post("/query", files={"file": ("q.png", crop(person, variant))},
                           params={"k": 1, "include_noise": "false"})
    assert response.status_code == 200, response.text
    return response.json()["matches"][0]


def test_replicas_see_each_others_writes_at_once(start_genreid, start_milvus_server, models_dir: Path, crop):
    engine = start_milvus_server()
    first, second = replicas(start_genreid, engine, models_dir)
    added = first.client.post("/gallery", files=[("files", (f"{i}.png", crop(i, i))) for i in (1, 2, 3)],
                              data={"person_id": ["p1", "p2", "p3"]})
    assert added.status_code == 201
    ids = [e["entry_id"] for e in added.json()["entries"]]
    assert all(0 < i < 2**53 for i in ids)
    assert best_match(second.client, crop, 2, 2)["entry_id"] == ids[1]  # the very next request, other replica
    assert second.client.patch(f"/gallery/entries/{ids[0]}", json={"person_id": "p9"}).status_code == 200
    assert first.client.get(f"/gallery/entries/{ids[0]}").json()["person_id"] == "p9"
    assert second.client.delete(f"/gallery/entries/{ids[2]}").status_code == 200
    assert first.client.get(f"/gallery/entries/{ids[2]}/crop").status_code == 404
    assert first.client.get("/gallery").json() == second.client.get("/gallery").json() == {"entries": 2,
                                                                                            "persons": 2}
    health = second.client.get("/health").json()
    assert health["gallery"]["backend"] == "milvus" and engine.uri in health["gallery"]["location"]

    # A bounded mixed load over both replicas: every acknowledged entry is there, from both, once.
    def work(n: int) -> int:
        client = (first, second)[n % 2].client
        response = enrol(client, crop, 10 + n, n)
        assert response.status_code == 201, response.text
        assert best_match((second, first)[n % 2].client, crop, 10 + n, n)["entry_id"] == \
            response.json()["entries"][0]["entry_id"]
        return response.json()["entries"][0]["entry_id"]

    with ThreadPoolExecutor(4) as pool:
        acknowledged = set(pool.map(work, range(24)))
    for replica in (first, second):
        listed = replica.client.get("/gallery/entries", params={"limit": 1000}).json()
        assert {e["entry_id"] for e in listed["entries"]} == acknowledged | {ids[0], ids[1]}
        assert listed["total"] == len(acknowledged) + 2

    first.kill()
    assert enrol(second.client, crop, 99, 1).status_code == 201
    assert best_match(second.client, crop, 99, 1)["person_id"] == "p99"


def engine_state(engine, missing: set[int]) -> dict:
    """What the engine holds of entries the replicas do not list: their rows (and batch) and pending markers."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=engine.uri, dedicated=True)
    try:
        ids = ", ".join(map(str, sorted(missing))) or "-1"
        rows = client.query("shared", filter=f"entry_id in [{ids}]", output_fields=["entry_id", "batch"],
                            consistency_level="Strong")
        pending = client.query("shared_pending", filter="value > 0", output_fields=["key", "at"],
                               consistency_level="Strong")
        return {"missing": sorted(missing), "rows": list(rows), "pending": list(pending)}
    finally:
        client.close()


def test_engine_killed_mid_load_loses_nothing_acknowledged(start_genreid, start_milvus_server, models_dir: Path,
                                                           crop):
    engine = start_milvus_server()
    first, second = replicas(start_genreid, engine, models_dir)
    acknowledged: dict[int, tuple[int, int]] = {}
    refusals: list[httpx.Response] = []
    lost = [0]  # requests that got no answer at all
    stop = threading.Event()
    lock = threading.Lock()

    def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            person, variant = 100 + 50 * worker + n // 90, n % 90 + 1  # distinct crops
            try:
                response = enrol((first, second)[(worker + n) % 2].client, crop, person, variant)
            except httpx.TransportError:
                response = None
                with lock:
                    lost[0] += 1
            with lock:
                if response is not None and response.status_code == 201:
                    acknowledged[response.json()["entries"][0]["entry_id"]] = (person, variant)
                elif response is not None:
                    refusals.append(response)
            n += 1

    workers = [threading.Thread(target=load, args=(w,)) for w in range(3)]
    for worker in workers:
        worker.start()
    try:
        while len(acknowledged) < 15:
            time.sleep(0.05)
        engine.kill()
        deadline = time.monotonic() + 60
        while not refusals and time.monotonic() < deadline:
            time.sleep(0.1)
        engine.start()
        # Both replicas recover by themselves: writes are acknowledged again.
        settled = len(acknowledged)
        deadline = time.monotonic() + 90
        while len(acknowledged) < settled + 10 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    assert refusals, "the engine's death was never reported"
    assert all(r.status_code == 503 and "Milvus gallery" in r.json()["detail"] for r in refusals)
    assert len(acknowledged) >= settled + 10, "the replicas did not recover after the engine restarted"
    for replica in (first, second):
        listed = replica.client.get("/gallery/entries", params={"limit": 1000}).json()
        assert "entries" in listed, (listed, len(acknowledged), [r.text for r in refusals][:3])
        listed_ids = {e["entry_id"] for e in listed["entries"]}
        assert set(acknowledged) <= listed_ids, engine_state(engine, set(acknowledged) - listed_ids)  # nothing lost
        # A write the engine applied just before it died is stored though its answer never came: at most one
        # whole one-crop batch per failed request, never part of a batch.
        assert len(listed_ids - set(acknowledged)) <= len(refusals) + lost[0]
    for entry_id, (person, variant) in list(acknowledged.items())[::7]:
        for replica in (first, second):
            assert best_match(replica.client, crop, person, variant)["entry_id"] == entry_id


ROOT = Path(__file__).resolve().parents[3]
KEPT = 5  # neighbours kept per entry
# One writer process: once told to go, adds small batches of codes around shared centres (so both writers' entries
# enter the same neighbourhoods) and removes some of its own entries, as fast as the engine answers; prints the ids
# it leaves.
KEPT_WRITER = """
import sys
import numpy as np
from genreid.service.store import NewEntry
from genreid.service.store.milvus import MilvusStore
uri, seed = sys.argv[1], int(sys.argv[2])
centres = np.random.default_rng(0).normal(size=(3, 8))
rng = np.random.default_rng(seed)
store = MilvusStore(uri, collection="shared", code_dim=8, model_id=None, neighbourhood_size={kept})
print("ready", flush=True)
sys.stdin.readline()
mine = []
for round in range(24):
    n = int(rng.integers(1, 6))
    codes = (centres[rng.integers(0, 3, n)] + 0.3 * rng.normal(size=(n, 8))).astype(np.float32)
    mine += [e.entry_id for e in store.add([NewEntry(f"p{{seed}}")] * n, codes)]
    if round % 4 == 3:
        gone = [mine.pop(int(rng.integers(0, len(mine)))) for _ in range(2)]
        assert store.remove_entries(gone) == gone
print(*mine, flush=True)
store.close()
"""


def searched(ids: list[int], codes: np.ndarray) -> dict[int, list[int]]:
    """Each entry's KEPT nearest others by brute force, equal distances by id (test_neighbourhoods.expected)."""
    distances = code_distances(codes, codes)
    np.fill_diagonal(distances, np.inf)
    return {entry_id: [ids[j] for j in np.lexsort((ids, row))[:KEPT]] for entry_id, row in zip(ids, distances,
                                                                                                  strict=True)}


def test_two_writers_at_once_leave_every_kept_neighbourhood_as_searched(start_milvus_server):
    from genreid.service.store.milvus import MilvusStore

    engine = start_milvus_server()
    store = MilvusStore(engine.uri, collection="shared", code_dim=8, model_id=None, neighbourhood_size=KEPT)
    writers = [subprocess.Popen([sys.executable, "-c", KEPT_WRITER.format(kept=KEPT), engine.uri, str(seed)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}) for seed in (1, 2)]
    try:
        for writer in writers:
            assert writer.stdout is not None and writer.stdout.readline() == "ready\n", writer.communicate()[1]
        for writer in writers:  # both go at once
            assert writer.stdin is not None
            writer.stdin.write("go\n")
            writer.stdin.flush()
        left: set[int] = set()
        for writer in writers:
            printed, errors = writer.communicate(timeout=300)
            assert writer.returncode == 0, errors[-3000:]
            left.update(int(i) for i in printed.split())
        ids = [entry.entry_id for entry in store.list_entries(limit=10_000).entries]
        assert set(ids) == left
        assert store.neighbourhoods(ids, KEPT) == searched(ids, store.codes(ids))
        assert not store._query(store.kept, "entry_id < 0", ["entry_id"])  # no write left its repair undone
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
        store.close()
