"""The files a run directory's stages write: atomic writes (a kill mid-write never leaves a torn file), the
per-stage records (timings.json, machines.json) and the resumable checkpoints (.ckpt)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

# Per stage, as a run finishes it: its wall time over all sittings, and the machine of the sitting that finished it
# (stages of one run may train on different machines: a GPU for some, a CPU for the rest).
TIMINGS_FILE = "timings.json"
MACHINES_FILE = "machines.json"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary name then rename: a kill mid-write never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary name then rename: a process reading `path` meanwhile sees the old or the new text."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def read_stage_record(path: Path) -> dict[str, Any]:
    """{stage: value} from timings.json or machines.json; empty when the run has none (older runs lack machines)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def record_stage(path: Path, stage: str, value: float | str) -> None:
    """Set the stage's wall time (timings.json) or machine (machines.json); read just before writing, since stages
    of one run may train in parallel processes."""
    write_text_atomic(path, json.dumps({**read_stage_record(path), stage: value}, indent=2) + "\n")


class Stateful(Protocol):
    """What a checkpoint holds: modules, optimisers, LR schedules and EMA all have this pair."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> Any: ...


class Checkpointed:
    """Everything one stage checkpoints, registered once: `Checkpointed(model=model, optimizer=optimizer)`.

    Each entry's `state_dict()` is written under its keyword and given back to its `load_state_dict()` on resume,
    so the keywords are the checkpoint file's top-level keys next to "step", "rng" and "seconds". They are part of
    the file format: a run resumes with newer code only while a stage keeps registering the same keywords.
    """

    RESERVED = frozenset({"step", "rng", "seconds"})  # save_checkpoint's own keys

    def __init__(self, **entries: Stateful):
        if clash := self.RESERVED & entries.keys():
            raise ValueError(f"{sorted(clash)} are the loop's own checkpoint keys; register under other names")
        self.entries: dict[str, Stateful] = entries

    def state(self) -> dict[str, Any]:
        """The checkpoint's entries, in registration order."""
        return {key: entry.state_dict() for key, entry in self.entries.items()}

    def load(self, saved: Mapping[str, Any]) -> None:
        """Restore every entry from a checkpoint, in registration order (modules before their optimisers)."""
        for key, entry in self.entries.items():
            entry.load_state_dict(saved[key])


@dataclass(frozen=True)
class Resumed:
    """Where a checkpoint left its stage: the next step, and the wall seconds its sittings spent so far."""

    step: int
    seconds: float


def save_checkpoint(path: Path, checkpointed: Checkpointed, *, step: int, seconds: float) -> None:
    """The stage's registered entries, the step to resume at, the wall seconds so far and the global RNGs' state
    (torch, numpy, Python), written atomically."""
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    save_atomic({"step": step, "rng": rng, "seconds": seconds, **checkpointed.state()}, path)


def load_checkpoint(path: Path, checkpointed: Checkpointed, *, device: torch.device) -> Resumed | None:
    """Restore the entries and the global RNGs from `path` (tensors onto `device`); None when there is none yet."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location=device, weights_only=False)
    checkpointed.load(state)
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return Resumed(int(state["step"]), float(state.get("seconds", 0.0)))  # older checkpoints lack seconds: 0
