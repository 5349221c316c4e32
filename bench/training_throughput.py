"""Training throughput per stage (items/s) for a preset, on the CPU and, when torch sees one, on a CUDA GPU.

Runs the real pipeline (genreid.training.pipeline.run_stages) for a few steps per stage on the procedural data set
(genreid.training.data.synthetic, 64x32 like Market-1501 after preprocessing) and reads what the trainer itself
measures: the `items_per_s` windows of log.jsonl (the first window, `--warmup` steps, is left out) and, for
the sampler, the stage's wall time in timings.json (model loading and the first chunk included). The data
change no shape and so no cost; nothing here copies a training step, so the numbers follow the trainer.

    python bench/training_throughput.py                    # preset cpu: 5 warm-up + 30 timed steps, CPU (+ CUDA)
    python bench/training_throughput.py --device cuda --preset paper
    python bench/training_throughput.py --quick            # preset tiny, 1 + 2 steps
    python bench/training_throughput.py --allocator system --inv-id-resolution 128 64

Like `genreid train`, it runs under jemalloc when that is installed (training/allocator.py); `--allocator system`
measures the C library's malloc instead.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from _common import add_common_arguments, machine, print_machine, print_table, warn_if_busy, write_result

from genreid.training.allocator import SWITCH, current_allocator, reexec_under_jemalloc
from genreid.training.data.synthetic import write_synthetic_market
from genreid.training.pipeline import run_stages
from genreid.training.presets import PRESETS, get_preset
from genreid.training.runtime import Runtime
from genreid.training.stages.context import StageContext
from genreid.training.stages.samples import CHUNK

# log.jsonl stage name -> (row name, unit)
TRAINED = {"generator": ("generator", "images/s"), "codes": ("codes", "codes/s"),
           "inv_id_hybrid": ("inv_id", "images/s"), "inv_noise": ("inv_noise", "images/s")}


def bench_device(args: argparse.Namespace, device: torch.device, data: Path) -> list[dict]:
    """One short run of every stage on `device`; rows of items/s per stage."""
    steps = args.warmup + args.steps
    sizes = {"inv_id_resolution": tuple(args.inv_id_resolution)} if args.inv_id_resolution else {}
    preset = get_preset(
        args.preset, generator_steps=steps, codes_steps=steps, inv_id_steps=steps, inv_noise_steps=steps,
        samples=args.sample_chunks * CHUNK, inv_id_modes=("hybrid",), val_identities=4, log_every=args.warmup,
        checkpoint_seconds=1e9, **sizes,
    )
    batches = {"generator": preset.generator_batch, "codes": preset.codes_batch,
               "inv_id_hybrid": preset.inv_id_batch, "inv_noise": preset.inv_noise_batch}
    with tempfile.TemporaryDirectory(prefix="genreid-bench-") as run_dir, \
            tempfile.TemporaryDirectory(prefix="genreid-bench-cache-") as cache:
        ctx = StageContext(preset, data, Path(run_dir), Runtime(device), Path(cache))
        run_stages(ctx)
        records = [json.loads(line) for line in ctx.path("log.jsonl").read_text().splitlines()]
        timings = json.loads(ctx.path("timings.json").read_text())
    rows = []
    for stage, (name, unit) in TRAINED.items():
        timed = [r for r in records if r["stage"] == stage and r["step"] > args.warmup]
        rate = sum(r["items_per_s"] for r in timed) / len(timed)
        rows.append({"device": str(device), "stage": name, "items_per_s": round(rate, 2), "unit": unit,
                     "batch": batches[stage], "ms_per_step": round(1000 * batches[stage] / rate, 2),
                     "steps": args.steps})
    rows.insert(2, {"device": str(device), "stage": "samples", "unit": "images generated/s", "batch": CHUNK,
                    "items_per_s": round(preset.samples / timings["samples"], 2), "steps": args.sample_chunks,
                    "note": f"{preset.sample_steps}-step DDIM; wall time incl. loading and the first chunk"})
    for row in rows:
        print(f"  {row['device']:6s} {row['stage']:10s} {row['items_per_s']:>10} {row['unit']}", flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="all: the CPU, then a CUDA GPU when torch sees one")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per training stage")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--sample-chunks", type=int, default=3, help=f"sampler chunks of {CHUNK} images")
    parser.add_argument("--identities", type=int, default=64, help="procedural training identities")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--inv-id-resolution", type=int, nargs=2, metavar=("H", "W"),
                        help="Inv-Id's input size (default: the preset's)")
    parser.add_argument("--allocator", choices=("jemalloc", "system"), default="jemalloc",
                        help="jemalloc when installed, as `genreid train` runs; system: the C library's malloc")
    add_common_arguments(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.allocator == "jemalloc":
        reexec_under_jemalloc()
    else:
        os.environ[SWITCH] = "system"
    if args.quick:
        args.preset, args.steps, args.warmup, args.sample_chunks, args.identities = "tiny", 2, 1, 1, 12
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device == "all" and torch.cuda.is_available()):
        devices.append(torch.device("cuda", 0))
    info = machine() | {"torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                        "allocator": current_allocator()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    print_machine(info)
    warn_if_busy(info)
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="genreid-bench-data-") as data:
        root = write_synthetic_market(data, train_identities=args.identities, test_identities=2, cameras=4)
        for device in devices:
            print(f"preset {args.preset} on {device}:", flush=True)
            rows.extend(bench_device(args, device, root))
    print_table(f"training throughput, preset {args.preset}", rows,
                ["device", "stage", "items_per_s", "unit", "batch", "ms_per_step", "steps", "note"])
    results = {"preset": get_preset(args.preset).as_dict(), "inv_id_resolution": args.inv_id_resolution, "rows": rows,
               "bench_seconds": round(time.time() - started, 1)}
    variant = ("-system-malloc" if args.allocator == "system" else "") + (
        "-inv-id-{}x{}".format(*args.inv_id_resolution) if args.inv_id_resolution else "")
    print(f"results: {write_result('training_throughput' + variant, args, info, results)}")


if __name__ == "__main__":
    main()
