"""Fixtures every test directory may use: a real `milvus-lite server` process on 127.0.0.1 for the Milvus
gallery tests (they skip with a reason when the milvus extra is not installed)."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HAS_MILVUS = all(importlib.util.find_spec(name) for name in ("pymilvus", "milvus_lite"))
NEEDS_MILVUS = pytest.mark.skipif(not HAS_MILVUS, reason="needs the milvus extra (pip install -e '.[milvus]')")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
                   "--host", "127.0.0.1", "--port", str(self.port)]
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
def start_milvus_server(tmp_path: Path) -> Iterator[type[MilvusLiteServer]]:
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
