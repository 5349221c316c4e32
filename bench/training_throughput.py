"""Training throughput per stage (items/s) for a preset, on the CPU and, when torch sees one, on a CUDA GPU.

The stage modules (training/stages/*.py) keep their step functions as closures inside train_*(), which need
a finished earlier stage and a data folder, so they cannot be called on their own. This script therefore
times a faithful copy of each step body: the same networks (training.networks via ConditionalGenerator,
CodeMLP, InvId, InvNoise), the same helpers (Runtime.wrap/autocast: channels_last and bf16 autocast,
Diffusion.add_noise, batch_indices, step_generator, random_flip, augment_real, EMA), the same losses,
optimisers and batch sizes, and the same sampler (training.stages.codes.sample_codes + training.stages.
samples.generate, 10-step DDIM at the cpu and paper presets). Only the data differ: random uint8 crops and
random codes stand in for Market-1501 and the generated triples, which changes no shape and so no cost.
If a stage's step changes, change its copy here (each copy names its source).

Stages and their unit:
  generator  denoiser U-Net + code table, one Adam step and the EMA update     images/s
  codes      code MLP (fp32, as train_codes runs it)                           codes/s
  samples    new codes (10-step DDIM over the MLP) + images (DDIM over U-Net)  images generated/s
  inv_id     Inv-Id, hybrid mode (half generated, half augmented real crops)   images/s
  inv_noise  Inv-Noise U-Net                                                   images/s
Cross-check: `items_per_s` in a run's log.jsonl should match the generator/inv_* rows for the same preset.

    python bench/training_throughput.py                    # preset cpu, 5 warm-up + 30 timed steps, CPU (+ CUDA)
    python bench/training_throughput.py --device cuda --preset paper
    python bench/training_throughput.py --quick            # preset tiny, 1 + 2 steps
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import add_common_arguments, machine, print_machine, print_table, warn_if_busy, write_result

from training.diffusion import Diffusion
from training.networks.code_mlp import CodeMLP
from training.networks.unet import UNet
from training.presets import PRESETS, Preset, get_preset
from training.stages.codes import sample_codes
from training.stages.context import StageContext, normalise, random_flip, to_device_floats
from training.stages.generator import ConditionalGenerator
from training.stages.inverters import augment_real
from training.stages.samples import CHUNK, generate
from training.trainer import EMA, Runtime, batch_indices, step_generator, unwrap

STAGES = ("generator", "codes", "samples", "inv_id", "inv_noise")
MARKET_TRAIN_IDENTITIES = 751


@dataclass
class Stage:
    name: str
    unit: str
    items_per_step: int
    step: Callable[[int], object]  # one training step (or one sampler chunk) at index i
    steps: int  # timed steps
    note: str = ""


@dataclass
class FakeData:
    """Stand-ins with the shapes of the real inputs: training crops with labels, the code table and triples."""

    images: np.ndarray  # uint8 (N, H, W, 3), as ImageSet.images
    labels: np.ndarray  # int64 (N,), index into the code table
    table: torch.Tensor  # (identities, D) learned codes
    triple_images: np.ndarray  # uint8 (N, H, W, 3)
    triple_codes: np.ndarray  # float32 (N, D)
    triple_noises: np.ndarray  # float32 (N, 3, H, W)


def fake_data(preset: Preset, pool: int, identities: int, device: torch.device) -> FakeData:
    rng = np.random.default_rng(preset.seed)
    height, width = preset.resolution
    return FakeData(
        images=rng.integers(0, 256, (pool, height, width, 3), dtype=np.uint8),
        labels=rng.integers(0, identities, pool),
        table=torch.from_numpy(rng.normal(0, 0.3, (identities, preset.code_dim)).astype(np.float32)).to(device),
        triple_images=rng.integers(0, 256, (pool, height, width, 3), dtype=np.uint8),
        triple_codes=rng.normal(0, 0.3, (pool, preset.code_dim)).astype(np.float32),
        triple_noises=rng.standard_normal((pool, 3, height, width), dtype=np.float32),
    )


def generator_stage(preset: Preset, runtime: Runtime, data: FakeData, diffusion: Diffusion, steps: int) -> Stage:
    """Copy of training/stages/generator.py train_generator.step."""
    images = torch.from_numpy(data.images)
    floats = to_device_floats(data.images, torch.device("cpu"))
    mean, std = floats.mean(dim=(0, 2, 3)).to(runtime.device), floats.std(dim=(0, 2, 3)).to(runtime.device)
    model = ConditionalGenerator(
        UNet(preset.widths, preset.blocks, preset.code_dim, embed_dim=64), len(data.table), preset.code_dim
    )
    wrapped = runtime.wrap(model)
    optimizer = torch.optim.Adam([
        {"params": model.unet.parameters(), "lr": preset.generator_lr},
        {"params": model.codes.parameters(), "lr": preset.code_lr},
    ])
    ema = EMA(model.unet, preset.ema)

    def step(index: int) -> float:
        _, gen = step_generator(preset.seed, index, runtime.rank)
        batch = batch_indices(len(images), preset.generator_batch, index, preset.seed, runtime.rank, runtime.world)
        x0 = normalise(to_device_floats(images[batch].numpy(), runtime.device), mean, std)
        (x0,) = random_flip(x0, gen)
        eps = torch.randn(x0.shape, generator=gen).to(runtime.device)
        t = torch.rand(len(x0), generator=gen).to(runtime.device)
        noisy, variance = diffusion.add_noise(x0, eps, t)
        labels = torch.from_numpy(data.labels[batch]).to(runtime.device)
        with runtime.autocast():
            predicted, codes = wrapped(noisy.contiguous(memory_format=torch.channels_last), variance, labels)
        noise_loss = F.l1_loss(predicted.float(), eps)
        loss = noise_loss + preset.code_l2 * codes.float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update(unwrap(wrapped).unet)
        return loss.item()

    params = sum(p.numel() for p in model.unet.parameters()) / 1e6
    return Stage("generator", "images/s", preset.generator_batch, step, steps, f"U-Net {params:.2f}M params")


def codes_stage(preset: Preset, runtime: Runtime, data: FakeData, diffusion: Diffusion, steps: int) -> Stage:
    """Copy of training/stages/codes.py train_codes.step (fp32, no channels_last: it is an MLP)."""
    table = data.table
    normalised = (table - table.mean(0)) / table.std(0)
    mlp = CodeMLP(preset.code_dim, preset.codes_hidden).to(runtime.device)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=preset.codes_lr)

    def step(index: int) -> float:
        _, gen = step_generator(preset.seed, index, runtime.rank, salt=2)
        x0 = normalised[torch.from_numpy(batch_indices(len(table), preset.codes_batch, index, preset.seed))]
        eps = torch.randn(x0.shape, generator=gen).to(runtime.device)
        noisy, variance = diffusion.add_noise(x0, eps, torch.rand(len(x0), generator=gen).to(runtime.device))
        loss = F.l1_loss(mlp(noisy, variance), x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return Stage("codes", "codes/s", preset.codes_batch, step, steps)


def samples_stage(preset: Preset, runtime: Runtime, data: FakeData, ctx: StageContext, steps: int,
                  chunk: int) -> Stage:
    """Copy of one chunk of training/stages/samples.py make_samples (the EMA U-Net in eval, not channels_last,
    as ctx.generator() returns it)."""
    height, width = preset.resolution
    unet = UNet(preset.widths, preset.blocks, preset.code_dim, embed_dim=64).to(runtime.device).eval()
    mlp = CodeMLP(preset.code_dim, preset.codes_hidden).to(runtime.device).eval()
    code_saved = {"mean": data.table.mean(0), "std": data.table.std(0)}
    image_saved = {"mean": torch.full((3,), 0.45), "std": torch.full((3,), 0.25)}
    device = runtime.device

    def step(index: int) -> int:
        gen = torch.Generator().manual_seed(preset.seed * 1_000_003 + index)
        code = sample_codes(mlp, code_saved, chunk, ctx.diffusion, gen)
        noise = torch.randn((chunk, 3, height, width), generator=gen).to(device)
        image = generate(unet, image_saved, code, noise, ctx)
        pixels = (image.permute(0, 2, 3, 1) * 255.0 + 0.5).clamp(0, 255).byte().cpu().numpy()
        return len(pixels) + len(code.float().cpu().numpy())

    note = f"{preset.sample_steps}-step DDIM images, 10-step DDIM codes, {chunk} per chunk"
    return Stage("samples", "images generated/s", chunk, step, steps, note)


def inv_id_stage(preset: Preset, runtime: Runtime, data: FakeData, steps: int, mode: str) -> Stage:
    """Copy of training/stages/inverters.py train_inv_id.step."""
    table = data.table
    real_count = round(preset.inv_id_batch * preset.real_fraction) if mode == "hybrid" else 0
    generated_count = preset.inv_id_batch - real_count
    nearest = torch.cdist(table, table).fill_diagonal_(math.inf).min(1).values.mean()
    scale = 4.0 / nearest.pow(2).item()
    model = StageContext(preset, Path("."), Path("."), runtime).new_inv_id()
    wrapped = runtime.wrap(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.inv_id_lr)
    total = max(preset.inv_id_steps, steps + 100)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, preset.inv_id_lr, total_steps=total, pct_start=0.05)

    def step(index: int) -> float:
        wrapped.train()
        _, gen = step_generator(preset.seed, index, runtime.rank, salt=4)
        picked = batch_indices(len(data.triple_images), generated_count, index, preset.seed + 1, runtime.rank,
                               runtime.world)
        (images,) = random_flip(to_device_floats(data.triple_images[picked], runtime.device), gen)
        targets = torch.from_numpy(data.triple_codes[picked]).to(runtime.device)
        if real_count:
            real = batch_indices(len(data.images), real_count, index, preset.seed + 2, runtime.rank, runtime.world)
            images = torch.cat([images, augment_real(to_device_floats(data.images[real], runtime.device), gen)])
            real_labels = torch.from_numpy(data.labels[real]).to(runtime.device)
            targets = torch.cat([targets, table[real_labels]])
        with runtime.autocast():
            predicted = wrapped(images.contiguous(memory_format=torch.channels_last)).float()
        loss = F.mse_loss(predicted, targets)
        if real_count:
            logits = -scale * torch.cdist(predicted[generated_count:], table).pow(2)
            loss = loss + F.cross_entropy(logits, real_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        return loss.item()

    return Stage("inv_id", "images/s", preset.inv_id_batch, step, steps, f"mode {mode}")


def inv_noise_stage(preset: Preset, runtime: Runtime, data: FakeData, steps: int) -> Stage:
    """Copy of training/stages/inverters.py train_inv_noise.step."""
    model = StageContext(preset, Path("."), Path("."), runtime).new_inv_noise()
    wrapped = runtime.wrap(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.inv_noise_lr)

    def step(index: int) -> float:
        wrapped.train()
        _, gen = step_generator(preset.seed, index, runtime.rank, salt=5)
        picked = batch_indices(len(data.triple_images), preset.inv_noise_batch, index, preset.seed + 3,
                               runtime.rank, runtime.world)
        images = to_device_floats(data.triple_images[picked], runtime.device)
        noises = torch.from_numpy(data.triple_noises[picked]).to(runtime.device)
        images, targets = random_flip(images, gen, noises)
        with runtime.autocast():
            predicted = wrapped(images.contiguous(memory_format=torch.channels_last)).float()
        loss = F.l1_loss(predicted, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return Stage("inv_noise", "images/s", preset.inv_noise_batch, step, steps)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stage(stage: Stage, warmup: int, device: torch.device) -> dict:
    """Warm up (allocator, autotuning, first-call compilation), then time `stage.steps` steps."""
    for index in range(warmup):
        stage.step(index)
    synchronize(device)
    start = time.perf_counter()
    for index in range(warmup, warmup + stage.steps):
        stage.step(index)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"stage": stage.name, "items_per_s": round(stage.items_per_step * stage.steps / seconds, 2),
            "unit": stage.unit, "batch": stage.items_per_step, "ms_per_step": round(seconds * 1000 / stage.steps, 2),
            "steps": stage.steps, "note": stage.note}


def bench_device(args: argparse.Namespace, device: torch.device) -> list[dict]:
    preset = get_preset(args.preset)
    runtime = Runtime(device)
    torch.manual_seed(preset.seed)
    identities = args.identities or MARKET_TRAIN_IDENTITIES - preset.val_identities
    data = fake_data(preset, max(args.pool, preset.inv_id_batch, preset.generator_batch), identities, device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="genreid-bench-") as run_dir:
        ctx = StageContext(preset, Path("."), Path(run_dir), runtime)
        for name in args.stages:
            if name == "generator":
                stage = generator_stage(preset, runtime, data, ctx.diffusion, args.steps)
            elif name == "codes":
                stage = codes_stage(preset, runtime, data, ctx.diffusion, args.steps)
            elif name == "samples":
                stage = samples_stage(preset, runtime, data, ctx, args.sample_chunks, args.sample_chunk)
            elif name == "inv_id":
                stage = inv_id_stage(preset, runtime, data, args.steps, args.inv_id_mode)
            else:
                stage = inv_noise_stage(preset, runtime, data, args.steps)
            warmup = min(args.warmup, 1) if name == "samples" else args.warmup
            row = {"device": str(device), **time_stage(stage, warmup, device)}
            print(f"  {row['device']:6s} {row['stage']:10s} {row['items_per_s']:>10} {row['unit']}", flush=True)
            rows.append(row)
            del stage
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="all: the CPU, then a CUDA GPU when torch sees one")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--steps", type=int, default=30, help="timed steps per training stage")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--sample-chunk", type=int, default=CHUNK, help="images per sampler call (as make_samples)")
    parser.add_argument("--sample-chunks", type=int, default=3, help="timed sampler calls (one warm-up first)")
    parser.add_argument("--inv-id-mode", choices=("hybrid", "paper"), default="hybrid")
    parser.add_argument("--identities", type=int, default=0,
                        help="code-table size (0: Market-1501's 751 training identities less the preset's held out)")
    parser.add_argument("--pool", type=int, default=2048, help="fake crops and triples to draw batches from")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_common_arguments(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        args.preset, args.steps, args.warmup, args.sample_chunk, args.sample_chunks, args.pool = "tiny", 2, 1, 8, 1, 64
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device == "all" and torch.cuda.is_available()):
        devices.append(torch.device("cuda", 0))
    info = machine() | {"torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    print_machine(info)
    warn_if_busy(info)
    started = time.time()
    rows = []
    for device in devices:
        print(f"preset {args.preset} on {device}:", flush=True)
        rows.extend(bench_device(args, device))
    print_table(f"training throughput, preset {args.preset}", rows,
                ["device", "stage", "items_per_s", "unit", "batch", "ms_per_step", "steps", "note"])
    results = {"preset": get_preset(args.preset).as_dict(), "rows": rows,
               "bench_seconds": round(time.time() - started, 1)}
    print(f"results: {write_result('training_throughput', args, info, results)}")


if __name__ == "__main__":
    main()
