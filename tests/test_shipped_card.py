"""The shipped model scores what its card says: `genreid evaluate` (the service's own path: ONNX Runtime, INT8 Inv-Id
on a CPU, the model's re-ranking parameters) on the test split of the data the card names, plain and re-ranked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genreid.service.cli import evaluate_command

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
CARD = json.loads((MODELS / "MODEL_CARD.json").read_text())
DATA = ROOT.parent / "shared" / "data" / CARD["data"]["root"]
# INT8 kernels differ between instruction sets (VNNI or not), so a CPU other than the card's may move a few
# queries' ranks: half a point of mAP, a point of rank-1.
TOLERANCE = {"mAP": 0.005, "rank1": 0.01, "rank5": 0.01, "rank10": 0.01, "mINP": 0.005}


@pytest.mark.skipif(not DATA.is_dir(), reason=f"the card's data ({CARD['data']['root']}) is not in ../shared/data")
def test_the_shipped_int8_model_reproduces_its_card():
    measured = evaluate_command(DATA, MODELS, "cpu", rerank=True, precision="int8")
    carded = {"code_distance": CARD["precision"]["inv_id"]["test"]["int8"], **{
        ranking: CARD["rerank"]["test"][ranking] for ranking in ("reranked", "reranked_all_queries")}}
    for ranking, card_metrics in carded.items():
        got = measured[ranking]
        assert (got["queries"], got["gallery"]) == (card_metrics["queries"], card_metrics["gallery"])
        for metric, tolerance in TOLERANCE.items():
            assert got[metric] == pytest.approx(card_metrics[metric], abs=tolerance), (ranking, metric)
