"""What every benchmark script shares: a description of the machine it ran on, percentiles, the JSON
result file and the table printed to the terminal.

A number without its machine, date and library versions cannot be compared with anything, so every result
file carries them; and a busy machine gives numbers that mean little, so the load average at the start is
recorded and a warning printed when the machine was not idle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu-cu12", "torch", "fastapi",
            "uvicorn", "httpx", "pillow")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None where it does not say."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores, physical = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            physical = value
        elif key == "core id":
            cores.add((physical, value))
    return len(cores) or None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def filesystem_of(path: Path) -> str | None:
    """The type of the file system holding `path` (fsync cost differs wildly between ext4 and tmpfs)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    resolved = str(path.resolve())
    best = max((m for m in mounts if len(m) > 2 and (resolved + "/").startswith(m[1].rstrip("/") + "/")),
               key=lambda m: len(m[1]), default=None)
    return None if best is None else best[2]


def machine() -> dict[str, Any]:
    """CPU, cores, memory, library versions, date and how busy the machine was at the start."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": _versions(),
        "load_average_at_start": None if load is None else [round(v, 2) for v in load],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def announced_machine() -> dict[str, Any]:
    """This machine's description, printed, with a warning when it is busy: what every result file starts with."""
    info = machine()
    print_machine(info)
    warn_if_busy(info)
    return info


ACCURACY_COLUMNS = ("val_mAP", "val_rank1", "test_mAP", "test_rank1")


def accuracy_cells(validation: Any, test: Any) -> dict[str, float]:
    """mAP and rank-1 (%) of a variant's validation and test `RetrievalMetrics`, as `accuracy_bench` tabulates them."""
    return {f"{split}_{metric}": round(100 * getattr(metrics, metric), 1)
            for split, metrics in (("val", validation), ("test", test)) for metric in ("mAP", "rank1")}


def accuracy_bench(
    parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], list[dict[str, Any]]], *, name: str,
    title: str, label_columns: Sequence[str], key: str,
) -> None:
    """The main of a script scoring variants on the validation and test splits: parse (with the decoded-image cache),
    describe the machine, print `run`'s rows as one table and write them under `key` of bench/results/<name>.json."""
    parser.add_argument("--cache-dir", type=Path, help="decoded-image cache (default $XDG_CACHE_HOME/genreid)")
    add_common_arguments(parser)
    args = parser.parse_args()
    info = announced_machine()
    rows = run(args)
    print_table(title, rows, [*label_columns, *ACCURACY_COLUMNS])
    print(write_result(name, args, info, {key: rows}))


def warn_if_busy(info: dict[str, Any]) -> None:
    """Numbers from a busy machine are not the machine's numbers: say so loudly."""
    load = info.get("load_average_at_start")
    cores = info.get("logical_cores") or 1
    if load and load[0] > 0.25 * cores:
        print(f"WARNING: 1-minute load average {load[0]} on {cores} cores: the machine is not idle, and the "
              "results will understate it", file=sys.stderr)


def summarise_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """Latency statistics in milliseconds: p50, p90, p99, mean, min, max and the sample count."""
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    if values.size == 0:
        return {"n": 0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"n": int(values.size), "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(float(values.mean()), 3),
            "min_ms": round(float(values.min()), 3), "max_ms": round(float(values.max()), 3)}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="smoke run at tiny sizes (seconds); its result file gets a -quick suffix")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help=f"where the JSON result goes (default {RESULTS_DIR.relative_to(REPO_ROOT)})")


def write_result(name: str, args: argparse.Namespace, info: dict[str, Any], results: dict[str, Any]) -> Path:
    """bench/results/<name>.json (or <name>-quick.json) with the machine, the arguments and the results."""
    directory = Path(args.results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}{'-quick' if args.quick else ''}.json"
    arguments = {k: portable(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {"benchmark": name, "machine": info, "arguments": arguments, "results": results}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def portable(path: Path) -> str:
    """A path as a result file keeps it: relative to the repository (its data as ../shared/...), never this
    machine's absolute path."""
    resolved = Path(path).resolve()
    for base, prefix in ((REPO_ROOT, ""), (REPO_ROOT.parent, "../")):
        if resolved.is_relative_to(base):
            return prefix + str(resolved.relative_to(base))
    return Path(path).name


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def verdict(met: bool | None) -> str | None:
    return None if met is None else "met" if met else "MISSED"


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain aligned table of `columns` of `rows` (missing values print as '-'; `target_met` as
    met/MISSED)."""
    cells = [[_cell(verdict(row.get(column)) if column == "target_met" else row.get(column)) for column in columns]
             for row in rows]
    widths = [max(len(column), *(len(r[i]) for r in cells)) for i, column in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(column.ljust(w) for column, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(value.ljust(w) for value, w in zip(row, widths, strict=True)))


def print_machine(info: dict[str, Any]) -> None:
    cores = f"{info['logical_cores']} logical / {info['physical_cores']} physical cores"
    print(f"{info['date']}  {info['cpu']}, {cores}, {info['memory_gib']} GiB; Python {info['python']}; "
          + ", ".join(f"{k} {v}" for k, v in info["packages"].items()))


class Stopwatch:
    """`with Stopwatch() as w: ...; w.seconds` — wall time of a block, perf_counter based."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.start
