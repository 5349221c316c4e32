"""Torch modules rebuilt from the ONNX files `genreid export` wrote: the exporter keeps parameter and buffer names as
initializer names (large ones stored as NAME_fp16 by `store_weights_as_half`), so a finished export is a starting
point for training again even when its run directory is gone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

HALF_SUFFIX = "_fp16"  # what genreid.training.export.store_weights_as_half appends


def onnx_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every initializer of the ONNX file by its name (the half-precision suffix removed), in float32."""
    import onnx
    from onnx import numpy_helper

    weights = {}
    for initializer in onnx.load(str(path)).graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype == np.float16:
            values = values.astype(np.float32)
        weights[initializer.name.removesuffix(HALF_SUFFIX)] = torch.from_numpy(np.array(values))
    return weights


def onnx_state_dict(path: Path, like: dict[str, torch.Tensor], *, prefix: str = "") -> dict[str, torch.Tensor]:
    """`like`'s entries (a module's state_dict) with the values the ONNX file names `prefix` + key. Raises ValueError
    when the file lacks some (another network's file); BatchNorm's step counters, which an exported graph does not
    need, keep `like`'s values."""
    weights = onnx_weights(path)
    missing = [key for key in like if prefix + key not in weights and not key.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{path}: not this network's weights: {len(missing)} missing (first: {missing[0]})")
    return {key: weights.get(prefix + key, value) for key, value in like.items()}


def load_onnx_weights(module: nn.Module, path: Path, *, prefix: str = "") -> nn.Module:
    """Load `module`'s state from the ONNX file; ValueError, naming one, when a weight is missing or of another
    shape (another preset's network)."""
    like = module.state_dict()
    state = onnx_state_dict(path, like, prefix=prefix)
    if misshapen := [key for key, value in state.items() if value.shape != like[key].shape]:
        raise ValueError(f"{path}: not this network's weights: {len(misshapen)} of another shape "
                         f"(first: {misshapen[0]})")
    module.load_state_dict(state)
    return module
