"""What `same_person` means as a gallery grows: how often a stranger's best match passes the match threshold.

The threshold (model.json's `match_threshold`) is calibrated at 1 % false matches per *pair* of crops. A query
against N entries makes N pairs, so the chance that the best of them passes grows with N. Measured on Market-1501's
official split: every query searches a gallery from which its own identity is removed (a person who was never
enrolled), of N crops drawn at random from the rest (other identities and the 0000 distractors), several draws
per N; the share of queries whose best match is within the threshold is the per-query false-match rate at N, and
the 1st percentile of those best distances is the threshold that would keep it at 1 % for that gallery size.
Sizes beyond the official gallery are extrapolated from the per-pair rate measured on the same codes, assuming
independent pairs (labelled as such). The codes are the served ones (INT8 on a CPU, as `genreid evaluate`).

    python bench/false_matches.py --data-root ../shared/data/market1501
    python bench/false_matches.py --data-root ../shared/data/market1501 --quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import REPO_ROOT, add_common_arguments, announced_machine, print_table, write_result

from genreid.service.cli import LabelledCrops
from genreid.service.core.imaging import preprocess
from genreid.service.core.market import check_layout
from genreid.service.core.similarity import code_distances
from genreid.service.encoders import Encoders

SIZES = (100, 1_000, 10_000)
EXTRAPOLATED = (100_000, 1_000_000)
CHUNK = 256


def embed(encoders: Encoders, crops: LabelledCrops) -> np.ndarray:
    return np.concatenate([encoders.identity(np.stack([preprocess(path, encoders.identity_resolution)
                                                       for path in crops.paths[start:start + CHUNK]]))
                           for start in range(0, len(crops.paths), CHUNK)])


def strangers_best(distances: np.ndarray, q_ids: np.ndarray, g_ids: np.ndarray, size: int | None,
                   rng: np.random.Generator) -> np.ndarray:
    """Each query's smallest distance to `size` random gallery crops of other identities (all of them: None)."""
    best = np.empty(len(q_ids))
    for row, person in enumerate(q_ids):
        others = np.flatnonzero(g_ids != person)
        chosen = others if size is None or size >= len(others) else rng.choice(others, size, replace=False)
        best[row] = distances[row, chosen].min()
    return best


def run(args: argparse.Namespace) -> dict:
    root = check_layout(args.data_root, ("query", "gallery"))
    encoders = Encoders(args.models, device="cpu")
    threshold = encoders.metadata.match_threshold
    query, gallery = LabelledCrops.read(root, "query"), LabelledCrops.read(root, "gallery")
    if args.quick:
        keep = np.random.default_rng(0).choice(len(query.paths), 200, replace=False)
        query = LabelledCrops([query.paths[i] for i in keep], query.person_ids[keep], query.cameras[keep])
    distances = code_distances(embed(encoders, query), embed(encoders, gallery))
    strangers = query.person_ids[:, None] != gallery.person_ids[None, :]
    per_pair = float((distances[strangers] <= threshold).mean())
    rng = np.random.default_rng(args.seed)
    rows = []
    for size in (*SIZES, None):
        draws = 1 if size is None else args.draws
        bests = [strangers_best(distances, query.person_ids, gallery.person_ids, size, rng) for _ in range(draws)]
        rates = [float((best <= threshold).mean()) for best in bests]
        rows.append({"gallery": "all others" if size is None else size, "kind": "measured",
                     "queries_with_a_false_match": round(float(np.mean(rates)), 4),
                     "spread": round(float(np.std(rates)), 4),
                     # the distance a gallery of this size needs for 1 % of strangers' queries to pass
                     "threshold_at_1pct_per_query": round(float(np.quantile(np.concatenate(bests), 0.01)), 4)})
    for size in EXTRAPOLATED:
        rows.append({"gallery": size, "kind": "extrapolated (independent pairs)",
                     "queries_with_a_false_match": round(1.0 - (1.0 - per_pair) ** size, 4), "spread": None})
    return {"threshold": threshold, "per_pair_false_match_rate": round(per_pair, 5), "queries": len(query.paths),
            "gallery_crops": len(gallery.paths), "model_id": encoders.metadata.model_id,
            "precision": encoders.precision["inv_id"], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="Market-1501 folder (query/, bounding_box_test/)")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--draws", type=int, default=5, help="random galleries per size")
    parser.add_argument("--seed", type=int, default=0)
    add_common_arguments(parser)
    args = parser.parse_args()
    info = announced_machine()
    results = run(args)
    print(f"threshold {results['threshold']:.4f}: per pair of strangers' crops {results['per_pair_false_match_rate']}")
    print_table("queries whose best stranger passes the threshold", results["rows"],
                ["gallery", "kind", "queries_with_a_false_match", "spread", "threshold_at_1pct_per_query"])
    print(write_result("false_matches", args, info, results))


if __name__ == "__main__":
    main()
