"""Do codes rank better after a fixed transform learned from the training crops' codes?

Camera-aware normalisation and whitening are common re-ID post-processing that, unlike re-ranking, leave each code a
function of its own crop (and its camera): subtract each camera's mean code, centre on the mean code, or whiten
(PCA of the training codes, eigenvalues floored at a fraction of the largest). The statistics come from the codes of
the crops Inv-Id trained on (never the validation or test identities); the runs' codes are averaged first, as a
joined Inv-Id serves them. Scored by direction, standard protocol (docs/experiments/inv-id-levers.md, "Where the
73 mAP target stands").
Reads training runs (torch weights): needs the `train` extra.

    python bench/code_postprocessing.py RUN_A RUN_B --cache-dir CACHE_DIR
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import accuracy_bench, accuracy_cells
from inv_id_ensemble import run_codes, score

from genreid.service.core.similarity import unit_length
from genreid.training.stages.inv_id import require_one_code_table

SPLITS = ("val_query", "val_gallery", "test_query", "test_gallery")
WHITENING_FLOOR = 0.1  # eigenvalues below this fraction of the largest are floored (0.01 scored lower still)


def camera_centred(codes: np.ndarray, cameras: np.ndarray, train: np.ndarray, train_cameras: np.ndarray) -> np.ndarray:
    """Each code minus its camera's mean training code (a camera no training crop came from: the overall mean)."""
    means = {camera: train[train_cameras == camera].mean(0) for camera in np.unique(train_cameras)}
    overall = train.mean(0)
    return codes - np.stack([means.get(camera, overall) for camera in cameras])


def whitening(train: np.ndarray, floor: float) -> Callable[[np.ndarray], np.ndarray]:
    mean = train.mean(0)
    values, vectors = np.linalg.eigh(np.cov((train - mean).T))
    scale = vectors @ np.diag(1.0 / np.sqrt(np.maximum(values, floor * values.max()))) @ vectors.T
    return lambda codes: (codes - mean) @ scale


def run(args: argparse.Namespace) -> list[dict]:
    members, crops = zip(*(run_codes(run_dir, args, with_train=True) for run_dir in args.runs), strict=True)
    require_one_code_table([m.table for m in members])
    splits = crops[0]
    codes = {key: unit_length(np.mean([m.codes[key] for m in members], axis=0)) for key in ("train", *SPLITS)}
    train, train_cameras = codes["train"], splits["train"].cameras
    by_camera = {key: camera_centred(codes[key], splits[key].cameras, train, train_cameras) for key in SPLITS}
    whiten = whitening(train, WHITENING_FLOOR)
    whiten_by_camera = whitening(camera_centred(train, train_cameras, train, train_cameras), WHITENING_FLOOR)
    variants = {
        "none": codes,
        "centred on the mean training code": {key: codes[key] - train.mean(0) for key in SPLITS},
        "each camera's mean training code subtracted": by_camera,
        "whitened": {key: whiten(codes[key]) for key in SPLITS},
        "camera means subtracted, then whitened": {key: whiten_by_camera(by_camera[key]) for key in SPLITS},
    }
    return [{"post-processing": name, **accuracy_cells(score(transformed, splits, "val"),
                                                       score(transformed, splits, "test"))}
            for name, transformed in variants.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="training run directories on one generator (averaged)")
    accuracy_bench(parser, run, name="code_postprocessing", key="rows", label_columns=["post-processing"],
                   title="The runs' mean code after each post-processing (by direction, standard protocol; %)")


if __name__ == "__main__":
    main()
