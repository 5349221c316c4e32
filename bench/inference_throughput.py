"""Inv-Id crops/s through `genreid.service.encoders.Encoders`, float32 against INT8, at several batch sizes.

Every crop the service enrols or queries goes through Inv-Id, so its throughput bounds ingest. Both precisions
load from the same model directory into one process (one ONNX Runtime pool, as in the server) and are timed in
alternating windows, so a machine that gets busier during the run slows both alike; each cell reports the best
window (the machine's speed) and the median one. Inputs are preprocessed crops
(`genreid.service.core.imaging.preprocess`, not timed): Market-1501 crops with --data-root, else seeded
random pixels (the cost does not depend on them).

    python bench/inference_throughput.py --data-root ../shared/data/market1501-subset
    python bench/inference_throughput.py --quick
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _common import REPO_ROOT, add_common_arguments, announced_machine, print_table, write_result

from genreid.service.core.imaging import preprocess
from genreid.service.core.market import read_split
from genreid.service.encoders import Encoders

PRECISIONS = ("float", "int8")


def crops(data_root: str | None, count: int, resolution: tuple[int, int]) -> np.ndarray:
    if data_root is None:
        return np.random.default_rng(0).random((count, 3, *resolution), dtype=np.float32)
    paths = [crop.path for crop in read_split(data_root, "gallery")[:count]]
    return np.stack([preprocess(path, resolution) for path in paths])


def crops_per_second(encoders: Encoders, images: np.ndarray, seconds: float) -> float:
    """Whole batches of `images` through Inv-Id for at least `seconds`."""
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs == 0:
        encoders.identity(images)
        runs += 1
    return runs * len(images) / elapsed


def run(args: argparse.Namespace) -> dict:
    encoders = {p: Encoders(args.models, device=args.device, threads=args.threads, precision=p) for p in PRECISIONS}
    images = crops(args.data_root, max(args.batches), encoders["float"].identity_resolution)
    codes = {p: e.identity(images) for p, e in encoders.items()}
    cosines = (codes["float"] * codes["int8"]).sum(1) / (
        np.linalg.norm(codes["float"], axis=1) * np.linalg.norm(codes["int8"], axis=1))
    rows = []
    for batch in args.batches:
        windows: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for _ in range(args.repeats):
            for precision, encoder in encoders.items():
                windows[precision].append(crops_per_second(encoder, images[:batch], args.seconds))
        for precision in PRECISIONS:
            best, median = max(windows[precision]), float(np.median(windows[precision]))
            rows.append({"batch": batch, "precision": encoders[precision].precision["inv_id"],
                         "best_crops_per_s": round(best, 1), "median_crops_per_s": round(median, 1),
                         "best_ms_per_batch": round(1000 * batch / best, 3),
                         "speedup_best": round(best / max(windows["float"]), 2)})
    return {"rows": rows, "providers": encoders["float"].providers,
            "code_cosine_float_vs_int8": {"min": float(cosines.min()), "mean": float(cosines.mean())},
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--models", default=str(REPO_ROOT / "models"), help="exported model directory")
    parser.add_argument("--data-root", help="a Market-1501 folder: crops of its bounding_box_test/")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=7, help="timed windows per precision and batch")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one window")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.repeats, args.seconds = [1, 16], 2, 0.2
    info = announced_machine()
    results = run(args)
    print_table("Inv-Id through Encoders", results["rows"], ["batch", "precision", "best_crops_per_s",
                                                             "median_crops_per_s", "best_ms_per_batch", "speedup_best"])
    print(f"float vs INT8 code cosine: {results['code_cosine_float_vs_int8']}; load average at the end "
          f"{results['load_average_at_end']}")
    # ONNX Runtime sizes its process-wide pool once, so each thread count is its own run and its own file.
    print(write_result("inference_throughput" + (f"-threads{args.threads}" if args.threads else ""), args, info,
                       results))


if __name__ == "__main__":
    main()
