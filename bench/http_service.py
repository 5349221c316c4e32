"""The service over HTTP on loopback against raw ONNX Runtime inference of the same crops, in one run.

It starts a real `genreid serve` (python -m genreid.service.cli serve) on 127.0.0.1 at a free port with a fresh
gallery directory, fills the gallery to --gallery-size entries, then measures:

  /query    latency p50/p99 and throughput at each --concurrency (1 and 16), with include_noise=false and
            include_noise=true, always the same crop, k=10; beside it, in this process, raw inference of that
            crop: genreid.service.core.imaging.preprocess + Encoders.identity (+ Encoders.noise for the noise variant),
            one crop at a time, p50. Target: p50 (no noise, concurrency 1) <= 1.5 x raw p50 + 2 ms.
  /gallery  ingest throughput (crops/s) with POSTs of 1, 16 and 64 crops from 1 and 4 concurrent clients
            (whose crops the server may batch into one run), against raw batched preprocess + identity at the
            same batch size in one stream. Target: >= 70 % of raw.

Raw inference runs with the same models, device and ONNX Runtime thread count as the server (service
Encoders, so the same process-wide thread pool), while the server sits idle.
On a 2-core machine the load generator shares the cores with the server; request bodies are encoded once up
front to keep the client's share small. Loopback only; every loop is bounded by a
request count and a time limit, and the server is stopped at the end, on error too.

Models: --models (default: the repo's models/, written by `genreid export`), or --untrained-preset NAME to
export randomly initialised networks of a training preset (same architecture, so the same cost) when no
trained model exists yet; they are cached in bench/.cache/. Crops: --data-root (a Market-1501 folder, or its
bounding_box_test) or procedural Market-style JPEGs (genreid.training.data.synthetic).

    python bench/http_service.py --data-root ../shared/data/market1501-subset
    python bench/http_service.py --untrained-preset cpu        # before a trained model exists
    python bench/http_service.py --quick --untrained-preset tiny
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from _common import (
    BENCH_DIR,
    REPO_ROOT,
    Stopwatch,
    add_common_arguments,
    announced_machine,
    filesystem_of,
    print_table,
    summarise_ms,
    write_result,
)

from genreid.service.client import Client
from genreid.service.core.imaging import decode_rgb, preprocess, resized, to_chw_float
from genreid.service.core.model_json import METADATA_FILE, ModelMetadata
from genreid.service.core.similarity import unit_length
from genreid.service.encoders import Encoders
from genreid.service.settings import default_models
from genreid.service.store import NewEntry
from genreid.service.store.embedded import EmbeddedStore
from genreid.service.store.faiss_index import VectorIndex

HOST = "127.0.0.1"
QUERY_TARGET_FACTOR, QUERY_TARGET_EXTRA_MS = 1.5, 2.0
INGEST_TARGET = 0.70
FILL_BATCH = 64
CACHE_DIR = BENCH_DIR / ".cache"


# ---------------------------------------------------------------- models and crops


def export_untrained(preset_name: str, directory: Path) -> Path:
    """Randomly initialised Inv-Id, Inv-Noise and denoiser of a preset, exported the way `genreid export`
    exports trained ones (genreid.training.export's exporter), with a model.json; reused when already there."""
    marker = directory / METADATA_FILE
    if marker.is_file() and (metadata := ModelMetadata.load(directory)).inv_id_mode == "untrained" \
            and metadata.preset_name == preset_name:
        return directory
    from dataclasses import replace

    import torch

    from genreid.service.core.schedule import Schedule
    from genreid.training.export import Denoiser, _examples, _export, _quiet_exporter_logs
    from genreid.training.networks.inverters import InvId, InvNoise
    from genreid.training.networks.unet import UNet
    from genreid.training.presets import get_preset

    preset = get_preset(preset_name)
    torch.manual_seed(preset.seed)
    modules = {
        "inv_id": InvId.from_preset(replace(preset, inv_id_resolution=preset.resolution)),
        "inv_noise": InvNoise(preset.inv_widths, preset.blocks),
        "denoiser": Denoiser(UNet(preset.widths, preset.blocks, preset.code_dim, embed_dim=64)),
    }
    with torch.no_grad():  # the U-Nets' heads start at zero; give them weights so nothing is trivially zero
        for module in modules.values():
            for parameter in module.parameters():
                if not parameter.any():
                    parameter.normal_(0.0, 0.01)
    _quiet_exporter_logs()
    for name in ("torch.onnx", "torch._dynamo", "torch.export"):
        logging.getLogger(name).setLevel(logging.ERROR)
    directory.mkdir(parents=True, exist_ok=True)
    example = {k: torch.from_numpy(v) for k, v in _examples(2, preset.resolution, preset.code_dim, 0).items()}
    _export(modules["inv_id"], (example["image"],), ["image"], "code", directory / "inv_id.onnx")
    _export(modules["inv_noise"], (example["image"],), ["image"], "noise", directory / "inv_noise.onnx")
    _export(modules["denoiser"], (example["noisy"], example["noise_variance"], example["code"]),
            ["noisy", "noise_variance", "code"], "eps", directory / "denoiser.onnx")
    ModelMetadata(
        resolution=preset.resolution, code_dim=preset.code_dim, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
        schedule=Schedule(), steps=preset.sample_steps, match_threshold=None,
        preset=preset.as_dict(), inv_id_mode="untrained",
    ).save(directory)
    return directory


def resolve_models(args: argparse.Namespace) -> Path:
    if args.untrained_preset:
        print(f"exporting untrained networks of preset {args.untrained_preset!r} (cached) ...", flush=True)
        return export_untrained(args.untrained_preset, CACHE_DIR / f"untrained-{args.untrained_preset}")
    if not (args.models / METADATA_FILE).is_file():
        raise SystemExit(f"{args.models}: no {METADATA_FILE}; export a trained model (`genreid export`) there, "
                         "pass --models DIR, or time an untrained one of the same shape with --untrained-preset cpu")
    return args.models


def load_crops(data_root: Path | None, count: int, workdir: Path) -> tuple[list[bytes], str]:
    """Up to `count` JPEG crops as bytes, and where they came from."""
    if data_root is not None:
        folder = data_root / "bounding_box_test" if (data_root / "bounding_box_test").is_dir() else data_root
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
        if not paths:
            raise SystemExit(f"{folder}: no .jpg/.png crops")
        return [p.read_bytes() for p in paths], str(folder)
    from genreid.training.data.synthetic import write_synthetic_market

    root = write_synthetic_market(workdir / "synthetic", train_identities=0,
                                  test_identities=max(1, math.ceil(count / 9)), cameras=3, per_camera=3)
    paths = sorted(root.rglob("*.jpg"))[:count]
    return [p.read_bytes() for p in paths], "procedural (genreid.training.data.synthetic, 128x64 JPEG)"


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(args: argparse.Namespace, models: Path, data_dir: Path, log_path: Path,
                   extra: Sequence[str] = ()) -> Iterator[str]:
    """`genreid serve` on loopback (`extra`: more flags, e.g. a gallery URI); yields its base URL and always stops
    it (SIGTERM, then SIGKILL)."""
    port = free_port()
    command = [sys.executable, "-m", "genreid.service.cli", "serve", "--host", HOST, "--port", str(port),
               "--models", str(models), "--data", str(data_dir), "--device", args.device,
               "--threads", str(args.threads), "--log-level", args.server_log_level, *extra]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    base_url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + args.startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{_tail(log_path)}")
            try:
                if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /health in {args.startup_timeout} s:\n"
                                   f"{_tail(log_path)}")
            time.sleep(0.2)
        yield base_url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- request bodies


@dataclass(frozen=True)
class Body:
    """A multipart body encoded once, so the load generator spends its time sending, not encoding. The timed
    requests are built here rather than with genreid.service.client, which encodes each request's body afresh and
    parses each answer into dataclasses: client work that would share the cores with the server and land in the
    latencies measured."""

    content: bytes
    headers: dict[str, str]


def gallery_body(crops: Sequence[bytes], person_ids: Sequence[str], cameras: Sequence[str]) -> Body:
    files = [("files", (f"crop{i}.jpg", data, "image/jpeg")) for i, data in enumerate(crops)]
    request = httpx.Request("POST", "http://unused/gallery", files=files,
                            data={"person_id": list(person_ids), "camera": list(cameras)})
    return Body(request.read(), {"content-type": request.headers["content-type"]})


def query_body(crop: bytes) -> Body:
    request = httpx.Request("POST", "http://unused/query", files={"file": ("query.jpg", crop, "image/jpeg")})
    return Body(request.read(), {"content-type": request.headers["content-type"]})


def cycle(crops: Sequence[bytes], start: int, count: int) -> list[bytes]:
    return [crops[(start + i) % len(crops)] for i in range(count)]


# ---------------------------------------------------------------- load generation


@dataclass
class Run:
    """Latencies of the successful requests of one measured phase, its wall time and its failures."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0
    first_error: str | None = None


def drive(base_url: str, path: str, bodies: Sequence[Body], concurrency: int, requests: int, warmup: int,
          max_seconds: float, check: Callable[[httpx.Response], None] | None = None) -> Run:
    """`requests` POSTs of `bodies` (cycled) from `concurrency` threads, each with its own keep-alive client,
    after `warmup` untimed requests per thread; stops early at `max_seconds`."""
    run = Run()
    lock = threading.Lock()
    issued = [0]
    ready = threading.Barrier(concurrency + 1)
    deadline = [math.inf]
    failures: list[BaseException] = []

    def ticket() -> int | None:
        with lock:
            if issued[0] >= requests or time.perf_counter() > deadline[0]:
                return None
            issued[0] += 1
            return issued[0] - 1

    def worker(worker_id: int) -> None:
        with httpx.Client(base_url=base_url, timeout=120.0) as client:
            try:
                for i in range(warmup):
                    body = bodies[(worker_id + i) % len(bodies)]
                    response = client.post(path, content=body.content, headers=body.headers)
                    response.raise_for_status()
                    if check is not None and i == 0:
                        check(response)
            except Exception as err:  # handed to the main thread
                with lock:
                    failures.append(err)
                    issued[0] = requests  # nobody starts the timed phase
            finally:
                ready.wait()
            while (index := ticket()) is not None:
                body = bodies[index % len(bodies)]
                start = time.perf_counter()
                try:
                    response = client.post(path, content=body.content, headers=body.headers)
                    ok = response.is_success
                    detail = f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as err:
                    ok, detail = False, repr(err)
                elapsed = time.perf_counter() - start
                with lock:
                    if ok:
                        run.latencies.append(elapsed)
                    else:
                        run.errors += 1
                        run.first_error = run.first_error or detail

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    deadline[0] = start + max_seconds
    for thread in threads:
        thread.join()
    run.seconds = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"warm-up request to {path} failed: {failures[0]!r}") from failures[0]
    return run


# ---------------------------------------------------------------- phases


def gallery_entries(base_url: str) -> int:
    with Client(base_url) as client:
        return client.counts().entries


def fill_gallery(base_url: str, crops: Sequence[bytes], target: int, workers: int) -> dict:
    """POST batches of 64 crops (8 per person, 6 cameras) until the gallery holds `target` entries."""
    have = gallery_entries(base_url)
    starts = list(range(have, target, FILL_BATCH))
    local = threading.local()
    clients: list[Client] = []

    def post(start: int) -> None:
        if not hasattr(local, "client"):  # one keep-alive client per worker thread
            local.client = Client(base_url, timeout=300.0)
            clients.append(local.client)
        count = min(FILL_BATCH, target - start)
        local.client.enrol(cycle(crops, start, count), person_ids=[f"p{(start + i) // 8}" for i in range(count)],
                           cameras=[f"c{(start + i) % 6 + 1}" for i in range(count)])

    try:
        with Stopwatch() as watch, ThreadPoolExecutor(workers) as pool:
            list(pool.map(post, starts))
    finally:
        for client in clients:
            client.close()
    added = gallery_entries(base_url) - have
    return {"added": added, "seconds": round(watch.seconds, 2), "workers": workers, "batch": FILL_BATCH,
            "crops_per_s": round(added / watch.seconds, 1) if watch.seconds else None}


def raw_query(encoders: Encoders, crop: bytes, include_noise: bool, iterations: int, warmup: int) -> dict:
    """Single-crop decode, resize + Inv-Id (+ resize + Inv-Noise, each at its own input size), as the /query
    handler runs them, p50 etc."""
    latencies = []
    for i in range(warmup + iterations):
        start = time.perf_counter()
        image = decode_rgb(crop)
        encoders.identity(to_chw_float(resized(image, encoders.identity_resolution))[None])
        if include_noise:
            encoders.noise(to_chw_float(resized(image, encoders.resolution))[None])
        if i >= warmup:
            latencies.append(time.perf_counter() - start)
    return summarise_ms(latencies)


def raw_search(dim: int, entries: int, k: int, iterations: int) -> dict:
    """The service's exact index (VectorIndex) at the gallery's size, one query at a time, over unit-length codes
    as the store gives it."""
    rng = np.random.default_rng(0)
    index = VectorIndex(dim)
    index.add(np.arange(1, entries + 1, dtype=np.int64), unit_length(rng.standard_normal((entries, dim), np.float32)))
    queries = unit_length(rng.standard_normal((iterations + 5, dim), np.float32))[:, None, :]
    latencies = []
    for i, query in enumerate(queries):
        start = time.perf_counter()
        index.search(query, k)
        if i >= 5:
            latencies.append(time.perf_counter() - start)
    return summarise_ms(latencies)


def raw_ingest(encoders: Encoders, crops: Sequence[bytes], batch: int, total: int, max_seconds: float) -> dict:
    """Batched preprocess + Inv-Id over `total` crops (cycled), and Inv-Id alone on pre-decoded batches."""
    size = encoders.identity_resolution
    encoders.identity(np.stack([preprocess(c, size) for c in cycle(crops, 0, batch)]))  # warm-up
    done, decoded = 0, []
    with Stopwatch() as watch:
        while done < total:
            images = np.stack([preprocess(c, size) for c in cycle(crops, done, batch)])
            encoders.identity(images)
            done += batch
            if len(decoded) < 8:
                decoded.append(images)
            if time.perf_counter() - watch.start > max_seconds:
                break
    inference_done = 0
    with Stopwatch() as inference:
        while inference_done < done:
            encoders.identity(decoded[(inference_done // batch) % len(decoded)])
            inference_done += batch
            if time.perf_counter() - inference.start > max_seconds:
                break
    return {"raw_crops_per_s": round(done / watch.seconds, 1),
            "raw_inference_only_crops_per_s": round(inference_done / inference.seconds, 1)}


def raw_store(directory: Path, dim: int, batch: int, requests: int) -> dict:
    """The embedded store's add alone (one SQLite transaction, committed with an fsync, plus the FAISS add) per request
    of `batch` codes, on the same file system as the server's gallery: the part of a POST that is storage."""
    rng = np.random.default_rng(batch)
    gallery = EmbeddedStore(directory, code_dim=dim)
    latencies = []
    try:
        for i in range(requests + 2):
            codes = rng.standard_normal((batch, dim), dtype=np.float32)
            start = time.perf_counter()
            gallery.add([NewEntry(f"store{i}", "c1")] * batch, codes)
            if i >= 2:
                latencies.append(time.perf_counter() - start)
    finally:
        gallery.close()
    return summarise_ms(latencies)


def check_query(include_noise: bool, k: int) -> Callable[[httpx.Response], None]:
    def check(response: httpx.Response) -> None:
        body = response.json()
        if len(body["matches"]) != k or (body.get("noise") is not None) != include_noise:
            raise RuntimeError(f"unexpected /query answer: {len(body['matches'])} matches, "
                               f"noise {'present' if body.get('noise') else 'absent'}")

    return check


def bench_queries(args: argparse.Namespace, base_url: str, encoders: Encoders, crop: bytes,
                  entries: int) -> list[dict]:
    rows = []
    body = query_body(crop)
    for include_noise in args.noise:
        raw = raw_query(encoders, crop, include_noise, args.raw_iterations, args.warmup)
        for concurrency in args.concurrency:
            path = f"/query?k={args.k}&include_noise={'true' if include_noise else 'false'}"
            run = drive(base_url, path, [body], concurrency, args.requests, max(1, args.warmup // concurrency),
                        args.max_seconds, check_query(include_noise, min(args.k, entries)))
            stats = summarise_ms(run.latencies)
            row = {"noise": include_noise, "concurrency": concurrency, "requests": stats["n"],
                   "errors": run.errors, "p50_ms": stats.get("p50_ms"), "p99_ms": stats.get("p99_ms"),
                   "mean_ms": stats.get("mean_ms"),
                   "req_per_s": round(stats["n"] / run.seconds, 1) if run.seconds else None,
                   "raw_p50_ms": raw["p50_ms"], "raw_p99_ms": raw["p99_ms"],
                   "p50_over_raw": round(stats["p50_ms"] / raw["p50_ms"], 2) if stats["n"] else None,
                   "first_error": run.first_error}
            if not include_noise and concurrency == 1 and stats["n"]:
                allowed = QUERY_TARGET_FACTOR * raw["p50_ms"] + QUERY_TARGET_EXTRA_MS
                row |= {"target_ms": round(allowed, 3), "target_met": stats["p50_ms"] <= allowed}
            print(f"  query noise={include_noise!s:5} c={concurrency:<3} p50 {row['p50_ms']} ms, "
                  f"p99 {row['p99_ms']} ms, {row['req_per_s']} req/s (raw p50 {raw['p50_ms']} ms)", flush=True)
            rows.append(row)
    return rows


def bench_ingest(args: argparse.Namespace, base_url: str, encoders: Encoders, crops: Sequence[bytes],
                 workdir: Path) -> list[dict]:
    rows = []
    for batch in args.ingest_batches:
        requests = max(1, args.ingest_crops // batch)
        bodies = [gallery_body(cycle(crops, i * batch, batch), [f"ingest{batch}-{i}"] * batch,
                               [f"c{i % 6 + 1}"] * batch) for i in range(min(requests, 16))]
        raw = raw_ingest(encoders, crops, batch, requests * batch, args.ingest_seconds)
        store = raw_store(workdir / f"store-{batch}", encoders.metadata.code_dim, batch, min(requests, 64))
        for clients in args.ingest_clients:
            run = drive(base_url, "/gallery", bodies, clients, requests, args.ingest_warmup, args.ingest_seconds)
            stats = summarise_ms(run.latencies)
            http_rate = len(run.latencies) * batch / run.seconds if run.seconds else 0.0
            ratio = http_rate / raw["raw_crops_per_s"]
            row = {"batch": batch, "clients": clients, "requests": stats["n"], "errors": run.errors,
                   "http_crops_per_s": round(http_rate, 1), "request_p50_ms": stats.get("p50_ms"), **raw,
                   "store_p50_ms": store["p50_ms"], "ratio": round(ratio, 3), "target_met": ratio >= INGEST_TARGET,
                   "first_error": run.first_error}
            print(f"  ingest batch {batch:<3} clients {clients:<2} {row['http_crops_per_s']} crops/s over HTTP vs "
                  f"{raw['raw_crops_per_s']} raw ({ratio:.0%})", flush=True)
            rows.append(row)
    return rows


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", type=Path, default=default_models(), help="exported model directory")
    parser.add_argument("--untrained-preset", metavar="PRESET",
                        help="instead of --models: untrained networks of this training preset (e.g. cpu)")
    parser.add_argument("--data-root", type=Path, help="Market-1501 folder (or its bounding_box_test) to take "
                        "crops from; default: procedural crops")
    parser.add_argument("--pool", type=int, default=256, help="distinct crops, reused round-robin")
    parser.add_argument("--data-parent", type=Path, help="where the temporary gallery directory goes "
                        "(its file system sets the fsync cost of every POST /gallery); default: the system's")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="server and raw inference device")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads, server and raw alike (0: its default)")
    parser.add_argument("--server-log-level", default="info",
                        help="the server's --log-level (info, the default, writes an access-log line per request)")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--gallery-size", type=int, default=20_000, help="entries before the queries")
    parser.add_argument("--fill-workers", type=int, default=2, help="parallel POST /gallery while filling")
    parser.add_argument("--k", type=int, default=10, help="matches per query")
    parser.add_argument("--noise", type=lambda v: v.lower() in ("1", "true", "yes"), nargs="+",
                        default=[False, True], help="include_noise values to measure")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=1000, help="timed /query requests per cell")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time limit per /query cell")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests (and raw iterations) first")
    parser.add_argument("--raw-iterations", type=int, default=500, help="timed raw single-crop inferences")
    parser.add_argument("--ingest-batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--ingest-clients", type=int, nargs="+", default=[1, 4],
                        help="concurrent clients posting (their crops may share inference runs)")
    parser.add_argument("--ingest-crops", type=int, default=1024, help="crops posted per ingest batch size")
    parser.add_argument("--ingest-warmup", type=int, default=2, help="untimed POSTs per batch size")
    parser.add_argument("--ingest-seconds", type=float, default=60.0, help="time limit per ingest batch size")
    add_common_arguments(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        args.gallery_size, args.pool, args.requests, args.warmup, args.raw_iterations = 300, 32, 20, 2, 20
        args.ingest_crops, args.ingest_batches, args.ingest_warmup, args.concurrency = 32, [1, 16], 1, [1, 4]
        args.max_seconds = args.ingest_seconds = 10.0
    info = announced_machine()
    started = time.time()
    models = resolve_models(args)
    workdir = Path(tempfile.mkdtemp(prefix="genreid-bench-", dir=args.data_parent))
    log_path = workdir / "server.log"
    results: dict = {"models": str(models), "gallery_filesystem": filesystem_of(workdir)}
    try:
        crops, source = load_crops(args.data_root, args.pool, workdir)
        results |= {"crops": source, "pool": len(crops)}
        encoders = Encoders(models, device=args.device, threads=args.threads)
        results["providers"] = list(encoders.providers)
        print(f"models {models} on {encoders.providers}; {len(crops)} crops from {source}; "
              f"gallery on {results['gallery_filesystem']} ({workdir})", flush=True)
        with running_server(args, models, workdir / "data", log_path) as base_url:
            print(f"server up at {base_url}; filling the gallery to {args.gallery_size} ...", flush=True)
            results["fill"] = fill_gallery(base_url, crops, args.gallery_size, args.fill_workers)
            results["gallery_entries"] = gallery_entries(base_url)
            print(f"  filled: {results['fill']}", flush=True)
            results["query"] = bench_queries(args, base_url, encoders, crops[0], results["gallery_entries"])
            results["ingest"] = bench_ingest(args, base_url, encoders, crops, workdir)
        results["search_only"] = raw_search(encoders.metadata.code_dim, results["gallery_entries"], args.k,
                                            args.raw_iterations)
    except Exception:
        if log_path.is_file():
            print(f"last lines of the server log:\n{_tail(log_path)}", file=sys.stderr)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    results["bench_seconds"] = round(time.time() - started, 1)
    path = write_result("http_service", args, info, results)
    print_table(f"/query, gallery {results['gallery_entries']:,}, k={args.k} (target: no noise, c=1: "
                f"p50 <= {QUERY_TARGET_FACTOR} x raw + {QUERY_TARGET_EXTRA_MS} ms)", results["query"],
                ["noise", "concurrency", "requests", "errors", "p50_ms", "p99_ms", "req_per_s", "raw_p50_ms",
                 "p50_over_raw", "target_ms", "target_met"])
    print(f"  FAISS search alone at {results['gallery_entries']:,}: p50 {results['search_only']['p50_ms']} ms")
    print_table(f"POST /gallery (target: >= {INGEST_TARGET:.0%} of raw preprocess + Inv-Id)",
                results["ingest"], ["batch", "clients", "requests", "errors", "http_crops_per_s", "request_p50_ms",
                                    "raw_crops_per_s", "raw_inference_only_crops_per_s", "store_p50_ms", "ratio",
                                    "target_met"])
    print(f"results: {path}")


if __name__ == "__main__":
    main()
