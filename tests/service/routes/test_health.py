"""/health's per-query false matches: model.json's record as it is, and its estimate at the gallery's size."""

from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from genreid.service.app import create_app
from genreid.service.core.false_matches import INDEPENDENT_PAIRS, INTERPOLATED, MEASURED, estimate
from genreid.service.core.model_json import FalseMatches, GalleryFalseMatches, ModelMetadata

RECORD = FalseMatches(
    per_pair=0.01,
    per_query=(GalleryFalseMatches(gallery=2, rate=0.02, kind=MEASURED),
               GalleryFalseMatches(gallery=8, rate=0.06, kind=MEASURED),
               GalleryFalseMatches(gallery=100_000, rate=1.0, kind=INDEPENDENT_PAIRS)),
    measured_on="synthetic: 10 queries, 10 gallery crops, identity removed",
    precision="float32",
)


@pytest.fixture
def recorded_models(models_dir: Path, tmp_path: Path) -> Path:
    directory = Path(shutil.copytree(models_dir, tmp_path / "models-recorded"))
    replace(ModelMetadata.load(directory), false_matches=RECORD).save(directory)
    return directory


def test_without_a_record_both_are_null(client: TestClient):
    health = client.get("/health").json()
    assert health["false_matches"] is None and health["false_match_rate_at_gallery_size"] is None


def test_the_record_and_its_estimate_for_the_gallery_as_it_grows(make_settings, recorded_models: Path, enrol):
    with TestClient(create_app(make_settings(models=recorded_models))) as client:
        shown = []
        for people in ([(1, 0)], [(2, 0)], [(3, v) for v in range(2)], [(4, v) for v in range(6)]):
            enrol(client, people)
            health = client.get("/health").json()
            assert health["false_matches"] == {**asdict(RECORD), "per_query": [asdict(r) for r in RECORD.per_query]}
            shown.append(health["false_match_rate_at_gallery_size"])
    assert shown == [asdict(estimate(RECORD, size)) for size in (1, 2, 4, 10)]
    assert [row["kind"] for row in shown] == [INDEPENDENT_PAIRS, MEASURED, INTERPOLATED,
                                              INDEPENDENT_PAIRS]
