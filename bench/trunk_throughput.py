"""Inv-Id crops/s for every trunk of the registry (training/networks/trunks.py), against the shipped Inv-Id.

What a trunk costs does not depend on its weights, so each trunk is exported untrained (random initial weights) the
way `genreid export` exports a trained one: float32 ONNX, then INT8 calibrated on --calibration-crops crops.
Each (trunk, precision) is timed in ONNX Runtime at batch 1, 16 and 64, in one process per thread count (ONNX
Runtime allows one thread pool per process), in alternating windows so a machine that gets busier slows all alike;
each cell is the best window. The shipped model's Inv-Id (models/) is the reference row. Parameters and
multiply-adds per crop are counted on the torch module. Needs the train extra (torch builds the trunks).

    python bench/trunk_throughput.py                       # every trunk at 128x64, 1 and 2 threads
    python bench/trunk_throughput.py --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import REPO_ROOT, add_common_arguments, announced_machine, print_table, write_result

from genreid.service.core.model_json import ModelMetadata
from genreid.service.encoders import open_session

# (label, inv_id_trunk, inv_id_trunk_width): the trunks of the registry at the widths worth serving.
TRUNKS = (("unet (one member of the pair)", "unet", 1.0), ("osnet x0.25", "osnet", 0.25),
          ("osnet x0.5", "osnet", 0.5), ("osnet x0.75", "osnet", 0.75), ("osnet x1.0", "osnet", 1.0))
SHIPPED = "shipped Inv-Id (models/)"


def export_trunks(workdir: Path, resolution: tuple[int, int], calibration_crops: int) -> dict[str, dict]:
    """Each trunk's float and INT8 ONNX files in `workdir`, with its parameters and multiply-adds per crop."""
    import torch

    from genreid.training.export import _export, _quiet_exporter_logs
    from genreid.training.networks.inverters import InvId
    from genreid.training.networks.trunks import multiply_adds
    from genreid.training.presets import get_preset
    from genreid.training.quantize import quantize_network

    _quiet_exporter_logs()
    calibration = np.random.default_rng(0).random((calibration_crops, 3, *resolution), dtype=np.float32)
    found = {}
    for label, trunk, width in TRUNKS:
        torch.manual_seed(0)
        preset = replace(get_preset("cpu"), inv_id_resolution=resolution, inv_id_trunk=trunk,
                         inv_id_trunk_width=width)
        network = InvId.from_preset(preset).eval()
        float_path, int8_path = workdir / f"{trunk}-{width}.onnx", workdir / f"{trunk}-{width}.int8.onnx"
        _export(network, (torch.rand(2, 3, *resolution),), ["image"], "code", float_path)
        quantize_network(float_path, int8_path, calibration, identity=f"untrained {label}", ranges="minmax")
        found[label] = {"files": {"float32": str(float_path), "int8": str(int8_path)},
                        "parameters": sum(p.numel() for p in network.parameters()),
                        "mult_adds": multiply_adds(network, resolution)}
    return found


def shipped(models: Path) -> dict:
    metadata = ModelMetadata.load(models)
    return {"files": {"float32": str(models / "inv_id.onnx"), "int8": str(models / metadata.int8_files["inv_id"])},
            "parameters": metadata.parameters.get("inv_id"), "mult_adds": None,
            "resolution": list(metadata.identity_resolution)}


def time_here(networks: dict[str, dict], *, threads: int, batches: list[int], seconds: float, repeats: int,
              resolution: tuple[int, int]) -> list[dict]:
    """Best crops/s of every (network, precision, batch) on a pool of `threads` (this process's only pool)."""
    images = np.random.default_rng(1).random((max(batches), 3, *resolution), dtype=np.float32)
    sessions = {(label, precision): open_session(Path(path), ["CPUExecutionProvider"], threads)
                for label, network in networks.items() for precision, path in network["files"].items()}
    rows = []
    for batch in batches:
        windows: dict[tuple[str, str], list[float]] = {key: [] for key in sessions}
        for _ in range(repeats):
            for key, session in sessions.items():
                feed = {session.get_inputs()[0].name: images[:batch]}
                session.run(None, feed)  # warm-up of this shape
                runs, start = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - start) < seconds or runs == 0:
                    session.run(None, feed)
                    runs += 1
                windows[key].append(runs * batch / elapsed)
        rows += [{"network": label, "precision": precision, "threads": threads, "batch": batch,
                  "crops_per_s": round(max(values), 1)} for (label, precision), values in windows.items()]
    return rows


def run(args: argparse.Namespace) -> dict:
    resolution = tuple(args.resolution)
    with tempfile.TemporaryDirectory(prefix="genreid-trunks-") as tmp:
        networks = export_trunks(Path(tmp), resolution, args.calibration_crops)
        reference = shipped(args.models)
        if tuple(reference.pop("resolution")) == resolution:
            networks[SHIPPED] = reference
        spec = Path(tmp) / "networks.json"
        spec.write_text(json.dumps(networks))
        rows = []
        for threads in args.threads:
            worker = [sys.executable, __file__, "--worker", str(spec), "--threads-here", str(threads),
                      "--seconds", str(args.seconds), "--repeats", str(args.repeats),
                      "--resolution", *map(str, resolution), "--batches", *map(str, args.batches)]
            rows += json.loads(subprocess.run(worker, check=True, capture_output=True, text=True).stdout)
    for row in rows:
        row.update(parameters=networks[row["network"]]["parameters"], mult_adds=networks[row["network"]]["mult_adds"])
    return {"resolution": list(resolution), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models", help="the shipped model (reference)")
    parser.add_argument("--resolution", type=int, nargs=2, default=(128, 64), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one timing window")
    parser.add_argument("--repeats", type=int, default=3, help="windows per cell (the best is kept)")
    parser.add_argument("--calibration-crops", type=int, default=64)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads-here", type=int, help=argparse.SUPPRESS)
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        networks = json.loads(args.worker.read_text())
        print(json.dumps(time_here(networks, threads=args.threads_here, batches=args.batches, seconds=args.seconds,
                                   repeats=args.repeats, resolution=tuple(args.resolution))))
        return
    if args.quick:
        args.seconds, args.repeats, args.batches, args.threads, args.calibration_crops = 0.2, 1, [1, 16], [1], 8
    info = announced_machine()
    results = run(args)
    print_table(f"Inv-Id crops/s by trunk at {args.resolution[0]}x{args.resolution[1]}", results["rows"],
                ["network", "precision", "threads", "batch", "crops_per_s", "parameters", "mult_adds"])
    print(write_result("trunk_throughput", args, info, results))


if __name__ == "__main__":
    main()
