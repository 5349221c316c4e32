"""The shipped model scores what its card says: `genreid evaluate`, as a user runs it, on the test split of the data
the card names (the data the model was trained for, never another model's test split), at the precision a CPU
serves, plain and re-ranked, under both protocols."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
CARD = json.loads((MODELS / "MODEL_CARD.json").read_text())
DATA = ROOT.parent / "shared" / "data" / CARD["data"]["root"]
SERVED = CARD["precision"]["cpu"]["inv_id"]  # the Inv-Id precision a CPU serves
# INT8 kernels differ between instruction sets (VNNI or not), so a CPU other than the card's may move a few
# queries' ranks: half a point of mAP, a point of rank-1.
TOLERANCE = {"mAP": 0.005, "rank1": 0.01, "rank5": 0.01, "rank10": 0.01, "mINP": 0.005}

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"the card's data ({DATA.name}) is not in ../shared/data")


def evaluate(*flags: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "genreid.service.cli", "evaluate", "--data", str(DATA), "--models",
                           str(MODELS), "--device", "cpu", *flags], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def assert_as_carded(got: dict[str, float], carded: dict[str, float], what: str) -> None:
    assert (got["queries"], got["gallery"]) == (carded["queries"], carded["gallery"]), what
    for metric, tolerance in TOLERANCE.items():
        assert got[metric] == pytest.approx(carded[metric], abs=tolerance), (what, metric)


def test_genreid_evaluate_reproduces_the_card_plain_and_re_ranked():
    measured = evaluate()  # re-ranking on, as the service answers by default
    assert measured["served"] == "reranked"
    assert_as_carded(measured["code_distance"], CARD["precision"]["inv_id"]["test"][SERVED], "code distance")
    for ranking in ("reranked", "reranked_all_queries"):
        assert_as_carded(measured[ranking], CARD["rerank"]["test"][ranking], ranking)
    assert CARD["test"][CARD["shipped_inv_id"]] == CARD["precision"]["inv_id"]["test"]["float32"]


def test_the_papers_lenient_protocol_reproduces_the_card():
    """Every gallery crop kept, as the paper scored its 73 mAP: numbers that differ from the standard protocol's on
    this data (its gallery holds same-camera crops of the query people)."""
    lenient = CARD["test_lenient_protocol"][SERVED]
    assert_as_carded(evaluate("--no-rerank", "--protocol", "lenient"), lenient, "lenient")
    assert abs(lenient["mAP"] - CARD["precision"]["inv_id"]["test"][SERVED]["mAP"]) > 1e-3
