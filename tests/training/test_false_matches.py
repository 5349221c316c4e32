"""`genreid calibrate-false-matches`: measured on a Market-1501 folder with the codes a CPU serves and recorded in
model.json through its one writer, the rest of the file unchanged; its failures are one line."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from genreid.service.core.false_matches import EXTRAPOLATED, INDEPENDENT_PAIRS, MEASURED
from genreid.service.core.model_json import ModelMetadata
from genreid.training.cli import main


@pytest.fixture
def models(tiny_run, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_run.models, tmp_path / "models"))


def test_the_record_lands_in_model_json_and_nothing_else_changes(models: Path, synthetic_root: Path, capsys):
    before = json.loads((models / "model.json").read_text())
    assert main(["calibrate-false-matches", "--data-root", str(synthetic_root), "--models", str(models),
                 "--draws", "2", "--seed", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    after = json.loads((models / "model.json").read_text())
    record = after.pop("false_matches")
    assert after == before and printed["false_matches"] == record
    assert record["measured_on"].startswith(f"{synthetic_root.name}: ") and "identity removed" in record["measured_on"]
    assert record["precision"] == ModelMetadata.load(models).precisions("auto", cuda=False)["inv_id"]
    assert [row["kind"] for row in record["per_query"]] == [MEASURED] + [INDEPENDENT_PAIRS] * len(EXTRAPOLATED)
    assert 0.0 <= record["per_pair"] <= 1.0 and all(0.0 <= row["rate"] <= 1.0 for row in record["per_query"])
    assert asdict(ModelMetadata.load(models).false_matches) == {
        **record, "per_query": tuple(record["per_query"])}


def test_failures_are_one_line(models: Path, synthetic_root: Path, tmp_path: Path, capsys):
    assert main(["calibrate-false-matches", "--data-root", str(tmp_path / "nowhere"), "--models", str(models)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    replace(ModelMetadata.load(models), match_threshold=None).save(models)
    assert main(["calibrate-false-matches", "--data-root", str(synthetic_root), "--models", str(models)]) == 2
    error = capsys.readouterr().err
    assert "no match_threshold" in error and error.strip().count("\n") == 0
    assert main(["calibrate-false-matches", "--data-root", str(synthetic_root), "--models", str(tmp_path)]) == 2
    assert "no model metadata" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["calibrate-false-matches", "--data-root", str(synthetic_root), "--draws", "0"])


def test_exporting_again_drops_a_record_of_earlier_codes(models: Path, synthetic_root: Path, cache_dir: Path):
    """`genreid export --to MODELS` makes the INT8 Inv-Id again: the codes measured may no longer be served."""
    assert main(["calibrate-false-matches", "--data-root", str(synthetic_root), "--models", str(models),
                 "--draws", "1"]) == 0
    assert ModelMetadata.load(models).false_matches is not None
    assert main(["export", "--to", str(models), "--data", str(synthetic_root), "--cache-dir", str(cache_dir)]) == 0
    assert ModelMetadata.load(models).false_matches is None
    assert "false_matches" not in json.loads((models / "model.json").read_text())
