"""Do several Inv-Ids trained on one generator retrieve better together than alone?

Hybrid Inv-Ids regress crops onto the generator's code table, so Inv-Ids of different seeds on one generator
put their codes in the same space, and the mean of their codes is still a code the generator can draw. This
scores each run's best Inv-Id alone and the mean code of every combination of two or more (validation and test,
by direction, standard protocol), to price what averaging buys against what it costs (one Inv-Id pass per member
for every enrolled and queried crop). Reads training runs (torch weights): needs the `train` extra.

    python bench/inv_id_ensemble.py RUN_A RUN_B
    python bench/inv_id_ensemble.py RUN_A RUN_B --quick   # 100 crops a split
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from _common import accuracy_bench, accuracy_cells

from genreid.service.core.evaluation import Evaluator, RetrievalMetrics, evaluate_ranking
from genreid.service.core.similarity import code_distances
from genreid.training.data.cache import ImageSet
from genreid.training.runs import run_context
from genreid.training.stages.inv_id import require_one_code_table
from genreid.training.validation import best_inv_id, embed, saved_inv_id, validation_evaluator


@dataclass(frozen=True)
class RunCodes:
    """One run's best Inv-Id: its codes of the validation and test splits, and the code table they aim at."""

    name: str
    table: torch.Tensor
    codes: dict[str, np.ndarray]  # val_query, val_gallery, test_query, test_gallery


def run_codes(run_dir: Path, args: argparse.Namespace, *, with_train: bool = False
              ) -> tuple[RunCodes, dict[str, ImageSet]]:
    """With `with_train`, also the codes of the crops Inv-Id trained on (the training identities), as 'train'."""
    ctx = run_context(run_dir, args.cache_dir)
    preset, device = ctx.preset, ctx.runtime.device
    model = saved_inv_id(ctx, best_inv_id(ctx))
    train, val = ctx.inv_id_splits
    query, gallery = (ctx.split(split, preset.inv_id_resolution) for split in ("query", "gallery"))
    if args.quick:
        train, val, query, gallery = (s.subset(np.arange(min(100, len(s)))) for s in (train, val, query, gallery))
    validation = validation_evaluator(val, preset.split_seed, lambda split: embed(model, split, device))
    test = Evaluator(lambda split: embed(model, split, device), query, gallery)
    codes = {"val_query": validation.q_codes, "val_gallery": validation.g_codes,
             "test_query": test.q_codes, "test_gallery": test.g_codes}
    splits = {"val_query": validation.query, "val_gallery": validation.gallery,
              "test_query": test.query, "test_gallery": test.gallery}
    if with_train:
        codes["train"], splits["train"] = embed(model, train, device), train
    return RunCodes(run_dir.name, ctx.load("generator")["codes"], codes), splits


def score(codes: dict[str, np.ndarray], splits: dict[str, ImageSet], split: str) -> RetrievalMetrics:
    query, gallery = splits[f"{split}_query"], splits[f"{split}_gallery"]
    return evaluate_ranking(code_distances(codes[f"{split}_query"], codes[f"{split}_gallery"]), query.person_ids,
                            gallery.person_ids, query.cameras, gallery.cameras)


def run(args: argparse.Namespace) -> list[dict]:
    members, crops = zip(*(run_codes(run_dir, args) for run_dir in args.runs), strict=True)
    require_one_code_table([m.table for m in members])
    splits = crops[0]
    if any(not np.array_equal(other[key].person_ids, split.person_ids)
           or not np.array_equal(other[key].cameras, split.cameras)
           for other in crops for key, split in splits.items()):
        raise SystemExit("the runs hold out different validation identities (split_seed, val_identities): their "
                         "codes are of different crops")
    rows = []
    for size in range(1, len(members) + 1):
        for group in combinations(members, size):
            mean = {key: np.mean([m.codes[key] for m in group], axis=0) for key in group[0].codes}
            rows.append({"Inv-Ids": " + ".join(m.name for m in group),
                         **accuracy_cells(score(mean, splits, "val"), score(mean, splits, "test"))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="training run directories on one generator")
    accuracy_bench(parser, run, name="inv_id_ensemble", key="rows", label_columns=["Inv-Ids"],
                   title="Inv-Ids alone and their mean code (by direction, standard protocol; %)")


if __name__ == "__main__":
    main()
