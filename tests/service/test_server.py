"""A real `genreid serve` process on 127.0.0.1: settings from flags and GENREID_* variables, and an
acknowledged enrolment surviving kill -9."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

KEY = "from-the-environment"


def test_acknowledged_entries_survive_kill_9(start_genreid, models_dir: Path, tmp_path: Path, crop):
    """The port as a flag over a conflicting variable, the key from the environment."""
    flags = ("--models", str(models_dir), "--data", str(tmp_path / "data"))
    server = start_genreid(*flags, env={"GENREID_PORT": "1", "GENREID_API_KEY": KEY}, api_key=KEY)
    client = server.client
    assert httpx.get(f"{server.url}/gallery").status_code == 401  # key from GENREID_API_KEY
    files = [("files", (f"{i}.png", crop(person, i))) for i, person in enumerate((1, 1, 2, 3))]
    response = client.post("/gallery", files=files, data={"person_id": ["p1", "p1", "p2", "p3"]})
    assert response.status_code == 201
    acknowledged = response.json()["entries"]
    server.kill()
    client = start_genreid(*flags, api_key=KEY, env={"GENREID_API_KEY": KEY}).client
    assert client.get("/health").json()["index_size"] == 4
    assert client.get("/gallery").json() == {"entries": 4, "persons": 3}
    for i, person in enumerate((1, 1, 2, 3)):
        best = client.post("/query", files={"file": ("q.png", crop(person, i))}).json()["matches"][0]
        assert best["entry_id"] == acknowledged[i]["entry_id"] and best["distance"] < 1e-3


def test_start_up_failures_are_one_line_and_a_non_zero_exit(models_dir: Path, tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gallery.sqlite3").write_bytes(b"not a database" * 64)
    cases = {
        "gallery.sqlite3: not a usable gallery database": ["--models", str(models_dir), "--data",
                                                           str(tmp_path / "data")],
        "no model metadata": ["--models", str(tmp_path / "nowhere")],
        "Milvus gallery http://127.0.0.1:9 collection genreid": ["--models", str(models_dir), "--gallery-uri", "http://127.0.0.1:9"],
    }
    for expected, flags in cases.items():
        result = subprocess.run([sys.executable, "-m", "genreid.service.cli", "serve", *flags], capture_output=True,
                                text=True, timeout=120, env={**os.environ, "GENREID_DEVICE": "cpu"})
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("genreid serve: ")


def test_bad_settings_stop_the_command_with_a_clear_error(models_dir: Path):
    result = subprocess.run(
        [sys.executable, "-m", "genreid.service.cli", "serve", "--max-files", "0", "--models", str(models_dir)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "GENREID_DEVICE": "gpu-please"},
    )
    assert result.returncode == 2
    assert "max_files" in result.stderr and "device" in result.stderr


def test_every_setting_has_a_flag():
    result = subprocess.run([sys.executable, "-m", "genreid.service.cli", "serve", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--host", "--port", "--models", "--data", "--device", "--max-upload-bytes", "--max-files",
                   "--max-pixels", "--api-key", "--log-level", "--threads"):
        assert option in result.stdout


def test_the_listening_socket_says_tcp_so_connections_get_tcp_nodelay():
    """asyncio sets TCP_NODELAY on accepted connections only when the listening socket's protocol is TCP; with
    protocol 0, Nagle's algorithm and delayed ACKs held every small response back by 40 ms."""
    import asyncio
    import socket

    from genreid.service.server import listening_socket

    sock = listening_socket("127.0.0.1", 0)

    async def accepted_nodelay() -> int:
        seen: list[int] = []

        async def on_connection(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname())
        while not seen:
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        return seen[0]

    try:
        assert asyncio.run(accepted_nodelay()) != 0
    finally:
        sock.close()
