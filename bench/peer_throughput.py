"""Inv-Id against the discriminative peer, torchreid's OSNet-x0.25, at the same 64x32 input and batch: crops/s.

The speed moonshot: does our identity encoder, served as we serve it, embed at least as fast as OSNet-x0.25 on
a 2-core CPU? Timed side by side, on the same seeded random inputs (N, 3, 64, 32) in [0, 1] (preprocessing not
timed; the cost does not depend on the pixels):

- OSNet-x0.25 in torch, float32 under `torch.inference_mode`, NCHW and channels_last;
- OSNet-x0.25 exported to ONNX as training/export.py exports ours (dynamo, dynamic batch) in ONNX Runtime, float32
  and INT8 made by our own quantiser (`genreid.training.quantize.quantize_network`: QDQ, per-channel int8 weights, uint8
  activations calibrated on --calibration-crops training crops), on the same process-wide pool as the service;
- our Inv-Id through `genreid.service.encoders.Encoders`, float32 and INT8 (as bench/inference_throughput.py).

The peer is torchreid's own `osnet_x0_25` (pretrained=False: random weights, which cost what trained ones do;
--peer-weights loads a state_dict) behind the ImageNet normalisation it is trained with, so that both networks take
[0, 1] crops. Only torchreid's model file is loaded (its package imports data loaders needing scipy and more).

Every variant is timed in `--repeats` windows of `--seconds`, all variants alternating (the starting one rotating),
and each cell reports the best window and the median one. ONNX Runtime sizes its process-wide pool once per
process, so each `--threads` value (0: ONNX Runtime's and torch's defaults, both cores; 1: one thread for both) is
measured in a fresh process of its own, one after the other in the same run and the same result file.
Retrieval accuracy is not measured here (README.md's table: the peer trained from scratch at 64x32).

    pip install -c constraints/cpu.txt -e '.[peer]'     # torchreid, bench-only
    python bench/peer_throughput.py --data-root ../shared/data/market1501-subset
    python bench/peer_throughput.py --quick
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata as package_metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from _common import REPO_ROOT, add_common_arguments, machine, print_machine, print_table, warn_if_busy, write_result

INSTALL = "pip install -c constraints/cpu.txt -e '.[peer]'  (or: pip install torchreid==0.2.5 --no-deps)"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PEER = "OSNet-x0.25"
OURS = "Inv-Id"


def osnet_module() -> ModuleType:
    """torchreid's reid/models/osnet.py loaded by path (it imports only torch), without importing the package,
    whose __init__ pulls in data loaders and their dependencies."""
    spec = importlib.util.find_spec("torchreid")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"bench/peer_throughput.py needs torchreid (bench-only): {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "reid" / "models" / "osnet.py"
    if not path.is_file():
        sys.exit(f"{path}: not in this torchreid install; reinstall torchreid 0.2.5: {INSTALL}")
    module_spec = importlib.util.spec_from_file_location("_torchreid_osnet", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def peer_model(weights: str | None = None) -> Any:
    """OSNet-x0.25 in eval mode (the 512-d feature) behind the ImageNet normalisation: [0, 1] crops in."""
    import torch

    class Normalised(torch.nn.Module):
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net((images - self.mean) / self.std)

    net = osnet_module().osnet_x0_25(num_classes=1, pretrained=False)  # pretrained=False: no download
    if weights:
        net.load_state_dict(torch.load(weights, map_location="cpu"), strict=False)
    return Normalised(net).eval()


def peer_parameters(model: Any) -> int:
    """The parameters inference uses (the training classifier left out)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("net.classifier."))


def export_peer(model: Any, path: Path, resolution: tuple[int, int]) -> None:
    """ONNX with a dynamic batch, exported exactly as training/export.py exports Inv-Id."""
    import torch

    for name in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (torch.rand(2, 3, *resolution),), str(path), input_names=["image"],
                      output_names=["feature"], dynamic_shapes=({0: batch},), external_data=False, dynamo=True,
                      verbose=False)


def calibration_crops(data_root: str | None, count: int, resolution: tuple[int, int]) -> tuple[np.ndarray, str]:
    """`count` training crops (bounding_box_train, a seeded pick) decoded as the service decodes them, else
    seeded random pixels."""
    if data_root is not None:
        from genreid.service.core.imaging import preprocess

        folder = Path(data_root)
        folder = folder / "bounding_box_train" if (folder / "bounding_box_train").is_dir() else folder
        paths = sorted(folder.glob("*.jpg"))
        if paths:
            picked = np.random.default_rng(0).choice(len(paths), min(count, len(paths)), replace=False)
            return np.stack([preprocess(paths[i], resolution) for i in np.sort(picked)]), str(folder)
    return np.random.default_rng(1).random((count, 3, *resolution), dtype=np.float32), "random pixels"


def crops_per_second(embed: Callable[[np.ndarray], Any], images: np.ndarray, seconds: float) -> float:
    """Whole batches of `images` through `embed` for at least `seconds`."""
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs == 0:
        embed(images)
        runs += 1
    return runs * len(images) / elapsed


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    values = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": round(float(values.min()), 5), "mean": round(float(values.mean()), 5)}


def measure(threads: int, models: str, peer: dict[str, str], batches: list[int], repeats: int,
            seconds: float) -> dict[str, Any]:
    """One thread setting, in a fresh process: every variant built here, then timed in alternating windows."""
    import torch

    from genreid.service.encoders import Encoders, open_session

    if threads:
        torch.set_num_threads(threads)
    cpu = ["CPUExecutionProvider"]
    ours = {p: Encoders(models, device="cpu", threads=threads, precision=p) for p in ("float", "int8")}
    resolution = ours["float"].identity_resolution
    # The peer's ONNX files on the same process-wide ONNX Runtime pool as ours (genreid.service.encoders.open_session).
    sessions = {p: open_session(Path(peer[p]), cpu, threads) for p in ("float", "int8")}
    net = peer_model()
    net.load_state_dict(torch.load(peer["state_dict"], map_location="cpu"))
    net_cl = peer_model().to(memory_format=torch.channels_last)
    net_cl.load_state_dict(net.state_dict())

    def torch_nchw(images: np.ndarray) -> Any:
        with torch.inference_mode():
            return net(torch.from_numpy(images)).numpy()

    def torch_channels_last(images: np.ndarray) -> Any:
        with torch.inference_mode():
            return net_cl(torch.from_numpy(images).contiguous(memory_format=torch.channels_last)).numpy()

    def onnx_runner(session: Any) -> Callable[[np.ndarray], Any]:
        name = session.get_inputs()[0].name
        return lambda images: session.run(None, {name: images})[0]

    # (model, runtime, precision, layout) -> embed(images)
    variants: dict[tuple[str, str, str, str], Callable[[np.ndarray], Any]] = {
        (PEER, "torch", "float32", "NCHW"): torch_nchw,
        (PEER, "torch", "float32", "channels_last"): torch_channels_last,
        (PEER, "onnxruntime", "float32", "-"): onnx_runner(sessions["float"]),
        (PEER, "onnxruntime", "int8", "-"): onnx_runner(sessions["int8"]),
        (OURS, "onnxruntime (Encoders)", "float32", "-"): ours["float"].identity,
        (OURS, "onnxruntime (Encoders)", "int8", "-"): ours["int8"].identity,
    }
    images = np.random.default_rng(0).random((max(batches), 3, *resolution), dtype=np.float32)
    outputs = {key: np.asarray(embed(images)) for key, embed in variants.items()}
    torch_out = outputs[(PEER, "torch", "float32", "NCHW")]
    checks = {
        "peer_onnx_float_vs_torch_max_abs": float(np.abs(outputs[(PEER, "onnxruntime", "float32", "-")]
                                                         - torch_out).max()),
        "peer_torch_channels_last_vs_nchw_max_abs": float(np.abs(
            outputs[(PEER, "torch", "float32", "channels_last")] - torch_out).max()),
        "peer_feature_cosine_float_vs_int8": cosines(outputs[(PEER, "onnxruntime", "float32", "-")],
                                                     outputs[(PEER, "onnxruntime", "int8", "-")]),
        "ours_code_cosine_float_vs_int8": cosines(outputs[(OURS, "onnxruntime (Encoders)", "float32", "-")],
                                                  outputs[(OURS, "onnxruntime (Encoders)", "int8", "-")]),
        "feature_dims": {PEER: int(torch_out.shape[1]), OURS: int(ours["float"].metadata.code_dim)},
    }
    keys = list(variants)
    rows = []
    for batch in batches:
        chunk = np.ascontiguousarray(images[:batch])
        for embed in variants.values():  # warm-up at this batch size (allocations, kernel choice)
            for _ in range(3):
                embed(chunk)
        windows: dict[tuple[str, str, str, str], list[float]] = {key: [] for key in keys}
        for repeat in range(repeats):
            for i in range(len(keys)):
                key = keys[(i + repeat) % len(keys)]
                windows[key].append(crops_per_second(variants[key], chunk, seconds))
        for (model, runtime, precision, layout), values in windows.items():
            best = max(values)
            rows.append({"threads": threads, "batch": batch, "model": model, "runtime": runtime,
                         "precision": precision, "layout": layout, "best_crops_per_s": round(best, 1),
                         "median_crops_per_s": round(float(np.median(values)), 1),
                         "best_ms_per_batch": round(1000 * batch / best, 3)})
    return {"threads": threads, "torch_threads": torch.get_num_threads(), "onnxruntime_pool_threads":
            threads or os.cpu_count(), "resolution": list(resolution), "providers": ours["float"].providers,
            "checks": checks, "rows": rows, "load_average_at_end": [round(v, 2) for v in os.getloadavg()]}


def build_peer(args: argparse.Namespace, directory: Path, resolution: tuple[int, int]) -> dict[str, Any]:
    """The peer's torch weights, its float ONNX and its INT8 ONNX (our quantiser) under `directory`."""
    import torch

    from genreid.training.quantize import model_id, quantize_network

    torch.manual_seed(0)
    model = peer_model(args.peer_weights)
    files = {"state_dict": directory / "osnet_x0_25.pt", "float": directory / "osnet_x0_25.onnx",
             "int8": directory / "osnet_x0_25.int8.onnx"}
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    files["state_dict"].write_bytes(buffer.getvalue())
    export_peer(model, files["float"], resolution)
    calibration, source = calibration_crops(args.data_root, args.calibration_crops, resolution)
    quantize_network(files["float"], files["int8"], calibration, identity=model_id(files["float"]))
    return {"files": {k: str(v) for k, v in files.items()}, "parameters": peer_parameters(model),
            "bytes": {k: v.stat().st_size for k, v in files.items()},
            "calibration": {"crops": len(calibration), "source": source},
            "weights": args.peer_weights or "random (pretrained=False, seed 0)"}


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per thread setting and batch: the peer's fastest variant against ours as a CPU serves it (INT8), and the
    like-for-like INT8-in-ONNX-Runtime pair."""
    out = []
    for threads in sorted({r["threads"] for r in rows}):
        for batch in sorted({r["batch"] for r in rows}):
            cell = [r for r in rows if r["threads"] == threads and r["batch"] == batch]
            peer_best = max((r for r in cell if r["model"] == PEER), key=lambda r: r["best_crops_per_s"])
            peer_int8 = next(r for r in cell if r["model"] == PEER and r["precision"] == "int8")
            ours_int8 = next(r for r in cell if r["model"] == OURS and r["precision"] == "int8")
            ours_best = ours_int8["best_crops_per_s"]
            out.append({"threads": threads, "batch": batch, "inv_id_int8": ours_best,
                        "peer_int8_ort": peer_int8["best_crops_per_s"],
                        "inv_id_over_peer_int8": round(ours_best / peer_int8["best_crops_per_s"], 2),
                        "peer_fastest": peer_best["best_crops_per_s"],
                        "peer_fastest_is": " ".join(v for v in (peer_best["runtime"], peer_best["precision"],
                                                                 peer_best["layout"]) if v != "-"),
                        "inv_id_over_peer_fastest": round(ours_best / peer_best["best_crops_per_s"], 2),
                        "at_least_as_fast": ours_best >= peer_best["best_crops_per_s"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--models", default=str(REPO_ROOT / "models"), help="exported model directory (ours)")
    parser.add_argument("--data-root", help="a Market-1501 folder: the peer's INT8 calibrates on crops of its "
                                            "bounding_box_train/ (else on random pixels)")
    parser.add_argument("--calibration-crops", type=int, default=64)
    parser.add_argument("--peer-weights", help="a torchreid OSNet-x0.25 state_dict (default: random weights)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1],
                        help="thread settings, each in a process of its own (0: the libraries' defaults)")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per variant, batch and threads")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one window")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.repeats, args.seconds, args.calibration_crops = [1, 16], 2, 0.2, 16
    osnet_module()  # fail early, with the install command, when torchreid is absent
    from genreid.service.core.model_json import ModelMetadata

    metadata = ModelMetadata.load(args.models)
    resolution = metadata.identity_resolution
    info = machine()
    info["packages"]["torchreid"] = package_metadata.version("torchreid")
    print_machine(info)
    warn_if_busy(info)
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as scratch:
        peer = build_peer(args, Path(scratch), resolution)
        runs = []
        for threads in args.threads:
            # A fresh process per thread setting: ONNX Runtime's process-wide pool is sized once.
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                runs.append(pool.submit(measure, threads, args.models, peer["files"], args.batches, args.repeats,
                                        args.seconds).result())
    ours_files = {"float": Path(args.models) / "inv_id.onnx",
                  "int8": Path(args.models) / metadata.int8_files.get("inv_id", "inv_id.int8.onnx")}
    models = {
        PEER: {"parameters": peer["parameters"], "bytes": peer["bytes"], "weights": peer["weights"],
               "int8_calibration": peer["calibration"], "feature_dim": runs[0]["checks"]["feature_dims"][PEER]},
        OURS: {"parameters": metadata.parameters.get("inv_id"),
               "bytes": {k: p.stat().st_size for k, p in ours_files.items() if p.is_file()},
               "feature_dim": metadata.code_dim,
               "note": "inv_id.onnx stores its weights as float16 + Cast (training/export.py)"},
    }
    rows = [row for run in runs for row in run["rows"]]
    results = {"resolution": list(resolution), "models": models, "rows": rows, "summary": summary(rows),
               "runs": [{k: v for k, v in run.items() if k != "rows"} for run in runs],
               "load_average_at_end": [round(v, 2) for v in os.getloadavg()]}
    print_table(f"crops/s at {resolution[0]}x{resolution[1]} (best and median of {args.repeats} windows of "
                f"{args.seconds:g} s)", rows, ["threads", "batch", "model", "runtime", "precision", "layout",
                                               "best_crops_per_s", "median_crops_per_s", "best_ms_per_batch"])
    print_table("Inv-Id INT8 (as a CPU serves it) against the peer", results["summary"],
                ["threads", "batch", "inv_id_int8", "peer_int8_ort", "inv_id_over_peer_int8", "peer_fastest",
                 "peer_fastest_is", "inv_id_over_peer_fastest", "at_least_as_fast"])
    for name, model in models.items():
        print(f"{name}: {model['parameters']:,} parameters, files {model['bytes']}")
    for run in results["runs"]:
        print(f"threads {run['threads']} (torch {run['torch_threads']}, ONNX Runtime pool "
              f"{run['onnxruntime_pool_threads']}): {run['checks']}")
    print(write_result("peer_throughput", args, info, results))


if __name__ == "__main__":
    main()
