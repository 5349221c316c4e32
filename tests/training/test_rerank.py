"""genreid tune-rerank: re-ranking parameters chosen on the validation identities alone, written where the
service reads them."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import genreid.training.data.cache
import genreid.training.rerank
import genreid.training.stages.context
from genreid.service.core.model_json import ModelMetadata
from genreid.service.core.reranking import RerankParams
from genreid.training.export import retune_rerank
from genreid.training.rerank import TOLERANCE


def test_tuning_reads_only_the_training_split_and_writes_what_the_service_reads(tiny_run, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch):
    models = tmp_path / "models"
    shutil.copytree(tiny_run.models, models)
    load_split = genreid.training.data.cache.load_split

    def train_only(root, split, *args, **kwargs):
        assert split == "train", f"tuning read the {split} split"
        return load_split(root, split, *args, **kwargs)

    monkeypatch.setattr(genreid.training.stages.context, "load_split", train_only)
    monkeypatch.setattr(genreid.training.rerank, "GRID", {"candidates": (5, 40), "k1": (3, 6), "k2": (1, 3),
                                                  "lambda_": (0.3,)})
    ctx = dataclasses.replace(tiny_run.ctx)  # a fresh context: no split decoded yet
    record = retune_rerank(ctx, models)

    params = RerankParams.from_model(ModelMetadata.load(models))
    assert params is not None and params.as_dict() == {key: record[key] for key in ("k1", "k2", "lambda",
                                                                                    "candidates")}
    best = record["best_per_k"]
    assert set(best) == {"5", "40"}
    top = max(entry["mAP"] for entry in best.values())
    smallest = min((int(k) for k, entry in best.items() if entry["mAP"] >= top - TOLERANCE))
    assert params.candidates == smallest and record["validation"]["reranked"]["mAP"] == best[str(smallest)]["mAP"]
    assert set(record["validation"]) == {"code_distance", "reranked", "reranked_all_queries"}
    assert ModelMetadata.load(models).model_id == ModelMetadata.load(tiny_run.models).model_id  # nothing else lost



def test_evaluate_rerank_reports_the_three_rankings_and_refuses_an_untuned_model(tiny_run, synthetic_root,
                                                                                 tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    models = tmp_path / "models"
    shutil.copytree(tiny_run.models, models)
    replace(ModelMetadata.load(models), rerank=None).save(models)  # as an export tuned without re-ranking
    command = [sys.executable, "-m", "genreid.service.cli", "evaluate", "--data", str(synthetic_root), "--models",
               str(models), "--device", "cpu", "--rerank"]
    refused = subprocess.run(command, capture_output=True, text=True)
    last_line = refused.stderr.strip().splitlines()[-1]  # after the INFO lines of loading the model
    assert refused.returncode == 2 and last_line.startswith("genreid evaluate:") and "tune-rerank" in last_line

    monkeypatch.setattr(genreid.training.rerank, "GRID", {"candidates": (5, 40), "k1": (3,), "k2": (1, 3),
                                                  "lambda_": (0.3,)})
    retune_rerank(dataclasses.replace(tiny_run.ctx), models)
    result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    params = RerankParams.from_model(ModelMetadata.load(models))
    assert result["rerank"] == params.as_dict()
    assert set(result) == {"served", "rerank", "code_distance", "reranked", "reranked_all_queries"}
    assert json.loads(subprocess.run(command[:-1], capture_output=True, text=True, check=True).stdout) == result
    plain = subprocess.run([*command[:-1], "--no-rerank"], capture_output=True, text=True, check=True)
    assert json.loads(plain.stdout) == result["code_distance"]
    assert all(result[key]["queries"] == result["code_distance"]["queries"] for key in ("reranked",
                                                                                       "reranked_all_queries"))
