"""What the match threshold means as a gallery grows: how often a stranger's best match passes it.

The threshold (model.json's `match_threshold`) is calibrated at 1 % false matches per *pair* of crops; a query
against N entries makes N pairs. The measurement (genreid.service.core.false_matches, which `genreid
calibrate-false-matches` records in model.json) on Market-1501's official split: every query searches galleries
of N crops drawn from other identities (its own removed: a person who was never enrolled), several draws per N;
also the 1st percentile of those best distances, the threshold that would keep it at 1 % for that size. Sizes
beyond the official gallery are extrapolated from the per-pair rate, assuming independent pairs (labelled as
such). The codes are the served ones (INT8 on a CPU, as `genreid evaluate`).

    python bench/false_matches.py --data-root ../shared/data/market1501
    python bench/false_matches.py --data-root ../shared/data/market1501 --quick
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from _common import REPO_ROOT, add_common_arguments, announced_machine, print_table, write_result

from genreid.service.core.false_matches import measure_market
from genreid.service.encoders import Encoders

QUICK_QUERIES = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="Market-1501 folder (query/, bounding_box_test/)")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--draws", type=int, default=5, help="random galleries per size")
    parser.add_argument("--seed", type=int, default=0)
    add_common_arguments(parser)
    args = parser.parse_args()
    info = announced_machine()
    encoders = Encoders(args.models, device="cpu")
    measurement = measure_market(args.data_root, encoders, draws=args.draws, seed=args.seed,
                                 sample_queries=QUICK_QUERIES if args.quick else None)
    print(f"threshold {measurement.threshold:.4f}: per pair of strangers' crops {measurement.per_pair}")
    rows = [asdict(row) for row in measurement.rows]
    print_table("queries whose best stranger passes the threshold", rows,
                ["gallery", "kind", "rate", "spread", "threshold_at_1pct"])
    results = {**asdict(measurement), "model_id": encoders.metadata.model_id,
               "precision": encoders.precision["inv_id"]}
    print(write_result("false_matches", args, info, results))


if __name__ == "__main__":
    main()
