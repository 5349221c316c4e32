"""Re-ranking measured: accuracy with and without it, that /query ranks as `genreid evaluate --rerank` does, and
/query latency with and without it by gallery size.

1. Accuracy on the subset's test split through `genreid evaluate`'s own path
   (genreid.service.core.evaluation.Evaluator, the
   model's re-ranking parameters): code distance, re-ranked per query as /query does, all queries together (a
   reference). Validation: the record `genreid tune-rerank` (or export) wrote into model.json.
2. Agreement: a real `genreid serve` with the test gallery enrolled over HTTP in file order; every query crop through
   /query?rerank=true&k=1000&include_noise=false must rank like Evaluator.served_orders, entry for entry (its first
   1000); checked with the evaluator's own query codes and with the codes the server returned (`identity`).
3. Latency: embedded galleries of --sizes entries (the subset's real codes of bounding_box_train and
   bounding_box_test, then jittered copies of them), written straight into the gallery directory while the server
   is stopped; /query?k=10&include_noise=false with rerank=false and rerank=true interleaved, one client, the
   test query crops in turn. The stores keep neighbourhoods, as a fresh server's do.
4. Default (--parts default --official-root): what a fresh server does with Market-1501's official gallery, all
   19,732 crops of bounding_box_test enrolled over HTTP (64 per request) into a gallery that keeps
   neighbourhoods and into one made without them: enrolment crops/s, and /query p50 plain and re-ranked on each.
5. Threshold (--parts threshold --official-root): the re-ranked distances of the same official queries against
   three galleries drawn from the official one (whole, 1,000 crops, one crop per person): whether a match threshold
   on the re-ranked distance could mean the same whatever the gallery holds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import (
    Stopwatch,
    add_common_arguments,
    announced_machine,
    print_table,
    summarise_ms,
    write_result,
)
from http_service import gallery_body, query_body, running_server
from tqdm import tqdm

from genreid.service.cli import LabelledCrops, evaluate_command
from genreid.service.core.evaluation import Evaluator
from genreid.service.core.imaging import preprocess
from genreid.service.core.market import check_layout
from genreid.service.core.model_json import ModelMetadata
from genreid.service.core.reranking import RerankParams, neighbours_kept, rerank_search
from genreid.service.encoders import Encoders
from genreid.service.settings import default_models
from genreid.service.store import NewEntry
from genreid.service.store.embedded import EmbeddedStore

AGREEMENT_K = 1000  # /query's largest k


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    test = evaluate_command(args.data_root, args.models, args.device, rerank=True)
    validation = ModelMetadata.load(args.models).rerank["validation"]
    rows = [{"split": split, "ranking": ranking, "mAP": round(100 * m["mAP"], 2), "rank1": round(100 * m["rank1"], 2),
             "mINP": round(100 * m["mINP"], 2), "queries": m["queries"], "gallery": m["gallery"]}
            for split, record in (("validation", validation), ("test", test))
            for ranking, m in record.items() if ranking != "rerank"]
    print_table(f"accuracy, re-ranking {test['rerank']}", rows,
                ["split", "ranking", "mAP", "rank1", "mINP", "queries", "gallery"])
    return {"parameters": test["rerank"], "rows": rows}


def agreement(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    root = check_layout(args.data_root, ("query", "gallery"))
    query, gallery = LabelledCrops.read(root, "query"), LabelledCrops.read(root, "gallery")
    if args.quick:
        query = LabelledCrops(query.paths[:20], query.person_ids[:20], query.cameras[:20])
    encoders = Encoders(args.models, device=args.device)
    params = RerankParams.from_model(encoders.metadata)

    def embed(split: LabelledCrops) -> np.ndarray:
        return encoders.identity(np.stack([preprocess(path, encoders.identity_resolution) for path in split.paths]))

    evaluator = Evaluator(embed, query, gallery)
    with running_server(args, args.models, workdir / "agreement", workdir / "agreement.log") as url, \
            httpx.Client(base_url=url, timeout=120) as client:
        entry_ids: list[int] = []
        for start in range(0, len(gallery.paths), 64):
            body = gallery_body([path.read_bytes() for path in gallery.paths[start:start + 64]],
                                [str(p) for p in gallery.person_ids[start:start + 64]],
                                [str(c) for c in gallery.cameras[start:start + 64]])
            response = client.post("/gallery", content=body.content, headers=body.headers)
            response.raise_for_status()
            entry_ids += [e["entry_id"] for e in response.json()["entries"]]
        answers = []
        for path in query.paths:
            body = query_body(path.read_bytes())
            response = client.post("/query", params={"rerank": "true", "k": AGREEMENT_K, "include_noise": "false"},
                                   content=body.content, headers=body.headers)
            response.raise_for_status()
            answers.append(response.json())
    position = {entry_id: i for i, entry_id in enumerate(entry_ids)}
    served = np.array([[position[m["entry_id"]] for m in a["matches"]] for a in answers])
    http_codes = np.array([a["identity"] for a in answers], dtype=np.float32)
    with_http_codes = Evaluator(lambda split: http_codes if split is query else evaluator.g_codes, query, gallery)
    result = {
        "queries": len(answers), "k": AGREEMENT_K, "parameters": params.as_dict(),
        "equal_to_evaluate": int((served == evaluator.served_orders(params)[:, :AGREEMENT_K]).all(1).sum()),
        "equal_given_the_servers_codes": int(
            (served == with_http_codes.served_orders(params)[:, :AGREEMENT_K]).all(1).sum()),
        "max_query_code_difference": float(np.abs(http_codes - evaluator.q_codes).max()),
    }
    print_table("HTTP /query?rerank=true against genreid evaluate --rerank (queries ranked identically)", [result],
                list(result))
    return result


def gallery_codes(args: argparse.Namespace) -> tuple[np.ndarray, list[NewEntry]]:
    """The subset's real codes (train and test gallery folders, not the query crops), shuffled."""
    root = check_layout(args.data_root, ("train", "gallery"))
    encoders = Encoders(args.models, device=args.device)
    splits = [LabelledCrops.read(root, split) for split in ("train", "gallery")]
    paths = [path for split in splits for path in split.paths]
    labels = [(f"{s}-{p}", str(c)) for s, split in enumerate(splits)
              for p, c in zip(split.person_ids, split.cameras, strict=True)]
    if args.quick:
        paths, labels = paths[:600], labels[:600]
    size = encoders.identity_resolution
    codes = np.concatenate([encoders.identity(np.stack([preprocess(p, size) for p in paths[i:i + 512]]))
                            for i in range(0, len(paths), 512)])
    order = np.random.default_rng(0).permutation(len(codes))
    return codes[order], [NewEntry(person_id=labels[i][0], camera=labels[i][1]) for i in order]


def grown(codes: np.ndarray, entries: list[NewEntry], size: int) -> tuple[np.ndarray, list[NewEntry]]:
    """`size` codes: the real ones first, then jittered copies (each dimension moved by half the code's length
    over sqrt(dim)), labelled as their source."""
    rng = np.random.default_rng(size)
    picks = np.arange(size) % len(codes)
    norms = np.linalg.norm(codes[picks], axis=1, keepdims=True)
    jitter = rng.normal(size=(size, codes.shape[1])) * 0.5 * norms / np.sqrt(codes.shape[1])
    jitter[: min(size, len(codes))] = 0.0
    return (codes[picks] + jitter).astype(np.float32), [entries[i] for i in picks]


def with_candidates(models: Path, candidates: int, workdir: Path) -> Path:
    """A copy of the model directory (ONNX files linked) whose re-ranking reorders the `candidates` nearest."""
    copy = workdir / f"models-k{candidates}"
    copy.mkdir()
    for path in models.iterdir():
        (copy / path.name).symlink_to(path.resolve())
    (copy / "model.json").unlink()
    metadata = ModelMetadata.load(models)
    replace(metadata, rerank={**metadata.rerank, "candidates": candidates}).save(copy)
    return copy


def latency(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    codes, entries = gallery_codes(args)
    sizes = [min(size, 3000) for size in args.sizes] if args.quick else args.sizes
    crops = [path.read_bytes() for path in LabelledCrops.read(args.data_root, "query").paths]
    bodies = [query_body(crop) for crop in crops]
    metadata = ModelMetadata.load(args.models)
    variants = {metadata.rerank["candidates"]: args.models}
    variants |= {k: with_candidates(args.models, k, workdir) for k in args.also_candidates if k not in variants}
    data_dir, stored, rows = workdir / "latency", 0, []
    for size in sorted(sizes):
        all_codes, all_entries = grown(codes, entries, size)
        store = EmbeddedStore(data_dir, code_dim=codes.shape[1], model_id=metadata.model_id,
                              neighbourhood_size=neighbours_kept(metadata))
        for start in range(stored, size, 5000):
            store.add(all_entries[start:min(start + 5000, size)], all_codes[start:min(start + 5000, size)])
        store.close()
        stored = size
        for candidates, models in variants.items():
            timed = timed_queries(args, models, data_dir, bodies, workdir / f"latency-{size}-{candidates}.log")
            rows.append({"entries": size, "K": candidates, **timed,
                         "target_met": timed["rerank_p50_ms"] <= 2 * timed["plain_p50_ms"] if size == 20_000 else None})
    print_table("/query p50, k=10, include_noise=false, one client, embedded gallery (target at 20,000: re-ranked "
                "<= 2 x plain)", rows, list(rows[0]))
    return rows


def timed_queries(args: argparse.Namespace, models: Path, data_dir: Path, bodies: list[Any], log: Path
                  ) -> dict[str, Any]:
    """/query with rerank=false and rerank=true interleaved (which goes first alternating), one client."""
    with running_server(args, models, data_dir, log) as url, httpx.Client(base_url=url, timeout=60) as client:
        times: dict[bool, list[float]] = {False: [], True: []}
        load = os.getloadavg()[0]
        for i in range(args.warmup + args.requests):
            body = bodies[i % len(bodies)]
            for rerank in ((False, True) if i % 2 else (True, False)):
                with Stopwatch() as watch:
                    response = client.post("/query", params={"k": 10, "include_noise": "false",
                                                             "rerank": str(rerank).lower()},
                                           content=body.content, headers=body.headers)
                response.raise_for_status()
                if i >= args.warmup:
                    times[rerank].append(watch.seconds)
    plain, reranked = summarise_ms(times[False]), summarise_ms(times[True])
    return {"plain_p50_ms": plain["p50_ms"], "rerank_p50_ms": reranked["p50_ms"],
            "ratio": round(reranked["p50_ms"] / plain["p50_ms"], 2), "plain_p99_ms": plain["p99_ms"],
            "rerank_p99_ms": reranked["p99_ms"], "load_1min_before": round(load, 2)}


def official_gallery(root: Path) -> tuple[list[Path], list[str], list[str]]:
    """Every crop of Market-1501's bounding_box_test (19,732: the junk and distractors too, as a deployed gallery
    holds whatever its detector found), labelled by its file name's person and camera."""
    paths = sorted((root / "bounding_box_test").glob("*.jpg"))
    if not paths:
        raise SystemExit(f"{root}/bounding_box_test holds no crops: give the official Market-1501 folder")
    names = [path.name.split("_") for path in paths]
    return paths, [name[0] for name in names], [name[1][:2] for name in names]


def enrolled(client: httpx.Client, paths: list[Path], persons: list[str], cameras: list[str]) -> float:
    """POST /gallery, 64 crops per request, one client; crops per second."""
    with Stopwatch() as watch:
        for start in tqdm(range(0, len(paths), 64), desc="enrol", unit="request", mininterval=30):
            end = start + 64
            body = gallery_body([path.read_bytes() for path in paths[start:end]], persons[start:end],
                                cameras[start:end])
            client.post("/gallery", content=body.content, headers=body.headers).raise_for_status()
    return len(paths) / watch.seconds


def served_default(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """The official gallery enrolled over HTTP twice, into a gallery that keeps neighbourhoods (what a fresh
    server makes) and into one made without them (re-ranking searches each candidate's neighbours); then /query
    plain and re-ranked, interleaved, on each."""
    paths, persons, cameras = official_gallery(args.official_root)
    if args.quick:
        paths, persons, cameras = paths[:2000], persons[:2000], cameras[:2000]
    bodies = [query_body(path.read_bytes()) for path in sorted((args.official_root / "query").glob("*.jpg"))]
    metadata = ModelMetadata.load(args.models)
    rows = []
    for kept in (True, False):
        data_dir = workdir / f"official-{'kept' if kept else 'searched'}"
        if not kept:  # a gallery that recorded no kept neighbourhoods keeps none
            EmbeddedStore(data_dir, code_dim=metadata.code_dim, model_id=metadata.model_id).close()
        with running_server(args, args.models, data_dir, workdir / f"{data_dir.name}.log") as url, \
                httpx.Client(base_url=url, timeout=120) as client:
            rate = enrolled(client, paths, persons, cameras)
        timed = timed_queries(args, args.models, data_dir, bodies, workdir / f"{data_dir.name}-queries.log")
        rows.append({"entries": len(paths), "neighbourhoods": "kept" if kept else "searched",
                     "enrol_crops_per_s": round(rate, 1), **timed,
                     "added_p50_ms": round(timed["rerank_p50_ms"] - timed["plain_p50_ms"], 2)})
    rows[0]["enrol_vs_searched"] = round(rows[0]["enrol_crops_per_s"] / rows[1]["enrol_crops_per_s"], 3)
    print_table("official gallery: enrolment and /query p50 (k=10, include_noise=false, one client); targets: "
                "re-ranking adds <= 3 ms, enrolment keeps >= 80 %", rows, list(rows[0]))
    return rows


def reranked_threshold(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Can a match threshold be put on the re-ranked distance? The same queries against three galleries drawn from
    the official one: all of it, 1,000 random crops, one crop per person. A threshold is usable only if it means
    the same in each; the code distance of a pair does not depend on the gallery, the re-ranked one does."""
    root = check_layout(args.official_root, ("query", "gallery"))
    encoders = Encoders(args.models, device=args.device)
    params = RerankParams.from_model(encoders.metadata)
    query, gallery = LabelledCrops.read(root, "query"), LabelledCrops.read(root, "gallery")
    rng = np.random.default_rng(0)
    asked = rng.choice(len(query.paths), 100 if args.quick else 400, replace=False)

    def embed(paths: list[Path]) -> np.ndarray:
        return np.concatenate([encoders.identity(np.stack([preprocess(p, encoders.identity_resolution)
                                                           for p in paths[i:i + 256]]))
                               for i in range(0, len(paths), 256)])

    q_codes, g_codes = embed([query.paths[i] for i in asked]), embed(gallery.paths)
    first = {person: i for i, person in reversed(list(enumerate(gallery.person_ids.tolist())))}
    draws = {"official gallery": np.arange(len(g_codes)),
             "1,000 random crops": rng.choice(len(g_codes), 1000, replace=False),
             "one crop per person": np.array(sorted(first.values()))}
    rows = []
    for name, chosen in draws.items():
        with tempfile.TemporaryDirectory() as where:
            store = EmbeddedStore(where, code_dim=encoders.metadata.code_dim,
                                  neighbourhood_size=params.neighbours_kept)
            store.add([NewEntry(person_id=str(gallery.person_ids[i])) for i in chosen], g_codes[chosen])
            true_reranked, true_code, best_stranger = [], [], []
            for code, person in zip(q_codes, query.person_ids[asked], strict=True):
                head = rerank_search(store, code, params.candidates, params=params)[0]
                true_reranked += [m.rerank_distance for m in head if m.entry.person_id == str(person)]
                true_code += [m.distance for m in head if m.entry.person_id == str(person)]
                best_stranger.append(min(m.rerank_distance for m in head if m.entry.person_id != str(person)))
            store.close()
        rows.append({"gallery": name, "entries": len(chosen), "true_pairs_in_top_K": len(true_reranked),
                     "true_pair_median_reranked": round(float(np.median(true_reranked)), 3),
                     "true_pair_median_code": round(float(np.median(true_code)), 3),
                     "best_stranger_reranked_p1": round(float(np.quantile(best_stranger, 0.01)), 3),
                     "best_stranger_reranked_p50": round(float(np.median(best_stranger)), 3)})
    print_table(f"re-ranked distances of the same {len(asked)} queries against three galleries (K = "
                f"{params.candidates})", rows, list(rows[0]))
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", type=Path, default=default_models(), help="exported model directory (with "
                        "model.json `rerank`)")
    parser.add_argument("--data-root", type=Path, required=True, help="the market1501-subset folder")
    parser.add_argument("--official-root", type=Path, help="the official Market-1501 folder, for --parts default")
    parser.add_argument("--parts", nargs="+", choices=("accuracy", "agreement", "latency", "default", "threshold"),
                        default=["accuracy", "agreement", "latency"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 20_000, 100_000])
    parser.add_argument("--also-candidates", type=int, nargs="*", default=[30],
                        help="latency also with re-ranking reordering this many nearest (K) instead of the model's")
    parser.add_argument("--requests", type=int, default=300, help="timed /query requests per mode and size")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="the server's ONNX Runtime threads (0: default)")
    parser.add_argument("--server-log-level", default="warning")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    add_common_arguments(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    info = announced_machine()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="genreid-bench-rerank-") as scratch:
        for part in args.parts:
            started = time.monotonic()
            if part == "accuracy":
                results[part] = accuracy(args)
            elif part == "agreement":
                results[part] = agreement(args, Path(scratch))
            elif part == "default":
                results[part] = served_default(args, Path(scratch))
            elif part == "threshold":
                results[part] = reranked_threshold(args)
            else:
                results[part] = latency(args, Path(scratch))
            print(f"({part}: {time.monotonic() - started:.0f} s)", file=sys.stderr)
    print(write_result("rerank", args, info, results))


if __name__ == "__main__":
    main()
