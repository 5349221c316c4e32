"""The step loop (genreid.training.loop): validation while a stage trains."""

from __future__ import annotations

import json

import torch

from .conftest import train_member


def test_validation_while_training_is_logged_and_leaves_the_training_as_it_was(tiny_stages, tmp_path):
    """Validation lines at every `inv_id_validate_every` steps before the last; the finished Inv-Id equals one
    trained without them (each step draws its batch from its own generators, and validation draws none)."""
    plain = train_member(tiny_stages, tmp_path / "plain", inv_id_steps=7)
    watched = train_member(tiny_stages, tmp_path / "watched", inv_id_steps=7, inv_id_validate_every=3)
    lines = [json.loads(line) for line in watched.path("log.jsonl").read_text().splitlines()]
    validations = [line for line in lines if "validation" in line]
    assert [line["step"] for line in validations] == [3, 6]
    assert all(line["stage"] == "inv_id_hybrid" and 0.0 <= line["validation"]["mAP"] <= 1.0 for line in validations)
    assert not any("validation" in line for line in
                   map(json.loads, plain.path("log.jsonl").read_text().splitlines()))
    finished = [torch.load(ctx.path("inv_id_hybrid.pt"), weights_only=False) for ctx in (plain, watched)]
    assert finished[0]["validation"] == finished[1]["validation"]
    assert all(torch.equal(a, b) for a, b in zip(finished[0]["model"].values(), finished[1]["model"].values(),
                                                 strict=True))
