"""Training under jemalloc: `genreid train` re-executes itself with it preloaded when it is installed.

glibc's malloc hands every freed buffer above 32 MB back to the kernel, so each step of a large batch faults its
activations in again, page by page: at 128x64 about 40 % of a step went to the kernel. jemalloc configured to keep
freed pages does not. Measured in docs/BENCHMARKS.md (CPU training and the memory allocator).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

SWITCH = "GENREID_ALLOCATOR"  # "system" keeps the C library's malloc
LIBRARY = "libjemalloc.so.2"  # Debian and Ubuntu: apt install libjemalloc2
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
# Never give freed pages back (decay off): the next step reuses them.
MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def find_jemalloc(search_dirs: tuple[str, ...] = SEARCH_DIRS) -> Path | None:
    """The installed jemalloc shared library, or None (always None off Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    return next((Path(d) / LIBRARY for d in search_dirs if (Path(d) / LIBRARY).is_file()), None)


def jemalloc_environment(environ: Mapping[str, str], library: Path) -> dict[str, str] | None:
    """The environment to re-execute under `library` with, or None: switched off, or preloaded already."""
    if environ.get(SWITCH, "jemalloc") == "system" or "jemalloc" in environ.get("LD_PRELOAD", ""):
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = " ".join(filter(None, (env.get("LD_PRELOAD", ""), str(library))))
    env.setdefault("MALLOC_CONF", MALLOC_CONF)
    return env


def current_allocator() -> str:
    """Which malloc this process runs under, for logs and benchmark records."""
    return "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "system malloc"


def reexec_under_jemalloc() -> None:
    """Replace this process by the same command under jemalloc when it is installed; otherwise return. Silent: the
    trainer's first log line names the allocator, and an error on bad input stays one line."""
    if (library := find_jemalloc()) is None or (env := jemalloc_environment(os.environ, library)) is None:
        return
    sys.stderr.flush()
    sys.stdout.flush()
    os.execve(sys.executable, sys.orig_argv, env)
