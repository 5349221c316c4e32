"""The service stays torch-free, and the shipped model serves and evaluates on real data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBSET = REPO.parent / "shared" / "data" / "market1501-subset"
SHIPPED = REPO / "models"


def test_service_never_imports_torch():
    code = (
        "import sys\n"
        "import genreid.service.app, genreid.service.cli, genreid.service.server, genreid.service.gallery_tools\n"
        "import genreid.service.core.evaluation, genreid.service.core.market\n"
        "from genreid.service.settings import Settings\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_training_commands_fail_in_one_line_on_bad_data(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "genreid.service.cli", "train", "--data", str(tmp_path), "--out", str(tmp_path / "run")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "bounding_box_train/" in result.stderr


@pytest.mark.skipif(not (SHIPPED / "model.json").is_file(), reason="no shipped model in models/")
@pytest.mark.skipif(not SUBSET.is_dir(), reason="../shared/data/market1501-subset is absent")
def test_shipped_model_evaluates_on_the_subset():
    """The shipped model ranks the subset's test identities far better than chance (about 0.02 mAP)."""
    result = subprocess.run(
        [sys.executable, "-m", "genreid.service.cli", "evaluate", "--data", str(SUBSET), "--models", str(SHIPPED),
         "--device", "cpu", "--no-rerank"],
        capture_output=True, text=True, check=True,
    )
    metrics = json.loads(result.stdout)
    assert metrics["gallery"] == 1988
    assert metrics["mAP"] > 0.2 and metrics["rank1"] > 0.3
    card = json.loads((SHIPPED / "MODEL_CARD.json").read_text())
    # A CPU serves the Inv-Id precision the card says (INT8 when it kept the float model's accuracy).
    served = card["precision"]["inv_id"]["test"][card["precision"]["cpu"]["inv_id"]]
    assert metrics["mAP"] == pytest.approx(served["mAP"], abs=1e-4)
    assert card["test"][card["shipped_inv_id"]] == card["precision"]["inv_id"]["test"]["float32"]
    forced = subprocess.run(
        [sys.executable, "-m", "genreid.service.cli", "evaluate", "--data", str(SUBSET), "--models", str(SHIPPED),
         "--device", "cpu", "--no-rerank", "--precision", "float"],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(forced.stdout)["mAP"] == pytest.approx(card["precision"]["inv_id"]["test"]["float32"]["mAP"],
                                                             abs=1e-4)


@pytest.mark.skipif(not (SHIPPED / "model.json").is_file(), reason="no shipped model in models/")
@pytest.mark.skipif(not SUBSET.is_dir(), reason="../shared/data/market1501-subset is absent")
def test_shipped_model_evaluates_under_the_papers_lenient_protocol():
    """`genreid evaluate --protocol lenient` (every gallery crop kept) reproduces the card's lenient numbers, which
    differ from its standard ones: the subset's gallery holds same-camera crops of the query people."""
    result = subprocess.run(
        [sys.executable, "-m", "genreid.service.cli", "evaluate", "--data", str(SUBSET), "--models", str(SHIPPED),
         "--device", "cpu", "--no-rerank", "--precision", "float", "--protocol", "lenient"],
        capture_output=True, text=True, check=True,
    )
    metrics = json.loads(result.stdout)
    card = json.loads((SHIPPED / "MODEL_CARD.json").read_text())
    lenient, standard = card["test_lenient_protocol"]["float32"], card["precision"]["inv_id"]["test"]["float32"]
    assert metrics["gallery"] == 1988
    for name in ("mAP", "rank1", "mINP"):
        assert metrics[name] == pytest.approx(lenient[name], abs=1e-4), name
    assert abs(lenient["mAP"] - standard["mAP"]) > 1e-3
