"""Wall time of genreid.service.core.evaluation.evaluate_codes at the official Market-1501 test size.

`genreid evaluate` and every Inv-Id validation go through this function, so its cost bounds how often a
model can be scored. The official protocol has 3,368 queries against a 15,913-crop gallery (junk crops,
id -1, already dropped; distractors, id 0, kept) over 750 test identities and 6 cameras. The codes are
random 32-d vectors clustered by identity, so the ranking does real work (the metrics are not the point);
the time of the distance matrix and of the ranking are reported apart. Target (foundation issue): < 10 s.

    python bench/evaluator.py            # official size, 3 repeats
    python bench/evaluator.py --quick    # 300 x 1,500, one repeat
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import (
    Stopwatch,
    add_common_arguments,
    announced_machine,
    print_table,
    write_result,
)

from genreid.service.core.evaluation import evaluate_codes, evaluate_ranking
from genreid.service.core.similarity import code_distances

TARGET_SECONDS = 10.0


def market_like(queries: int, gallery: int, identities: int, cameras: int, distractors: int, dim: int,
                seed: int) -> dict[str, np.ndarray]:
    """Labels shaped like Market-1501's test split and codes clustered around one centre per identity.

    Every identity gets queries (one per camera it is seen in, as Market's query set has) and gallery crops;
    `distractors` gallery crops carry id 0 and lie anywhere.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 0.3, (identities + 1, dim)).astype(np.float32)
    q_pids = np.resize(np.arange(1, identities + 1), queries)
    rng.shuffle(q_pids)
    g_pids = np.concatenate([np.resize(np.arange(1, identities + 1), gallery - distractors),
                             np.zeros(distractors, np.int64)])
    q_cams = rng.integers(1, cameras + 1, queries)
    g_cams = rng.integers(1, cameras + 1, gallery)
    q_codes = centres[q_pids] + rng.normal(0.0, 0.1, (queries, dim)).astype(np.float32)
    g_codes = centres[g_pids] + rng.normal(0.0, 0.1, (gallery, dim)).astype(np.float32)
    g_codes[g_pids == 0] = rng.normal(0.0, 0.3, (distractors, dim))
    return {"q_codes": q_codes, "g_codes": g_codes, "q_pids": q_pids, "g_pids": g_pids,
            "q_cams": q_cams, "g_cams": g_cams}


def run(args: argparse.Namespace) -> dict:
    data = market_like(args.queries, args.gallery, args.identities, args.cameras, args.distractors, args.dim,
                       args.seed)
    evaluate_codes(**{k: v[: min(len(v), 64)] if k.startswith("q") else v for k, v in data.items()})  # warm-up
    rows = []
    metrics = None
    for repeat in range(args.repeats):
        with Stopwatch() as total:
            metrics = evaluate_codes(**data)
        # The same work split in two, to say where the time goes.
        with Stopwatch() as distances:
            dist = code_distances(data["q_codes"], data["g_codes"])
        with Stopwatch() as ranking:
            evaluate_ranking(dist, data["q_pids"], data["g_pids"], data["q_cams"], data["g_cams"])
        del dist
        rows.append({"repeat": repeat + 1, "total_s": round(total.seconds, 3),
                     "distances_s": round(distances.seconds, 3), "ranking_s": round(ranking.seconds, 3)})
    best = min(row["total_s"] for row in rows)
    median = float(np.median([row["total_s"] for row in rows]))
    return {
        "queries": args.queries, "gallery": args.gallery, "identities": args.identities, "dim": args.dim,
        "repeats": rows, "best_s": best, "median_s": round(median, 3),
        "target_s": TARGET_SECONDS, "target_met": median < TARGET_SECONDS,
        "metrics_of_synthetic_codes": None if metrics is None else metrics.as_dict(),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--queries", type=int, default=3368, help="query crops (Market-1501: 3,368)")
    parser.add_argument("--gallery", type=int, default=15913, help="gallery crops (Market-1501: 15,913)")
    parser.add_argument("--identities", type=int, default=750, help="test identities (Market-1501 test: 750)")
    parser.add_argument("--distractors", type=int, default=2798, help="gallery crops with id 0")
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--dim", type=int, default=32, help="identity-code size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    add_common_arguments(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        args.queries, args.gallery, args.identities, args.distractors, args.repeats = 300, 1500, 60, 200, 1
    info = announced_machine()
    started = time.time()
    results = run(args)
    print_table(f"evaluate_codes, {args.queries} queries x {args.gallery} gallery, {args.dim}-d",
                results["repeats"], ["repeat", "total_s", "distances_s", "ranking_s"])
    verdict = "met" if results["target_met"] else "MISSED"
    print(f"\nmedian {results['median_s']} s (best {results['best_s']} s); target < {TARGET_SECONDS} s: {verdict}")
    results["bench_seconds"] = round(time.time() - started, 1)
    print(f"results: {write_result('evaluator', args, info, results)}")


if __name__ == "__main__":
    main()
