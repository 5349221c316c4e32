"""Gallery backends side by side: search latency, recall@10 and memory by gallery size (the embedded FAISS store,
and Milvus with FLAT, HNSW and IVF_FLAT on Milvus itself and on a milvus-lite server), then /query p50 and ingest
over HTTP at one gallery size on each backend, with one and two replicas sharing a milvus-lite server or Milvus
itself (standalone 2.3.5 from the `milvus` wheel, on 127.0.0.1 through tests/service/store/milvus_engine.py), the
latter at each time tick of --milvus-time-ticks (a Strong read waits about two ticks:
docs/GALLERY_STORE.md#consistency-on-milvus).

Every gallery is filled through the store interface the service uses (genreid.service.store), with identity-like codes
(clustered, bench/faiss_search.py's Vectors): `recall@10` is the share of the exact top 10 (numpy, by the
service's distance) that the backend returns. Milvus searches are timed after a flush (sealed, indexed
segments) and, as `unflushed_p50_ms`, right after the fill, while milvus-lite still buffers the rows. Memory is
the engine process's peak resident size. Results:
bench/results/gallery_backends.json; docs/BENCHMARKS.md#gallery-backends.

    python bench/gallery_backends.py --data-root ../shared/data/market1501-subset
    python bench/gallery_backends.py --parts http --http-backends milvus --milvus-time-ticks 200 20  # Milvus only
    python bench/gallery_backends.py --parts index --index-engines milvus --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from _common import (
    Stopwatch,
    add_common_arguments,
    announced_machine,
    print_table,
    summarise_ms,
    write_result,
)
from faiss_search import Vectors
from http_service import drive, gallery_body, load_crops, query_body, running_server

from genreid.service.core.model_json import ModelMetadata
from genreid.service.core.reranking import neighbours_kept
from genreid.service.core.similarity import code_distances, unit_length
from genreid.service.settings import default_models
from genreid.service.store import GalleryStore, NewEntry
from genreid.service.store.embedded import EmbeddedStore
from genreid.service.store.milvus_lite import SERVER_ARGS as MILVUS_LITE_SERVER_ARGS

K = 10
FILL_BATCH = 4096
KEPT_FILL_BATCH = 256  # into a gallery that keeps neighbourhoods, as `genreid gallery import` writes: a write's
# neighbourhood update searches k = kept size + batch around each of its codes
REPO = Path(__file__).resolve().parents[1]
MILVUS_LAUNCHER = REPO / "tests" / "service" / "store" / "milvus_engine.py"
HTTP_BACKENDS = ("embedded", "milvus-lite", "milvus")
ENGINE_NAMES = {"milvus-lite": "milvus-lite", "milvus": "Milvus 2.3.5"}


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    except OSError:
        return []


def peak_rss_mib(pid: int) -> float | None:
    """The peak resident set (VmHWM), MiB, summed over the process and its descendants: Milvus standalone runs
    under its launcher (tests/service/store/milvus_engine.py), milvus-lite as the process itself."""
    total, found, pending = 0, False, [pid]
    while pending:
        current = pending.pop()
        pending += _children(current)
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total, found = total + int(line.split()[1]), True
        except OSError:
            pass
    return round(total / 1024, 1) if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def _listening(command: list[str], port: int, log_path: Path, *, seconds: float) -> Iterator[tuple[str, int]]:
    """`command` as a process of its own until it answers on 127.0.0.1:`port`: (uri, pid); stopped on exit."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + seconds
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not start (see {log_path.name})") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def milvus_standalone(workdir: Path, time_tick_ms: int) -> Iterator[tuple[str, int]]:
    """Milvus itself (standalone 2.3.5) answering on 127.0.0.1 only, with this time tick: (uri, launcher pid)."""
    port = _free_port()
    command = [sys.executable, str(MILVUS_LAUNCHER), "--base-dir", str(workdir / f"milvus-standalone-{port}"),
               "--bin-dir", str(workdir / "milvus-bin"), "--port", str(port),
               "--set", f"proxy.timeTickInterval={time_tick_ms}"]
    with _listening(command, port, workdir / f"milvus-standalone-{port}.log", seconds=180) as running:
        yield running


@contextmanager
def milvus_engine(workdir: Path) -> Iterator[tuple[str, int]]:
    """A fresh `milvus-lite server` on 127.0.0.1: (uri, pid)."""
    port = _free_port()
    command = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(workdir / f"milvus-{port}"),
               "--host", "127.0.0.1", "--port", str(port), *MILVUS_LITE_SERVER_ARGS]
    with _listening(command, port, workdir / f"milvus-{port}.log", seconds=60) as running:
        yield running


def fill(store: GalleryStore, vectors: Vectors, *, batch: int = FILL_BATCH) -> tuple[np.ndarray, float]:
    """Every vector added through the store, `batch` per write; (entry ids in vector order, rows per second)."""
    ids = []
    with Stopwatch() as watch:
        for offset, chunk in vectors.chunks():
            for start in range(0, len(chunk), batch):
                part = chunk[start : start + batch]
                added = store.add([NewEntry(f"p{(offset + start + i) // vectors.per_identity}", f"c{i % 6}")
                                   for i in range(len(part))], part)
                ids += [e.entry_id for e in added]
    return np.asarray(ids, np.int64), round(len(ids) / watch.seconds, 1)


def exact_top_k(vectors: Vectors, queries: np.ndarray) -> np.ndarray:
    """Row indices of the exact K nearest by the service's distance, merged chunk by chunk."""
    best_d = np.full((len(queries), K), np.inf, np.float32)
    best_i = np.full((len(queries), K), -1, np.int64)
    for offset, chunk in vectors.chunks():
        dist = code_distances(queries, chunk)
        merged_d = np.concatenate([best_d, dist], axis=1)
        merged_i = np.concatenate([best_i, np.broadcast_to(np.arange(offset, offset + len(chunk)), dist.shape)],
                                  axis=1)
        order = np.argsort(merged_d, axis=1, kind="stable")[:, :K]
        best_d, best_i = np.take_along_axis(merged_d, order, 1), np.take_along_axis(merged_i, order, 1)
    return best_i


def measure_search(store: GalleryStore, queries: np.ndarray, truth_ids: np.ndarray) -> dict:
    store.search(queries[:4], K)  # warm-up
    latencies, found = [], []
    for query in queries:
        start = time.perf_counter()
        row = store.search(query, K)[0]
        latencies.append(time.perf_counter() - start)
        found.append([m.entry.entry_id for m in row])
    recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth_ids.tolist(), strict=True)])
    stats = summarise_ms(latencies)
    return {"search_p50_ms": stats["p50_ms"], "search_p99_ms": stats["p99_ms"], "recall_at_10": round(float(recall), 4)}


def measure_engine_search(uri: str, spec: str, queries: np.ndarray) -> dict:
    """The engine's own search (ids only, Eventually consistency: no wait for the time tick), beside the store's
    Strong search with its fields: what the index costs, apart from what the consistency level adds."""
    from pymilvus import MilvusClient

    from genreid.service.store.milvus import IndexSpec

    client = MilvusClient(uri)
    params = {"metric_type": "L2", "params": IndexSpec.parse(spec).search}
    latencies = []
    try:
        for query in queries:
            start = time.perf_counter()
            client.search("bench", data=[query.tolist()], limit=K, anns_field="unit", search_params=params,
                          consistency_level="Eventually")
            latencies.append(time.perf_counter() - start)
    finally:
        client.close()
    stats = summarise_ms(latencies)
    return {"engine_search_p50_ms": stats["p50_ms"], "engine_search_p99_ms": stats["p99_ms"]}


def bench_index(args: argparse.Namespace, workdir: Path) -> list[dict]:
    from genreid.service.store.milvus import IndexSpec, MilvusStore

    rows = []
    for size in args.sizes:
        vectors = Vectors(size, args.dim, "clustered", args.seed, 8192, args.per_identity)
        queries = unit_length(vectors.sample(args.queries, salt=size))
        truth_rows = exact_top_k(vectors, queries)
        store = EmbeddedStore(workdir / f"embedded-{size}", code_dim=args.dim)
        try:
            ids, rate = fill(store, vectors)
            rows.append({"size": size, "backend": "embedded (FAISS flat)", "fill_rows_per_s": rate,
                         **measure_search(store, queries, ids[truth_rows]), "engine_peak_mib": None})
        finally:
            store.close()
        print(f"  {rows[-1]}", flush=True)
        for engine_name, spec in [(engine, spec) for engine in args.index_engines for spec in args.indexes]:
            if engine_name == "milvus-lite" and size > args.milvus_lite_max:
                continue
            engine = (milvus_engine(workdir) if engine_name == "milvus-lite"
                      else milvus_standalone(workdir, args.index_time_tick))
            with engine as (uri, pid):
                store = MilvusStore(uri, collection="bench", code_dim=args.dim, model_id=None,
                                    index=IndexSpec.parse(spec), timeout=600)
                try:
                    ids, rate = fill(store, vectors)
                    few = args.queries // 4  # on milvus-lite each may take seconds: unflushed rows scanned one by one
                    buffered = measure_search(store, queries[:few], ids[truth_rows[:few]])
                    with Stopwatch() as sealing:
                        store.flush()
                    rows.append({"size": size, "backend": f"{ENGINE_NAMES[engine_name]} {spec}",
                                 "fill_rows_per_s": rate, **measure_search(store, queries, ids[truth_rows]),
                                 "unflushed_p50_ms": buffered["search_p50_ms"],
                                 "unflushed_recall_at_10": buffered["recall_at_10"],
                                 "flush_and_index_s": round(sealing.seconds, 1),
                                 **measure_engine_search(uri, spec, queries), "engine_peak_mib": peak_rss_mib(pid)})
                finally:
                    store.close()
            print(f"  {rows[-1]}", flush=True)
    return rows


def bench_http(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """/query p50 (one client, k=10, no noise; re-ranked over kept neighbourhoods as served by default, and with
    rerank=false) and ingest (one crop per request, one client per replica)."""
    from genreid.service.store.milvus import MilvusStore

    crops, source = load_crops(args.data_root, args.pool, workdir)
    model = ModelMetadata.load(args.models)
    vectors = Vectors(args.gallery_size, model.code_dim, "clustered", args.seed, 8192, args.per_identity)
    query = query_body(crops[0])
    bodies = [gallery_body([crop], [f"ingest-{i}"], ["c1"]) for i, crop in enumerate(crops[:64])]
    rows = []
    runs_of = {"embedded": [("embedded", 1, None)],
               "milvus-lite": [("milvus-lite server", 1, None), ("milvus-lite server", 2, None)],
               "milvus": [("milvus 2.3.5", replicas, tick) for tick in args.milvus_time_ticks for replicas in (1, 2)]}
    for backend, replicas, tick in [run for name in args.http_backends for run in runs_of[name]]:
        data = workdir / f"http-{backend.split()[0]}-{replicas}-{tick}"
        with gallery_engine(backend, workdir, tick) as uri:
            kept = neighbours_kept(model)  # what a server's gallery keeps, so /query re-ranks as served by default
            store = (EmbeddedStore(data, code_dim=model.code_dim, model_id=model.model_id, neighbourhood_size=kept)
                     if uri is None else MilvusStore(uri, collection="http", code_dim=model.code_dim,
                                                     model_id=model.model_id, neighbourhood_size=kept))
            try:
                fill(store, vectors, batch=KEPT_FILL_BATCH)
                if isinstance(store, MilvusStore):
                    store.flush()  # the steady state: sealed, indexed segments
            finally:
                store.close()
            extra = () if uri is None else ("--gallery-uri", uri, "--gallery-collection", "http")
            with servers(args, replicas, data, workdir, extra) as urls:
                plain, run = (drive(urls[0], f"/query?k={K}&include_noise=false{rerank}", [query], 1, args.requests,
                                    args.warmup, args.max_seconds) for rerank in ("&rerank=false", ""))
                queries, plain_queries = summarise_ms(run.latencies), summarise_ms(plain.latencies)
                with ThreadPoolExecutor(replicas) as pool:  # one client per replica, at once
                    runs = list(pool.map(lambda url: drive(url, "/gallery", bodies, 1, args.ingest_crops, 2,
                                                           args.max_seconds), urls))
            rate = sum(len(r.latencies) / r.seconds for r in runs if r.seconds)
            rows.append({"backend": backend, "replicas": replicas, "time_tick_ms": tick, "entries": args.gallery_size,
                         "query_p50_ms": queries.get("p50_ms"), "query_p99_ms": queries.get("p99_ms"),
                         "plain_query_p50_ms": plain_queries.get("p50_ms"),
                         "plain_query_p99_ms": plain_queries.get("p99_ms"), "query_errors": run.errors + plain.errors,
                         "ingest_crops_per_s": round(rate, 1),
                         "ingest_errors": sum(r.errors for r in runs), "crops": source})
            print(f"  {rows[-1]}", flush=True)
    return rows


@contextmanager
def gallery_engine(backend: str, workdir: Path, time_tick_ms: int | None = None) -> Iterator[str | None]:
    """None for the embedded gallery; else a fresh engine's URI: a milvus-lite server, or Milvus itself."""
    if backend == "embedded":
        yield None
        return
    engine = milvus_engine(workdir) if time_tick_ms is None else milvus_standalone(workdir, time_tick_ms)
    with engine as (uri, _):
        yield uri


@contextmanager
def servers(args: argparse.Namespace, count: int, data: Path, workdir: Path,
                       extra: tuple[str, ...]) -> Iterator[list[str]]:
    if count == 0:
        yield []
        return
    with running_server(args, args.models, data, workdir / f"server-{data.name}-{count}.log", extra) as url, \
            servers(args, count - 1, data, workdir, extra) as others:
        yield [url, *others]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=("index", "http"), default=["index", "http"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--indexes", nargs="+", default=["FLAT", "HNSW:M=16,efConstruction=200,ef=64",
                                                         "IVF_FLAT:nlist=256,nprobe=16"])
    parser.add_argument("--index-engines", nargs="+", choices=tuple(ENGINE_NAMES), default=list(ENGINE_NAMES),
                        help="Milvus engines of the index part: milvus-lite's server and Milvus standalone")
    parser.add_argument("--milvus-lite-max", type=int, default=100_000,
                        help="largest size run on milvus-lite (a Python engine: 1M takes hours)")
    parser.add_argument("--index-time-tick", type=int, default=20,
                        help="proxy.timeTickInterval (ms) of Milvus standalone in the index part (the tests' setting)")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--per-identity", type=int, default=8, help="codes per synthetic identity")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, default=default_models())
    parser.add_argument("--data-root", type=Path, help="Market-1501 folder for the HTTP crops")
    parser.add_argument("--pool", type=int, default=64)
    parser.add_argument("--gallery-size", type=int, default=20_000)
    parser.add_argument("--http-backends", nargs="+", choices=HTTP_BACKENDS, default=list(HTTP_BACKENDS))
    parser.add_argument("--milvus-time-ticks", type=int, nargs="+", default=[200, 20],
                        help="proxy.timeTickInterval (ms) of each Milvus run: 200 is Milvus's default")
    parser.add_argument("--requests", type=int, default=300, help="timed /query requests")
    parser.add_argument("--ingest-crops", type=int, default=400, help="single-crop POSTs per replica")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--server-log-level", default="warning")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    add_common_arguments(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        args.sizes, args.queries, args.gallery_size, args.requests, args.ingest_crops = [2000], 20, 500, 20, 20
    info = announced_machine()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="genreid-backends-") as tmp:
        workdir = Path(tmp)
        if "index" in args.parts:
            results["index"] = bench_index(args, workdir)
            print_table("search by gallery size", results["index"],
                        ["size", "backend", "fill_rows_per_s", "search_p50_ms", "search_p99_ms", "recall_at_10",
                         "engine_search_p50_ms", "engine_search_p99_ms", "unflushed_p50_ms", "flush_and_index_s",
                         "engine_peak_mib"])
        if "http" in args.parts:
            results["http"] = bench_http(args, workdir)
            print_table("HTTP on each backend", results["http"],
                        ["backend", "replicas", "time_tick_ms", "entries", "query_p50_ms", "query_p99_ms",
                         "plain_query_p50_ms", "plain_query_p99_ms", "ingest_crops_per_s", "query_errors",
                         "ingest_errors"])
    print(f"written {write_result('gallery_backends', args, info, results)}")


if __name__ == "__main__":
    main()
