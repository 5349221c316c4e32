"""The .ckpt format: what each stage registers with `Checkpointed` is exactly what its checkpoints held before the
registration existed, so a run started with older code resumes with this one."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from genreid.training.loop import EMA
from genreid.training.networks.code_mlp import CodeMLP
from genreid.training.networks.unet import UNet
from genreid.training.presets import get_preset
from genreid.training.run_files import Checkpointed
from genreid.training.stages.codes import train_codes
from genreid.training.stages.context import StageContext
from genreid.training.stages.generator import ConditionalGenerator, train_generator
from genreid.training.stages.inv_id import identity_targets, inv_id_optimiser, train_inv_id
from genreid.training.stages.inv_noise import train_inv_noise

from .conftest import make_context

# The discriminative mode needs a margin of its own; nothing else here depends on it.
PRESET = get_preset("tiny", triplet_margin=0.2)


def test_checkpointed_writes_each_entry_under_its_key_in_order_and_loads_it_back():
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    ema = EMA(model, 0.5)
    checkpointed = Checkpointed(model=model, optimizer=optimizer, ema=ema)
    state = checkpointed.state()
    assert list(state) == ["model", "optimizer", "ema"]
    assert state["ema"] is ema.state  # stored as is, as the generator always stored it
    assert state["model"].keys() == model.state_dict().keys()

    other = nn.Linear(3, 2)
    other_ema = EMA(other, 0.5)
    Checkpointed(model=other, optimizer=torch.optim.Adam(other.parameters()), ema=other_ema).load(state)
    assert torch.equal(other.weight, model.weight) and other_ema.state is ema.state


@pytest.mark.parametrize("key", ["step", "rng", "seconds"])
def test_checkpointed_refuses_the_loops_own_keys(key):
    with pytest.raises(ValueError, match="loop's own"):
        Checkpointed(**{key: nn.Linear(1, 1)})


def _step_once(optimizer: torch.optim.Optimizer) -> None:
    """One update with made-up gradients, so the optimiser holds per-parameter state as a trained one does."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# What each stage's checkpoint held before `Checkpointed`: these dicts are written out as the old per-stage
# `state()` closures built them, from objects built as each stage builds them.


def _old_generator(ctx: StageContext) -> dict[str, Any]:
    preset = ctx.preset
    identities = len(ctx.load("generator")["person_ids"])
    model = ConditionalGenerator(UNet(preset.widths, preset.blocks, preset.code_dim, embed_dim=64), identities,
                                 preset.code_dim)
    optimizer = torch.optim.Adam([
        {"params": model.unet.parameters(), "lr": preset.generator_lr},
        {"params": model.codes.parameters(), "lr": preset.code_lr},
    ])
    _step_once(optimizer)
    ema = EMA(model.unet, preset.ema)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state}


def _old_codes(ctx: StageContext) -> dict[str, Any]:
    mlp = CodeMLP(ctx.preset.code_dim, ctx.preset.codes_hidden)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=ctx.preset.codes_lr)
    _step_once(optimizer)
    return {"mlp": mlp.state_dict(), "optimizer": optimizer.state_dict()}


def _old_inv_id(mode: str) -> Callable[[StageContext], dict[str, Any]]:
    def build(ctx: StageContext) -> dict[str, Any]:
        model = ctx.new_inv_id()
        head = identity_targets(ctx, mode, ctx.inv_id_splits[0]).head
        optimizer, schedule = inv_id_optimiser(ctx.preset, [model, head])
        _step_once(optimizer)
        schedule.step()
        return {"model": model.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict()}

    return build


def _old_inv_noise(ctx: StageContext) -> dict[str, Any]:
    model = ctx.new_inv_noise()
    optimizer = torch.optim.Adam(model.parameters(), lr=ctx.preset.inv_noise_lr)
    _step_once(optimizer)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


STAGES: dict[str, tuple[Callable[[StageContext], Any], Callable[[StageContext], dict[str, Any]], list[str]]] = {
    "generator": (train_generator, _old_generator, ["model", "optimizer", "ema"]),
    "codes": (train_codes, _old_codes, ["mlp", "optimizer"]),
    "inv_id_hybrid": (lambda ctx: train_inv_id(ctx, "hybrid"), _old_inv_id("hybrid"),
                      ["model", "head", "optimizer", "schedule"]),
    "inv_id_discriminative": (lambda ctx: train_inv_id(ctx, "discriminative"), _old_inv_id("discriminative"),
                              ["model", "head", "optimizer", "schedule"]),
    "inv_noise": (train_inv_noise, _old_inv_noise, ["model", "optimizer"]),
}


def _structure(value: Any) -> Any:
    """Keys, nesting, tensor shapes and dtypes, and value types: what a loader depends on, not the numbers."""
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, dict):
        return {key: _structure(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_structure(item) for item in value]
    return type(value).__name__


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_resumes_from_an_old_layout_checkpoint_and_writes_the_same_layout(stage, tiny_stages, tmp_path):
    train, old_layout, old_keys = STAGES[stage]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for earlier in ("generator.pt", "codes.pt", "samples.npz"):  # what the stages read from earlier stages
        shutil.copy(Path(tiny_stages.run_dir) / earlier, run_dir / earlier)
    ctx = make_context(PRESET, tiny_stages.data_root, run_dir, tiny_stages.cache_dir, stop_after=1)
    old = old_layout(ctx)
    assert list(old) == old_keys
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save({"step": 2, "rng": rng, **old}, ctx.path(f"{stage}.ckpt"))

    train(ctx)  # resumes at step 2 (strict loads: a missing or renamed entry fails here), runs one step, saves

    written = torch.load(ctx.path(f"{stage}.ckpt"), weights_only=False)
    assert written["step"] == 3
    assert list(written) == ["step", "rng", "seconds", *old_keys]
    assert _structure({key: written[key] for key in old_keys}) == _structure(old)
