"""Milvus itself (the standalone server that the `milvus` wheel embeds: Go and C++, with its own etcd and local
storage) on 127.0.0.1 only, for the tests and the benches. Run as a script, one process per engine:

    python tests/service/store/milvus_engine.py --base-dir DIR --port PORT [--bin-dir DIR] [--set KEY=VALUE ...]

It prints `ready` once the engine answers on 127.0.0.1:PORT, and stops it on SIGTERM or when its parent dies.

Milvus 2.3 listens on every interface (`net.Listen(":port")`, about ten ports, with no setting to change that), so
the engine runs in a network namespace of its own, where the only device is a loopback, and this process forwards
127.0.0.1:PORT of the host's namespace to the engine's proxy port inside: nothing of the engine is reachable from
outside this machine, and engines started side by side never collide on their fixed internal ports. Killing this
process's group with SIGKILL kills the engine as a crash would (tests/conftest.py does); a restart on the same
`--base-dir` recovers what the engine had acknowledged.

Configuration: the wheel's template (`milvus/data/config.yaml.template`) with the settings of ENGINE_SETTINGS and
`--set` over it. ENGINE_SETTINGS shortens the time tick (`proxy.timeTickInterval`, 200 ms by default): a Strong read
waits for the query nodes' clock to pass the read's timestamp, about two ticks (docs/GALLERY_STORE.md). Nothing here
imports pymilvus.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

# Inside the engine's own network namespace every default port is free.
PROXY_PORT = 19530
METRICS_PORT = 9091  # /healthz
# What the tests and benches run with (operators: docs/GALLERY_STORE.md#consistency-on-milvus).
ENGINE_SETTINGS: dict[str, int] = {
    "proxy.timeTickInterval": 20,  # ms: Strong reads wait about two ticks (default 200: ~300-400 ms each)
    "rootCoord.dmlChannelNum": 4,  # DML channels, each ticking: fewer idle CPU cycles on a small machine (default 16)
    "common.session.ttl": 10,  # s: after a kill -9 a restart waits for the dead process's sessions to expire
}
STARTUP_SECONDS = 120

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PR_SET_PDEATHSIG = 1


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (no network namespaces, no `milvus` wheel): exit status 3, the message says why."""


class EngineFailed(RuntimeError):
    """The engine ran but did not come up healthy: exit status 1."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def own_network_namespace() -> None:
    """Move this process into a new network namespace and bring its loopback up: as root directly, otherwise inside
    a new user namespace that maps this user to root."""
    libc = _libc()
    if libc.unshare(CLONE_NEWNET) != 0:
        first = ctypes.get_errno()
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            raise EngineUnavailable(f"no network namespace of its own: unshare failed ({os.strerror(first)}; "
                                    f"with a user namespace: {os.strerror(ctypes.get_errno())})")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(probe, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(probe, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def binaries(bin_dir: Path) -> Path:
    """The engine's executable, unpacked from the wheel into `bin_dir`/bin once (the wheel's own md5 check skips
    what is already there): several engines share one copy."""
    try:
        import milvus
    except ImportError as err:
        raise EngineUnavailable(f"the milvus wheel is not installed (pip install -e '.[dev]'): {err}") from None
    milvus._initialize_data_files(str(bin_dir))
    return bin_dir / "bin" / "milvus"


def write_config(base_dir: Path, settings: dict[str, int | str]) -> None:
    """base_dir/configs/milvus.yaml from the wheel's template, storage under base_dir, `settings` over it."""
    from milvus import MilvusServerConfig

    config = MilvusServerConfig(data_dir=str(base_dir))
    for key, value in settings.items():
        config.set(key, value)
    config.resolve()  # default ports (free in this namespace), storage directories, then the file
    written = (base_dir / "configs" / "milvus.yaml").read_text()
    for key, value in settings.items():
        if f"{key.rsplit('.', 1)[-1]}: {value}" not in written:
            raise EngineUnavailable(f"the config template has no setting {key}")


def _die_with_parent() -> None:
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_engine(executable: Path, base_dir: Path) -> subprocess.Popen:
    environment = {**os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(METRICS_PORT),
                   "MILVUS_RUN_DIR": str(base_dir / "run"), "MILVUSCONF": str(base_dir / "configs"),
                   "LD_LIBRARY_PATH": ":".join(filter(None, [str(executable.parent),
                                                             os.environ.get("LD_LIBRARY_PATH")]))}
    logs = base_dir / "logs"
    with (logs / "milvus-stdout.log").open("ab") as out, (logs / "milvus-stderr.log").open("ab") as err:
        return subprocess.Popen([str(executable), "run", "standalone"], cwd=base_dir, env=environment, stdout=out,
                                stderr=err, preexec_fn=_die_with_parent)


def wait_healthy(engine: subprocess.Popen, base_dir: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if engine.poll() is not None:
            tail = (base_dir / "logs" / "milvus-stderr.log").read_text(errors="replace")[-2000:]
            raise EngineFailed(f"milvus exited with {engine.returncode} while starting: {tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/healthz", timeout=2) as answer:
                if b"OK" in answer.read():
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise EngineFailed(f"milvus did not report healthy within {STARTUP_SECONDS} s")


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass


def _forward(client: socket.socket) -> None:
    """One connection from the host's 127.0.0.1:PORT to the engine's proxy, both ways, until either side closes."""
    try:
        upstream = socket.create_connection(("127.0.0.1", PROXY_PORT), timeout=5)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def serve(listener: socket.socket, engine: subprocess.Popen, parent: int) -> int:
    """Forward connections while the engine runs and the parent lives; the engine's exit status (or 0)."""
    listener.settimeout(0.5)
    while engine.poll() is None and os.getppid() == parent:
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError as err:
            if err.errno in (errno.EINTR, errno.ECONNABORTED):
                continue
            raise
        client.settimeout(None)
        threading.Thread(target=_forward, args=(client,), daemon=True).start()
    return engine.returncode or 0


def stop(engine: subprocess.Popen) -> None:
    if engine.poll() is None:
        engine.terminate()
        try:
            engine.wait(10)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-dir", type=Path, required=True, help="the engine's configuration, logs and data")
    parser.add_argument("--port", type=int, required=True, help="the port of 127.0.0.1 to answer on")
    parser.add_argument("--bin-dir", type=Path, help="where the executable is unpacked (default: --base-dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a milvus.yaml setting")
    args = parser.parse_args(argv)
    settings: dict[str, int | str] = dict(ENGINE_SETTINGS)
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = int(value) if value.lstrip("-").isdigit() else value
    parent = os.getppid()
    base_dir = args.base_dir.resolve()
    try:
        # Bound in the host's namespace before leaving it; listening only once the engine is ready, so a connection
        # refused means "not (yet) there".
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", args.port))
        executable = binaries((args.bin_dir or base_dir).resolve())
        own_network_namespace()
        write_config(base_dir, settings)
    except (EngineUnavailable, OSError) as err:
        print(f"milvus engine unavailable: {err}", file=sys.stderr, flush=True)
        return 3
    engine = start_engine(executable, base_dir)
    signal.signal(signal.SIGTERM, lambda *_: stop(engine))
    try:
        wait_healthy(engine, base_dir)
        listener.listen(64)
        print("ready", flush=True)
        return serve(listener, engine, parent)
    except EngineFailed as err:
        print(f"milvus engine failed: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        listener.close()
        stop(engine)


if __name__ == "__main__":
    sys.exit(main())
