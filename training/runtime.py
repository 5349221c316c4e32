"""Where and how a training process computes: the machine, the device and its precision, its rank under
torchrun (DDP), and the per-step RNGs that make batches a function of (seed, step, rank) alone."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from genreid.training.allocator import current_allocator

log = logging.getLogger(__name__)


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


def bf16_pays(device: torch.device) -> bool:
    """bf16 autocast on CUDA, and on CPUs with AVX-512 (the cpu preset's generator step ran 1.9x faster than
    float32 on an AVX-512 Xeon); an AVX2-only CPU emulates bf16 and ran the same step 9x slower than float32
    (docs/BENCHMARKS.md, "A second machine")."""
    return device.type == "cuda" or torch.backends.cpu.get_cpu_capability().startswith("AVX512")


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
    """The module itself, out of its DistributedDataParallel wrapper when `Runtime.wrap` put it in one."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def step_generator(seed: int, step: int, rank: int, salt: int = 0) -> tuple[np.random.Generator, torch.Generator]:
    """RNGs that depend only on (seed, step, rank): a resumed run draws exactly what an uninterrupted one does.
    `salt` keeps the draws of stages that share a seed apart."""
    entropy = [seed, step, rank, salt]
    torch_gen = torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
    return np.random.default_rng(entropy), torch_gen
