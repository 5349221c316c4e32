"""Distillation: an Inv-Id taught by a finished run's Inv-Id (`inv_id_teacher`, `distill_weight`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genreid.training.presets import get_preset
from genreid.training.run_ledger import variant_name
from genreid.training.runs import CONFIG_FILE
from genreid.training.stages.inv_id import TEACHER_CODES, inv_id_plan
from genreid.training.validation import embed, saved_inv_id

from .conftest import train_member


@pytest.fixture(scope="module")
def teacher(tiny_stages, tmp_path_factory):
    return train_member(tiny_stages, tmp_path_factory.mktemp("teacher"), inv_id_seed=5, inv_id_steps=6)


def _agreement(ctx, teacher_codes: np.ndarray) -> float:
    """Mean cosine between a finished run's Inv-Id codes of its training crops and the teacher's."""
    codes = embed(saved_inv_id(ctx, ctx.load("inv_id_hybrid")), ctx.inv_id_splits[0], ctx.runtime.device)
    return float(torch.nn.functional.cosine_similarity(torch.from_numpy(codes), torch.from_numpy(teacher_codes)).mean())


def test_a_taught_inv_id_moves_towards_its_teacher(teacher, tiny_stages, tmp_path):
    common = {"inv_id_seed": 7, "inv_id_steps": 30, "log_every": 10}
    alone = train_member(tiny_stages, tmp_path / "alone", **common)
    taught = train_member(tiny_stages, tmp_path / "taught", **common, inv_id_teacher=str(teacher.run_dir),
                          distill_weight=50.0)
    saved = torch.load(taught.path(TEACHER_CODES), weights_only=False)
    expected = embed(saved_inv_id(teacher, teacher.load("inv_id_hybrid")), teacher.inv_id_splits[0],
                     teacher.runtime.device)
    np.testing.assert_allclose(saved["codes"].numpy(), expected, atol=1e-5)
    assert saved["teacher"] == str(teacher.run_dir.resolve())
    lines = [json.loads(line) for line in taught.path("log.jsonl").read_text().splitlines()]
    assert any("distill" in line for line in lines)
    assert variant_name(taught.preset, "hybrid") == "hybrid, 30 steps, distilled from a finished Inv-Id (weight 50)"
    # Same seed, batches and steps: only the teacher's term differs, and it pulls the codes towards the teacher's.
    assert _agreement(taught, expected) > _agreement(alone, expected) + 0.5


def test_a_teacher_of_other_crops_or_without_a_weight_is_refused(teacher, tiny_stages, tmp_path):
    with pytest.raises(ValueError, match="go together"):
        inv_id_plan(get_preset("tiny", inv_id_teacher=str(teacher.run_dir)), "hybrid")
    with pytest.raises(ValueError, match="no real crops"):
        inv_id_plan(get_preset("tiny", inv_id_teacher=str(teacher.run_dir), distill_weight=1.0), "paper")
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((teacher.run_dir / CONFIG_FILE).read_text())
    config["preset"]["val_identities"] = 3  # other held-out identities: other training crops
    (other / CONFIG_FILE).write_text(json.dumps(config))
    for name in ("generator.pt", "inv_id_hybrid.pt"):
        (other / name).symlink_to(teacher.run_dir / name)
    with pytest.raises(ValueError, match="other crops"):
        train_member(tiny_stages, tmp_path / "student", inv_id_teacher=str(other), distill_weight=1.0)
