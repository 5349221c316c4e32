"""The step loop every stage runs: a stage writes only its step, the loop owns resume, checkpoints every few
minutes, tqdm progress and the JSON loss log; and the EMA a stage may keep of its weights."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from genreid.training.run_files import Checkpointed, load_checkpoint, save_checkpoint
from genreid.training.runtime import Runtime

log = logging.getLogger(__name__)


class EMA:
    """Exponential moving average of a module's floating-point state, for smoother samples."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for key, value in module.state_dict().items():
            if value.dtype.is_floating_point:
                self.state[key].lerp_(value, 1.0 - self.decay)
            else:
                self.state[key].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged state itself (not a copy), as checkpoints have always stored it."""
        return self.state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state


class StageLoop:
    """Runs `step_fn(step) -> {metric: value}` for `total` steps with checkpoints and resume.

    `checkpointed` is the stage's registration of what its checkpoints hold (modules, optimisers, EMA).
    Progress shows the metrics and images/s; every `log_every` steps a JSON line goes to `log_path`, and every
    `validate_every` steps before the last (0: never) one with `validate()`'s metrics: how a stage's held-out score
    moves with its length, from one run instead of one run per length.
    Checkpoints also keep the loop's wall time over every sitting so far ("seconds"): a stage killed with its
    session and resumed in the next is timed whole: on resume `earlier[name]` gets what the earlier sittings spent.
    """

    def __init__(
        self,
        name: str,
        total: int,
        checkpoint: Path,
        runtime: Runtime,
        checkpointed: Checkpointed,
        log_path: Path,
        items_per_step: int,
        checkpoint_seconds: float = 300.0,
        log_every: int = 50,
        stop_after: int | None = None,
        earlier: dict[str, float] | None = None,
        validate: Callable[[], dict[str, float]] | None = None,
        validate_every: int = 0,
    ):
        self.name, self.total, self.checkpoint, self.runtime = name, total, checkpoint, runtime
        self.checkpointed, self.log_path = checkpointed, log_path
        self.items_per_step, self.checkpoint_seconds, self.log_every = items_per_step, checkpoint_seconds, log_every
        self.stop_after = stop_after
        self.validate, self.validate_every = validate, validate_every if validate is not None else 0
        self.earlier = {} if earlier is None else earlier
        self.earlier[name] = 0.0
        self._started = time.monotonic()

    def _save(self, step: int) -> None:
        if self.runtime.is_main:
            seconds = self.earlier[self.name] + time.monotonic() - self._started
            save_checkpoint(self.checkpoint, self.checkpointed, step=step, seconds=seconds)

    def _resume(self) -> int:
        resumed = load_checkpoint(self.checkpoint, self.checkpointed, device=self.runtime.device)
        if resumed is None:
            return 0
        self.earlier[self.name] = resumed.seconds
        log.info("%s: resumed from %s at step %d", self.name, self.checkpoint, resumed.step)
        return resumed.step

    def _log(self, record: dict[str, object]) -> None:
        if self.runtime.is_main:
            with self.log_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def run(self, step_fn: Callable[[int], dict[str, float]]) -> bool:
        """Run the remaining steps (at most `stop_after` of them); True when the stage reached `total`."""
        self._started = time.monotonic()
        start = self._resume()
        end = self.total if self.stop_after is None else min(self.total, start + self.stop_after)
        last_save = time.monotonic()
        progress = tqdm(range(start, end), initial=start, total=self.total, desc=self.name,
                        disable=not self.runtime.is_main, dynamic_ncols=True)
        window_start, window_items = time.monotonic(), 0
        for step in progress:
            metrics = step_fn(step)
            window_items += self.items_per_step * self.runtime.world
            if (step + 1) % self.log_every == 0 or step + 1 == end:
                rate = window_items / max(time.monotonic() - window_start, 1e-9)
                window_start, window_items = time.monotonic(), 0
                record = {"stage": self.name, "step": step + 1, "items_per_s": round(rate, 2), "time": time.time(),
                          **{k: round(float(v), 6) for k, v in metrics.items()}}
                progress.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()} | {"img/s": f"{rate:.1f}"})
                self._log(record)
            if self.validate_every and (step + 1) % self.validate_every == 0 and step + 1 < self.total:
                self._log({"stage": self.name, "step": step + 1, "time": time.time(), "validation": self.validate()})
            if time.monotonic() - last_save >= self.checkpoint_seconds and step + 1 < end:
                self._save(step + 1)
                last_save = time.monotonic()
        self._save(end)
        return end >= self.total
