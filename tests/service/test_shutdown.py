"""A real `genreid serve` stopped with SIGTERM in the middle of a stream of enrolments: the requests in flight
are answered, the lifespan closes the gallery, and after a restart the gallery holds exactly the acknowledged
entries; its log, asked for as JSON, is one object per line."""

from __future__ import annotations

import json
import signal
import threading
import time
from itertools import count
from pathlib import Path

import httpx

WORKERS = 4


def test_sigterm_keeps_every_acknowledged_write_and_only_those(start_genreid, models_dir: Path, tmp_path: Path,
                                                                 crop):
    flags = ("--models", str(models_dir), "--data", str(tmp_path / "data"), "--log-format", "json")
    server = start_genreid(*flags, env={"GENREID_LOG_LEVEL": "info"})
    assert server.client.get("/gallery", headers={"X-Request-ID": "before-the-stream"}).status_code == 200
    acknowledged: list[int] = []
    answers: list[int] = []
    lock = threading.Lock()

    def enrol(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in count():
                try:
                    response = client.post("/gallery", files=[("files", (f"{i}.png", crop(worker, i)))],
                                           data={"person_id": [f"w{worker}"]})
                except httpx.TransportError:  # the server stopped accepting: this one was never taken
                    return
                with lock:
                    answers.append(response.status_code)
                    if response.status_code == 201:
                        acknowledged.extend(entry["entry_id"] for entry in response.json()["entries"])

    threads = [threading.Thread(target=enrol, args=(worker,)) for worker in range(WORKERS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 40:
        assert time.monotonic() < deadline, "enrolments too slow"
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    # uvicorn re-raises the signal once shut down, so the exit is SIGTERM's (what service managers expect)
    assert server.process.wait(timeout=30) == -signal.SIGTERM
    assert set(answers) == {201}  # in-flight requests were answered, none cut off with an error

    restarted = start_genreid(*flags).client
    listed = restarted.get("/gallery/entries", params={"limit": 1000}).json()
    assert sorted(entry["entry_id"] for entry in listed["entries"]) == sorted(acknowledged)
    assert listed["total"] == len(acknowledged)

    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]
    assert lines[-2]["message"] == "Application shutdown complete."  # the lifespan closed the gallery
    [first] = [line for line in lines if line.get("request_id") == "before-the-stream"]
    assert (first["logger"], first["route"], first["status"], first["method"]) == (
        "genreid.access", "/gallery", 200, "GET")
    assert first["latency_ms"] > 0
    enrolled = [line for line in lines if (line.get("method"), line.get("route"), line.get("status")) == (
        "POST", "/gallery", 201)]
    assert len(enrolled) == len(acknowledged)  # one crop per request, each one logged
