"""Fixtures every test directory may use: real `genreid serve` processes and a real `milvus-lite server` process
on 127.0.0.1 (the Milvus tests skip with a reason when the milvus extra is not installed)."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from genreid.service.store.milvus_lite import SERVER_ARGS as MILVUS_LITE_SERVER_ARGS

HAS_MILVUS = all(importlib.util.find_spec(name) for name in ("pymilvus", "milvus_lite"))
NEEDS_MILVUS = pytest.mark.skipif(not HAS_MILVUS, reason="needs the milvus extra (pip install -e '.[milvus]')")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


STARTUP_SECONDS = 90


class GenreidServer:
    """`genreid serve` as a user starts it (`python -m genreid.service.cli serve`), on a free port of 127.0.0.1."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str], api_key: str | None = None):
        self.port = free_port()
        self.log = log
        command = [sys.executable, "-m", "genreid.service.cli", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), *args]
        # GENREID_DATA: a directory of this server's own unless a flag names one, so nothing (a Milvus-backed
        # server's audit log) is written under the working directory.
        environment = {**os.environ, "GENREID_THREADS": "1", "GENREID_DEVICE": "cpu",
                       "GENREID_LOG_LEVEL": "warning", "GENREID_DATA": str(log.parent / f"{log.stem}-data"), **env}
        with log.open("ab") as output:
            self.process = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT)
        headers = {} if api_key is None else {"X-API-Key": api_key}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert self.process.poll() is None, f"server exited: {log.read_text()}"
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no /health after {STARTUP_SECONDS}s: {log.read_text()}"
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=20)

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


StartGenreid = Callable[..., GenreidServer]


@pytest.fixture
def start_genreid(tmp_path: Path) -> Iterator[StartGenreid]:
    """Start real servers: `start_genreid(*flags, env={...}, api_key=...)`; each is stopped after the test."""
    started: list[GenreidServer] = []

    def start(*args: str, env: dict[str, str] | None = None, api_key: str | None = None) -> GenreidServer:
        server = GenreidServer(args, tmp_path / f"genreid-{len(started)}.log", env or {}, api_key)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class MilvusLiteServer:
    """`milvus-lite server` on 127.0.0.1 over one data directory; can be killed with SIGKILL and restarted on the
    same directory and port, as an engine crash would."""

    def __init__(self, data_dir: Path, log: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        command = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
                   "--host", "127.0.0.1", "--port", str(self.port), *MILVUS_LITE_SERVER_ARGS]
        with self.log.open("a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited with {self.process.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"milvus-lite server did not listen on {self.port} within {timeout} s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusLiteServer]:
    """One engine for the session's tests; each test uses collections of its own."""
    if not HAS_MILVUS:
        pytest.skip("needs the milvus extra (pip install -e '.[milvus]')")
    root = tmp_path_factory.mktemp("milvus-server")
    server = MilvusLiteServer(root / "data", root / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def start_milvus_server(tmp_path: Path) -> Iterator[Callable[[], MilvusLiteServer]]:
    """A private engine per test (for tests that kill it): call it to get a started server."""
    if not HAS_MILVUS:
        pytest.skip("needs the milvus extra (pip install -e '.[milvus]')")
    started: list[MilvusLiteServer] = []

    def start() -> MilvusLiteServer:
        server = MilvusLiteServer(tmp_path / f"milvus-{len(started)}", tmp_path / f"milvus-{len(started)}.log")
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
