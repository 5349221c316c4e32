"""INT8 variants of the exported networks and the model identity they share with the float model.

Everything here works from the float ONNX files alone (no torch checkpoint), so an already-exported model
directory can be quantised and identified after its training run is gone. ONNX Runtime's static quantisation:
QDQ format, per-channel int8 weights, uint8 activations calibrated (min/max) on training crops.

Weights use 7 bits (reduce_range): on x86 CPUs without VNNI (AVX2 only) ONNX Runtime adds pairs of uint8 x int8
products in int16, which 8-bit weights overflow; the shipped Inv-Id then lost 3.6 validation mAP points there
(docs/BENCHMARKS.md, "A second machine"), with 7 bits none.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from genreid.service.core.model_json import MODEL_FILES, ModelMetadata, Quantization
from genreid.service.encoders import MODEL_ID_KEY, Encoders
from genreid.training.stages.context import StageContext
from genreid.training.validation import validate_inv_id

log = logging.getLogger(__name__)
CALIBRATION_BATCH = 32
CALIBRATION_CROPS = 256
CALIBRATION = "99.999th percentile"  # of each activation over the calibration crops, as the model card says
# CPUs keep serving float32 when INT8 loses more validation mAP than this (a fraction, 0.005 = 0.5 points).
MAX_MAP_LOSS = 0.005
# The float ONNX Inv-Id must reproduce the validation mAP it was picked with, or the split is not the same.
SPLIT_CHECK_TOLERANCE = 0.01
INT8_FILES = {"inv_id": "inv_id.int8.onnx"}


def fold_half_casts(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose float16 initialisers behind a Cast to float32 (how export stores weights) are
    float32 initialisers under the Cast's output name: the quantiser only quantises initialisers, and the model
    identity is then defined by the numbers the network computes with, not by how the file stores them."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    casts = {
        node.output[0]: node.input[0] for node in graph.node
        if node.op_type == "Cast" and node.input[0] in initializers
        and initializers[node.input[0]].data_type == onnx.TensorProto.FLOAT16
        and onnx.helper.get_attribute_value(node.attribute[0]) == onnx.TensorProto.FLOAT
    }
    if not casts:
        return folded
    nodes = [node for node in graph.node if not (node.op_type == "Cast" and node.output[0] in casts)]
    sources = set(casts.values())
    kept = [tensor for tensor in graph.initializer if tensor.name not in sources]
    kept += [numpy_helper.from_array(numpy_helper.to_array(initializers[source]).astype(np.float32), name)
             for name, source in casts.items()]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return folded


def model_id(model: onnx.ModelProto | str | Path) -> str:
    """The identity of a float network's code space: SHA-256 over its initialisers (name, dtype, shape, values),
    float16 storage casts folded. Re-saving the file or storing weights differently keeps it; any weight
    change moves it."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    digest = hashlib.sha256()
    for tensor in sorted(fold_half_casts(model).graph.initializer, key=lambda t: t.name):
        values = np.ascontiguousarray(numpy_helper.to_array(tensor))
        digest.update(f"{tensor.name}\0{values.dtype.str}\0{values.shape}\0".encode())
        digest.update(values.tobytes())
    return "sha256:" + digest.hexdigest()


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol over an array of images (one input)."""

    def __init__(self, input_name: str, images: np.ndarray):
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {input_name: np.ascontiguousarray(images[start:start + CALIBRATION_BATCH], np.float32)}
            for start in range(0, len(images), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_network(float_path: Path, out_path: Path, calibration: np.ndarray, *, identity: str,
                     ranges: str = "percentile") -> Path:
    """Write the INT8 (QDQ) variant of a one-input float network, calibrated on `calibration` (N, 3, H, W) in
    [0, 1], and stamp it with the float model's `identity` so a server can tell a stale variant from a fresh one.
    `ranges` "minmax" is for timing untrained networks (bench/trunk_throughput.py), whose near-constant
    activations the percentile histogram cannot bin; it costs the same to run.
    Runs in a fresh process: ONNX Runtime's quantiser opens sessions with their own thread pools, which it refuses
    in a process whose sessions already share the global pool (genreid.service.encoders.open_session)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_quantize_here, float_path, out_path, calibration, identity, ranges).result()
    return out_path


def _quantize_here(float_path: Path, out_path: Path, calibration: np.ndarray, identity: str, ranges: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax}
    model = fold_half_casts(onnx.load(str(float_path)))
    with tempfile.TemporaryDirectory() as scratch:
        folded, prepared = Path(scratch) / "folded.onnx", Path(scratch) / "prepared.onnx"
        onnx.save(model, str(folded))
        # ONNX shape inference (ONNX Runtime's symbolic one gives up on Resize) and graph optimisation (batch
        # norms folded into convolutions) before calibration.
        quant_pre_process(str(folded), str(prepared), skip_symbolic_shape=True)
        # The quantiser logs each per-channel fallback (rank-1 weights) on the root logger: quiet it meanwhile.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_static(
                str(prepared), str(out_path), _Batches(model.graph.input[0].name, calibration),
                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                # Activation ranges at the 99.999th percentile, not the extremes: on the 128x64 Inv-Id min-max
                # ranges lost 0.55 validation mAP points, these 0.14 (docs/experiments/int8.md).
                weight_type=QuantType.QInt8, calibrate_method=methods[ranges],
                reduce_range=True,
            )
        finally:
            root.setLevel(level)
    quantized = onnx.load(str(out_path))
    onnx.helper.set_model_props(quantized, {MODEL_ID_KEY: identity})
    onnx.save(quantized, str(out_path))


class _Served(torch.nn.Module):
    """`Encoders.identity` as a torch module, so the training pipeline's own validation (validate_inv_id) scores
    the ONNX files exactly as the service runs them."""

    def __init__(self, encoders: Encoders):
        super().__init__()
        self.encoders = encoders

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.encoders.identity(images.cpu().numpy()))


def validate_served(models_dir: Path, metadata: ModelMetadata, ctx: StageContext, precision: str) -> dict[str, float]:
    """Validation metrics of the exported Inv-Id at one precision ("float" or "int8"), on the CPU."""
    _, val = ctx.inv_id_splits
    served = _Served(Encoders(models_dir, device="cpu", precision=precision, metadata=metadata))
    return validate_inv_id(served, val, torch.device("cpu"), ctx.preset.split_seed)


def quantize_inv_id(ctx: StageContext, models_dir: Path, metadata: ModelMetadata) -> ModelMetadata:
    """Give an export its identity and its INT8 Inv-Id, from the float ONNX files alone: calibrate on training crops
    decoded at Inv-Id's input size (as served), score float and INT8 on the validation identities, and let CPUs
    serve INT8 only if it keeps the validation mAP within MAX_MAP_LOSS. Returns the metadata with those sections;
    saving it is export's (training/export.py)."""
    identity = model_id(models_dir / MODEL_FILES["inv_id"])
    train, _ = ctx.inv_id_splits
    count = min(CALIBRATION_CROPS, len(train))
    count -= count % min(CALIBRATION_BATCH, count)  # batches of one size: the percentile calibrator stacks them
    picked = np.random.default_rng(ctx.preset.split_seed).choice(len(train), count, replace=False)
    quantize_network(models_dir / MODEL_FILES["inv_id"], models_dir / INT8_FILES["inv_id"],
                     train.floats(np.sort(picked)), identity=identity)
    metadata = replace(metadata, model_id=identity, int8_files=dict(INT8_FILES), cpu_precision={})
    validation = {"float32": validate_served(models_dir, metadata, ctx, "float"),
                  "int8": validate_served(models_dir, metadata, ctx, "int8")}
    picked_with = metadata.validation.get("mAP")
    if picked_with is not None and abs(validation["float32"]["mAP"] - picked_with) > SPLIT_CHECK_TOLERANCE:
        raise ValueError(f"the float Inv-Id scores validation mAP {validation['float32']['mAP']:.4f} here but "
                         f"{picked_with:.4f} when it was picked: not the same validation identities (data or preset)")
    loss = validation["float32"]["mAP"] - validation["int8"]["mAP"]
    cpu = "int8" if loss <= MAX_MAP_LOSS else "float32"
    report = Quantization(calibration_crops=len(picked), calibration=CALIBRATION,
                          max_validation_mAP_loss=MAX_MAP_LOSS, validation=validation)
    metadata = replace(metadata, cpu_precision={"inv_id": cpu}, quantization={"inv_id": report})
    log.info("model %s: INT8 Inv-Id validation mAP %.4f (float %.4f); CPUs serve %s", identity,
             validation["int8"]["mAP"], validation["float32"]["mAP"], cpu)
    return metadata
