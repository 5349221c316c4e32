"""A run killed mid-stage and resumed ends in exactly the state of an uninterrupted run."""

from __future__ import annotations

import torch

from training.presets import get_preset
from training.stages.generator import train_generator

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
