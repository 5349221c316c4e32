"""A real `genreid serve` process on 127.0.0.1: settings from flags and GENREID_* variables, and an
acknowledged enrolment surviving kill -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

KEY = "from-the-environment"
STARTUP_SECONDS = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(models: Path, data: Path, log: Path) -> Iterator[tuple[subprocess.Popen, httpx.Client]]:
    """Start the server with the port as a flag over a conflicting variable, the key from the environment."""
    port = free_port()
    env = {**os.environ, "GENREID_PORT": "1", "GENREID_API_KEY": KEY, "GENREID_THREADS": "1",
           "GENREID_DEVICE": "cpu", "GENREID_LOG_LEVEL": "warning"}
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--models", str(models), "--data", str(data)]
    with log.open("ab") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": KEY}, timeout=30)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, f"server exited: {log.read_text()}"
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no /health after {STARTUP_SECONDS}s: {log.read_text()}"
            time.sleep(0.2)
        yield process, client
    finally:
        client.close()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_acknowledged_entries_survive_kill_9(models_dir: Path, tmp_path: Path, crop):
    data, log = tmp_path / "data", tmp_path / "server.log"
    with serve(models_dir, data, log) as (process, client):
        assert httpx.get(client.base_url.join("/gallery")).status_code == 401  # key from GENREID_API_KEY
        files = [("files", (f"{i}.png", crop(person, i))) for i, person in enumerate((1, 1, 2, 3))]
        response = client.post("/gallery", files=files, data={"person_id": ["p1", "p1", "p2", "p3"]})
        assert response.status_code == 201
        acknowledged = response.json()["entries"]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=20)
    with serve(models_dir, data, log) as (_, client):
        assert client.get("/health").json()["index_size"] == 4
        assert client.get("/gallery").json() == {"entries": 4, "persons": 3}
        for i, person in enumerate((1, 1, 2, 3)):
            best = client.post("/query", files={"file": ("q.png", crop(person, i))}).json()["matches"][0]
            assert best["entry_id"] == acknowledged[i]["entry_id"] and best["distance"] < 1e-3


def test_bad_settings_stop_the_command_with_a_clear_error(models_dir: Path):
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--max-files", "0", "--models", str(models_dir)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "GENREID_DEVICE": "gpu-please"},
    )
    assert result.returncode == 2
    assert "max_files" in result.stderr and "device" in result.stderr


def test_every_setting_has_a_flag():
    result = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--host", "--port", "--models", "--data", "--device", "--max-upload-bytes", "--max-files",
                   "--max-pixels", "--api-key", "--log-level", "--threads"):
        assert option in result.stdout
