"""A run killed mid-stage and resumed ends in exactly the state of an uninterrupted run."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import torch

from genreid.training.pipeline import run_stages
from genreid.training.presets import get_preset
from genreid.training.stages.generator import train_generator
from genreid.training.stages.samples import CHUNK

from .conftest import make_context


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else _states_equal(a[k], b[k]) if isinstance(a[k], dict)
        else a[k] == b[k]
        for k in a
    )


def test_resumed_generator_equals_uninterrupted(synthetic_root, cache_dir, tmp_path):
    preset = get_preset("tiny", generator_steps=12, checkpoint_seconds=0.0)
    whole = make_context(preset, synthetic_root, tmp_path / "whole", cache_dir)
    train_generator(whole)

    sliced_dir = tmp_path / "sliced"
    first = make_context(preset, synthetic_root, sliced_dir, cache_dir, stop_after=5)
    train_generator(first)
    assert not first.finished("generator")
    assert torch.load(sliced_dir / "generator.ckpt", weights_only=False)["step"] == 5
    # A new context, as a new process after a kill would build.
    train_generator(make_context(preset, synthetic_root, sliced_dir, cache_dir))

    expected, resumed = whole.load("generator"), first.load("generator")
    assert _states_equal(expected["unet"], resumed["unet"])
    assert torch.equal(expected["codes"], resumed["codes"])
    assert not torch.equal(expected["codes"], torch.zeros_like(expected["codes"]))


def test_a_stage_resumed_in_a_new_process_is_timed_over_both_sittings(synthetic_root, cache_dir, tmp_path):
    """timings.json (the card's and the ledger's wall time) counts the sittings before a kill too: the checkpoint
    keeps the loop's seconds so far."""
    preset = get_preset("tiny", generator_steps=12, checkpoint_seconds=0.0)
    run_stages(make_context(preset, synthetic_root, tmp_path, cache_dir, stop_after=6), "generator")
    assert not (tmp_path / "timings.json").exists()  # unfinished: nothing recorded yet
    earlier = torch.load(tmp_path / "generator.ckpt", weights_only=False)["seconds"]
    assert earlier > 0.0

    started = time.monotonic()
    run_stages(make_context(preset, synthetic_root, tmp_path, cache_dir), "generator")
    second = time.monotonic() - started
    recorded = json.loads((tmp_path / "timings.json").read_text())["generator"]
    assert second + earlier >= recorded > second


def test_samples_made_before_an_interruption_keep_their_time(tiny_stages, tmp_path):
    preset = get_preset("tiny", samples=CHUNK + 3)
    ctx = make_context(preset, tiny_stages.data_root, tmp_path, tiny_stages.cache_dir)
    for name in ("generator.pt", "codes.pt"):
        shutil.copy(tiny_stages.path(name), ctx.path(name))
    height, width = preset.resolution
    (tmp_path / "samples.parts").mkdir()
    np.savez(tmp_path / "samples.parts" / "00000.npz",  # the first chunk, as an earlier sitting left it
             images=np.zeros((CHUNK, height, width, 3), np.uint8), codes=np.zeros((CHUNK, preset.code_dim), np.float32),
             noises=np.zeros((CHUNK, 3, height, width), np.float32), seconds=np.float64(1000.0))
    started = time.monotonic()
    run_stages(ctx, "samples")
    assert 1000.0 < json.loads(ctx.path("timings.json").read_text())["samples"] < 1000.0 + time.monotonic() - started
    assert len(np.load(ctx.path("samples.npz"))["codes"]) == CHUNK + 3
