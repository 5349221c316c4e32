"""What every training stage shares: device and precision, torchrun/DDP, deterministic batches,
atomic checkpoints with resume, tqdm progress and a JSON loss log."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from genreid.training.allocator import current_allocator

log = logging.getLogger(__name__)

# Per stage, as a run finishes it: its wall time over all sittings, and the machine of the sitting that finished it
# (stages of one run may train on different machines: a GPU for some, a CPU for the rest).
TIMINGS_FILE = "timings.json"
MACHINES_FILE = "machines.json"


def hardware() -> dict[str, Any]:
    """The machine this process runs on, as the model card and the run ledger name it."""
    cpuinfo = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if cpuinfo.exists() else ""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as setup_runtime picks it
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "precision": "bf16 autocast" if bf16_pays(device) else "float32"}


def machine_name(hw: Mapping[str, Any]) -> str:
    """A `hardware()` record (or the card's copy of one) in words: the GPU, else the CPU and its cores."""
    return f"GPU {hw['gpu']}" if hw["gpu"] else f"{hw['cpu']} ({hw['cores']} cores)"


def machine_description() -> str:
    """This machine and the precision it trains in, as the run ledger and machines.json name them."""
    hw = hardware()
    return f"{machine_name(hw)}, {hw['precision']}"


@dataclass(frozen=True)
class Runtime:
    """Where and how this process computes: device, autocast dtype, and its rank under torchrun."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def uses_bf16(self) -> bool:
        return bf16_pays(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where it pays (see bf16_pays), else a no-op: the step runs in float32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.uses_bf16)

    def wrap(self, module: nn.Module) -> nn.Module:
        """Move to the device in channels_last; under torchrun, wrap in DistributedDataParallel."""
        module = module.to(self.device, memory_format=torch.channels_last)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def sync_buffers(self, module: nn.Module) -> None:
        """DDP copies rank 0's buffers (BatchNorm statistics) to all ranks before each forward; do it once
        more after the last step so every rank ends with the same state."""
        if self.world > 1:
            for buffer in module.buffers():
                dist.broadcast(buffer, 0)


def bf16_pays(device: torch.device) -> bool:
    """bf16 autocast on CUDA, and on CPUs with AVX-512 (the cpu preset's generator step ran 1.9x faster than
    float32 on an AVX-512 Xeon); an AVX2-only CPU emulates bf16 and ran the same step 9x slower than float32
    (docs/BENCHMARKS.md, "A second machine")."""
    return device.type == "cuda" or torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def setup_runtime() -> Runtime:
    """CUDA when present, else CPU; joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    runtime = Runtime(device, rank, world)
    log.info("training on %s in %s under %s", device, "bf16 autocast" if runtime.uses_bf16 else "float32",
             current_allocator())
    return runtime


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def step_generator(seed: int, step: int, rank: int, salt: int = 0) -> tuple[np.random.Generator, torch.Generator]:
    """RNGs that depend only on (seed, step, rank): a resumed run draws exactly what an uninterrupted one does."""
    entropy = [seed, step, rank, salt]
    torch_gen = torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
    return np.random.default_rng(entropy), torch_gen


def batch_indices(n: int, batch: int, step: int, seed: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Indices of this rank's batch at `step`: successive seeded permutations (epochs) of range(n)."""
    start = (step * world + rank) * batch
    positions = np.arange(start, start + batch)
    epochs = positions // n
    out = np.empty(batch, dtype=np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(n)
        mask = epochs == epoch
        out[mask] = order[positions[mask] % n]
    return out


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


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


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

    RESERVED = frozenset({"step", "rng", "seconds"})  # StageLoop's own keys

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


class StageLoop:
    """Runs `step_fn(step) -> {metric: value}` for `total` steps with checkpoints and resume.

    `checkpointed` is the stage's registration of what its checkpoints hold (modules, optimisers, EMA).
    Progress shows the metrics and images/s; every `log_every` steps a JSON line goes to `log_path`.
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
    ):
        self.name, self.total, self.checkpoint, self.runtime = name, total, checkpoint, runtime
        self.checkpointed, self.log_path = checkpointed, log_path
        self.items_per_step, self.checkpoint_seconds, self.log_every = items_per_step, checkpoint_seconds, log_every
        self.stop_after = stop_after
        self.earlier = {} if earlier is None else earlier
        self.earlier[name] = 0.0
        self._started = time.monotonic()

    def _save(self, step: int) -> None:
        if self.runtime.is_main:
            seconds = self.earlier[self.name] + time.monotonic() - self._started
            save_atomic({"step": step, "rng": _rng_state(), "seconds": seconds, **self.checkpointed.state()},
                        self.checkpoint)

    def _resume(self) -> int:
        if not self.checkpoint.is_file():
            return 0
        state = torch.load(self.checkpoint, map_location=self.runtime.device, weights_only=False)
        self.checkpointed.load(state)
        _set_rng_state(state["rng"])
        self.earlier[self.name] = float(state.get("seconds", 0.0))  # older checkpoints did not keep it: 0
        log.info("%s: resumed from %s at step %d", self.name, self.checkpoint, state["step"])
        return int(state["step"])

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
                if self.runtime.is_main:
                    with self.log_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
            if time.monotonic() - last_save >= self.checkpoint_seconds and step + 1 < end:
                self._save(step + 1)
                last_save = time.monotonic()
        self._save(end)
        return end >= self.total
