"""Fixtures every test directory may use: real `genreid serve` processes, and the two Milvus engines the Milvus store
is tested on, each a process of its own on 127.0.0.1: a `milvus-lite server` and Milvus itself (the standalone server
of the `milvus` wheel, 2.3.5, through tests/service/store/milvus_engine.py). The Milvus tests skip with a reason when
the milvus extra is not installed, or when Milvus itself cannot run here; with REQUIRE_MILVUS_ENGINE=1 (CI) they
fail instead."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from genreid.service.store.milvus_lite import SERVER_ARGS as MILVUS_LITE_SERVER_ARGS

HAS_MILVUS = all(importlib.util.find_spec(name) for name in ("pymilvus", "milvus_lite"))
NEEDS_MILVUS = pytest.mark.skipif(not HAS_MILVUS, reason="needs the milvus extra (pip install -e '.[milvus]')")
HAS_MILVUS_ENGINE = HAS_MILVUS and importlib.util.find_spec("milvus") is not None
REQUIRE_MILVUS_ENGINE = os.environ.get("REQUIRE_MILVUS_ENGINE") == "1"
MILVUS_ENGINE_SCRIPT = Path(__file__).parent / "service" / "store" / "milvus_engine.py"
MILVUS_ENGINES = ("milvus-lite", "milvus")  # what start_milvus_server is parametrised over


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


class EngineProcess:
    """A gallery engine as a process on 127.0.0.1 over one data directory: started, killed with SIGKILL and
    restarted on the same directory and port, as an engine crash would be. Subclasses say how to run it."""

    engine = ""
    start_seconds = 60.0
    stop_seconds = 10.0

    def __init__(self, data_dir: Path, log: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def exited(self) -> Exception:
        """What to raise when the process ended before it listened."""
        return RuntimeError(f"{self.engine} exited with {self.process.returncode}: "
                            f"{self.log.read_text(errors='replace')[-2000:]}")

    def start(self) -> None:
        with self.log.open("a") as log:  # its own process group: kill() takes the engine's children with it
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + self.start_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self.exited()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.engine} did not listen on {self.port} within {self.start_seconds:.0f} s")

    def kill(self) -> None:
        """kill -9 of the engine and of whatever it started, as a crash of the engine's host would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(self.stop_seconds)
            except subprocess.TimeoutExpired:
                self.kill()


class MilvusLiteServer(EngineProcess):
    """`milvus-lite server`."""

    engine = "milvus-lite"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
                "--host", "127.0.0.1", "--port", str(self.port), *MILVUS_LITE_SERVER_ARGS]


class MilvusEngineServer(EngineProcess):
    """Milvus itself (standalone 2.3.5 from the `milvus` wheel, with its own etcd and local storage), answering on
    127.0.0.1:`port` only (tests/service/store/milvus_engine.py runs it in a network namespace of its own)."""

    engine = "milvus"
    start_seconds = 180.0
    stop_seconds = 3.0  # Milvus's graceful stop takes over 10 s, and a test engine's data is thrown away

    def __init__(self, base_dir: Path, log: Path, bin_dir: Path):
        super().__init__(base_dir, log)
        self.bin_dir = bin_dir

    def command(self) -> list[str]:
        return [sys.executable, str(MILVUS_ENGINE_SCRIPT), "--base-dir", str(self.data_dir), "--bin-dir",
                str(self.bin_dir), "--port", str(self.port)]

    @contextmanager
    def collections_dropped_after(self) -> Iterator[None]:
        """The collections made inside the block are dropped after it, so the session's engine does not carry
        hundreds of loaded collections (each consumes its time ticks)."""
        from pymilvus import MilvusClient

        client = MilvusClient(uri=self.uri, dedicated=True)
        before = set(client.list_collections())
        try:
            yield
        finally:
            try:
                for name in set(client.list_collections()) - before:
                    client.drop_collection(name)
            finally:
                client.close()

    def exited(self) -> Exception:
        tail = self.log.read_text(errors="replace")[-2000:]
        if self.process.returncode == 3:  # the launcher's "cannot run here"
            return MilvusEngineUnavailable(tail.strip().splitlines()[-1] if tail.strip() else "no reason")
        return super().exited()


class MilvusEngineUnavailable(RuntimeError):
    """Milvus itself cannot run here (no `milvus` wheel, no network namespace): why, in one line."""


MilvusServer = MilvusLiteServer | MilvusEngineServer


def unavailable(reason: str) -> None:
    """Skip, or fail where REQUIRE_MILVUS_ENGINE=1 says the engine must run (CI)."""
    if REQUIRE_MILVUS_ENGINE:
        pytest.fail(f"REQUIRE_MILVUS_ENGINE=1, but {reason}", pytrace=False)
    pytest.skip(reason)


def started(server: MilvusServer) -> MilvusServer:
    try:
        server.start()
    except MilvusEngineUnavailable as err:
        unavailable(f"Milvus itself cannot run here: {err}")
    return server


@pytest.fixture(scope="session")
def milvus_bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where Milvus's executable is unpacked from the wheel once per session (about 200 MB), for every engine."""
    return tmp_path_factory.mktemp("milvus-bin")


def new_milvus_server(engine: str, directory: Path, name: str, bin_dir: Path) -> MilvusServer:
    if engine == "milvus-lite":
        if not HAS_MILVUS:
            pytest.skip("needs the milvus extra (pip install -e '.[milvus]')")
        return MilvusLiteServer(directory / name, directory / f"{name}.log")
    if not HAS_MILVUS_ENGINE:
        unavailable("Milvus itself needs the dev extra's `milvus` wheel (pip install -e '.[dev]')")
    return MilvusEngineServer(directory / name, directory / f"{name}.log", bin_dir)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusLiteServer]:
    """One `milvus-lite server` for the session's tests; each test uses collections of its own."""
    if not HAS_MILVUS:
        pytest.skip("needs the milvus extra (pip install -e '.[milvus]')")
    root = tmp_path_factory.mktemp("milvus-server")
    server = MilvusLiteServer(root / "data", root / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def milvus_engine_server(tmp_path_factory: pytest.TempPathFactory, milvus_bin_dir: Path
                         ) -> Iterator[MilvusEngineServer]:
    """One Milvus (itself) for the session's tests; each test uses collections of its own."""
    root = tmp_path_factory.mktemp("milvus-engine")
    server = new_milvus_server("milvus", root, "engine", milvus_bin_dir)
    assert isinstance(server, MilvusEngineServer)
    started(server)
    yield server
    server.stop()


StartMilvus = Callable[[], MilvusServer]


@pytest.fixture
def start_milvus_lite_server(tmp_path: Path) -> Iterator[StartMilvus]:
    """A private `milvus-lite server` per test (for tests that kill it): call it to get a started server."""
    servers: list[MilvusServer] = []

    def start() -> MilvusServer:
        server = new_milvus_server("milvus-lite", tmp_path, f"milvus-{len(servers)}", tmp_path)
        servers.append(server)
        return started(server)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(params=MILVUS_ENGINES)
def start_milvus_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartMilvus]:
    """A private engine per test (for tests that kill it), once on each engine of MILVUS_ENGINES: call it to get a
    started server (`.engine` names which)."""
    servers: list[MilvusServer] = []
    bin_dir = request.getfixturevalue("milvus_bin_dir") if request.param == "milvus" else tmp_path

    def start() -> MilvusServer:
        server = new_milvus_server(request.param, tmp_path, f"milvus-{len(servers)}", bin_dir)
        servers.append(server)
        return started(server)

    yield start
    for server in servers:
        server.stop()
