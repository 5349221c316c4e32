"""Re-ranking parameters for an exported model, chosen on its validation identities (never on the test split).

Untuned k1 / k2 / lambda can make re-ranking worse, and the best ones depend on the model's codes, so every
exported model carries its own in model.json (`rerank`), which the service reads. The validation identities and
their query/gallery split are the ones the Inv-Id was picked on (validation_evaluator); the codes are the exported
Inv-Id's, of crops decoded at its input size, through ONNX Runtime at the precision a CPU serves, and the ranking
is the service's own (Evaluator.metrics: the per-query neighbourhood re-ranker over a gallery store).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

from genreid.service.core.model_json import ModelMetadata
from genreid.service.core.reranking import RerankParams
from genreid.service.encoders import Encoders
from genreid.training.stages.context import StageContext
from genreid.training.validation import validation_evaluator

log = logging.getLogger(__name__)
GRID = {"candidates": (10, 20, 30, 50, 100), "k1": (6, 10, 15, 20), "k2": (3, 6, 10), "lambda_": (0.1, 0.3)}
# K costs a store search per candidate on every query, so the smallest K whose best validation mAP is within a
# point of the best K's is taken: a point is inside the noise of ~200 validation queries (docs/METHOD.md).
TOLERANCE = 0.01


def tune_rerank(ctx: StageContext, models_dir: Path, metadata: ModelMetadata) -> dict[str, Any]:
    """Score GRID on the validation identities; returns the chosen parameters with their validation metrics
    (plain, re-ranked per query, all queries together) and the best of each K: model.json's `rerank` section,
    which export saves (training/export.py)."""
    _, val = ctx.inv_id_splits
    encoders = Encoders(models_dir, device="cpu", metadata=metadata)
    evaluator = validation_evaluator(val, ctx.preset.split_seed, lambda split: encoders.identity(split.floats()))
    scored = [(params, evaluator.metrics(rerank=params))
              for params in (RerankParams(**dict(zip(GRID, values, strict=True)))
                             for values in itertools.product(*GRID.values()))]
    best_per_k = {k: max((s for s in scored if s[0].candidates == k), key=lambda s: s[1].mAP)
                  for k in GRID["candidates"]}
    top = max(metrics.mAP for _, metrics in best_per_k.values())
    chosen, reranked = next(best_per_k[k] for k in sorted(best_per_k) if best_per_k[k][1].mAP >= top - TOLERANCE)
    record = {
        **chosen.as_dict(),
        "chosen_on": f"{len(evaluator.q_codes)} query and {len(evaluator.g_codes)} gallery crops of the identities "
                     "held out of training; per K the best of k1 x k2 x lambda, then the smallest K within "
                     f"{TOLERANCE:.2f} mAP of the best",
        "precision": encoders.precision["inv_id"],
        "validation": {"code_distance": evaluator.metrics().as_dict(), "reranked": reranked.as_dict(),
                       "reranked_all_queries": evaluator.metrics(rerank=chosen, all_queries=True).as_dict()},
        "best_per_k": {str(k): {**params.as_dict(), "mAP": metrics.mAP, "rank1": metrics.rank1}
                       for k, (params, metrics) in best_per_k.items()},
    }
    log.info("re-ranking %s: validation mAP %.4f -> %.4f", chosen, record["validation"]["code_distance"]["mAP"],
             reranked.mAP)
    return record
