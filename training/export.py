"""Export a finished run to the service's model directory: three self-contained ONNX files with a dynamic
batch dimension, the generator's identity-code table, a parity check of ONNX Runtime against torch, the model
identity and INT8 Inv-Id (training/quantize.py) and the re-ranking parameters (training/rerank.py); model.json
(service/core/model_json.py) is assembled from all of them and saved once, here and nowhere else (also when a
command re-chooses one section of an existing export: re-ranking, per-query false matches)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from genreid.service.core.false_matches import measure_market
from genreid.service.core.model_json import MODEL_FILES, FalseMatches, IdentityCodes, ModelMetadata, input_sizes
from genreid.service.encoders import Encoders, open_session
from genreid.training.networks.trunks import multiply_adds
from genreid.training.networks.unet import UNet
from genreid.training.quantize import quantize_inv_id
from genreid.training.rerank import tune_rerank
from genreid.training.stages.context import StageContext
from genreid.training.stages.from_export import CODES_FILE
from genreid.training.stages.inv_noise import reconstruction_error
from genreid.training.validation import best_inv_id

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4


class Denoiser(nn.Module):
    """The ONNX-facing denoiser: (noisy, noise_variance, code) -> eps, in float32."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet

    def forward(self, noisy: torch.Tensor, noise_variance: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy, noise_variance, code)


def _quiet_exporter_logs() -> None:
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)


# Node metadata the exporter fills with the Python source lines (absolute paths of the exporting machine) that
# made each node: nothing a server reads, and no machine's paths belong in shipped files.
SOURCE_TRACE = "pkg.torch.onnx.stack_trace"


def drop_source_traces(model: onnx.ModelProto) -> onnx.ModelProto:
    for graph in (model.graph, *model.functions):
        for node in graph.node:
            kept = [prop for prop in node.metadata_props if prop.key != SOURCE_TRACE]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
    return model


def _export(module: nn.Module, example: tuple[torch.Tensor, ...], names: list[str], output: str, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        module.eval().float().cpu(), example, input_names=names, output_names=[output],
        dynamic_shapes=tuple({0: batch} for _ in names), dynamo=True, verbose=False,
    )
    onnx.save(drop_source_traces(program.model_proto), str(path))


def round_weights_to_half(module: nn.Module) -> nn.Module:
    """Round every parameter to the nearest float16 value (computation stays float32), so the weights can be
    stored in half precision losslessly and the exported files fit the 60 MB budget of models/."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(parameter.half().float())
    return module


def store_weights_as_half(path: Path, min_size: int = 1024) -> None:
    """Rewrite float32 initializers that float16 holds exactly as float16 + a Cast node: half the bytes, the
    same numbers (ONNX Runtime folds the casts when it loads the model)."""
    model = onnx.load(str(path))
    graph = model.graph
    casts, kept = [], []
    for initializer in graph.initializer:
        values = numpy_helper.to_array(initializer)
        half = values.astype(np.float16)
        if values.dtype == np.float32 and values.size >= min_size and np.array_equal(half.astype(np.float32), values):
            kept.append(numpy_helper.from_array(half, initializer.name + "_fp16"))
            casts.append(helper.make_node("Cast", [initializer.name + "_fp16"], [initializer.name],
                                          to=onnx.TensorProto.FLOAT))
        else:
            kept.append(initializer)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _examples(batch: int, resolution: tuple[int, int], code_dim: int, seed: int) -> dict[str, np.ndarray]:
    """Random inputs by ONNX input name, images at `resolution` (H, W)."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((batch, 3, *resolution), dtype=np.float32),
        "noisy": rng.standard_normal((batch, 3, *resolution), dtype=np.float32),
        "noise_variance": rng.random((batch, 1), dtype=np.float32),
        "code": (rng.standard_normal((batch, code_dim)) * 0.3).astype(np.float32),
    }


def parity(modules: dict[str, nn.Module], models_dir: Path, sizes: dict[str, tuple[int, int]], code_dim: int,
           batches: tuple[int, ...] = (1, 7)) -> dict[str, float]:
    """Max |ONNX Runtime - torch| per network over the given batch sizes, each fed images of its own input size
    (`sizes`: ModelMetadata.input_sizes)."""
    worst: dict[str, float] = {}
    for name, module in modules.items():
        session = open_session(models_dir / MODEL_FILES[name], ["CPUExecutionProvider"])
        for batch in batches:
            examples = _examples(batch, sizes[name], code_dim, seed=batch)
            feeds = {inp.name: examples[inp.name] for inp in session.get_inputs()}
            with torch.no_grad():
                expected = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
            got = session.run(None, feeds)[0]
            worst[name] = max(worst.get(name, 0.0), float(np.abs(got - expected).max()))
    return worst


def finish_export(ctx: StageContext, models_dir: Path, metadata: ModelMetadata) -> ModelMetadata:
    """Quantise Inv-Id and tune re-ranking on the float files in `models_dir`, then save model.json with every
    section: the one place it is written. Also what `genreid export --to MODELS` does for a directory whose run is
    gone (its float files and model.json kept)."""
    metadata = quantize_inv_id(ctx, models_dir, metadata)
    # Re-ranking is tuned on the codes a CPU serves, so after the INT8 Inv-Id is decided; per-query false matches
    # measured on earlier codes no longer hold (`genreid calibrate-false-matches` measures them again).
    metadata = replace(metadata, rerank=tune_rerank(ctx, models_dir, metadata), false_matches=None)
    metadata.save(models_dir)
    return metadata


def retune_rerank(ctx: StageContext, models_dir: Path) -> dict[str, Any]:
    """`genreid tune-rerank`: the re-ranking section of an existing export chosen again, the rest unchanged."""
    metadata = ModelMetadata.load(models_dir)
    record = tune_rerank(ctx, models_dir, metadata)
    replace(metadata, rerank=record).save(models_dir)
    return record


def calibrate_false_matches(data_root: Path, models_dir: Path, *, draws: int, seed: int) -> FalseMatches:
    """`genreid calibrate-false-matches`: how often a never-enrolled person's best match passes the match threshold
    per gallery size, measured on the folder's query/gallery split with the codes a CPU serves, recorded as
    model.json's `false_matches` (the rest unchanged), so /health can say what the threshold means per query."""
    encoders = Encoders(models_dir, device="cpu")
    measurement = measure_market(data_root, encoders, draws=draws, seed=seed)
    record = measurement.record(data_name=Path(data_root).resolve().name, precision=encoders.precision["inv_id"])
    replace(encoders.metadata, false_matches=record).save(models_dir)
    return record


def export_run(ctx: StageContext, models_dir: Path) -> ModelMetadata:
    """Write the ONNX files and model.json for the run in `ctx`; returns the metadata written."""
    preset = ctx.preset
    _quiet_exporter_logs()
    models_dir.mkdir(parents=True, exist_ok=True)
    unet, generator = ctx.generator()
    inv_id_saved = best_inv_id(ctx)
    inv_id = ctx.new_inv_id()
    inv_id.load_state_dict(inv_id_saved["model"])
    inv_noise = ctx.new_inv_noise()
    inv_noise.load_state_dict(ctx.load("inv_noise")["model"])
    modules = {"inv_id": inv_id.cpu().eval(), "inv_noise": inv_noise.cpu().eval(),
               "denoiser": Denoiser(unet.cpu().float()).eval()}
    for module in modules.values():
        round_weights_to_half(module)
    resolution, identity_resolution = tuple(preset.resolution), tuple(preset.inv_id_resolution)
    sizes = input_sizes(resolution, identity_resolution)
    example = {name: {k: torch.from_numpy(v) for k, v in _examples(2, size, preset.code_dim, 0).items()}
               for name, size in sizes.items()}
    _export(modules["inv_id"], (example["inv_id"]["image"],), ["image"], "code", models_dir / MODEL_FILES["inv_id"])
    _export(modules["inv_noise"], (example["inv_noise"]["image"],), ["image"], "noise",
            models_dir / MODEL_FILES["inv_noise"])
    denoiser = example["denoiser"]
    _export(modules["denoiser"], (denoiser["noisy"], denoiser["noise_variance"], denoiser["code"]),
            ["noisy", "noise_variance", "code"], "eps", models_dir / MODEL_FILES["denoiser"])
    for filename in MODEL_FILES.values():
        store_weights_as_half(models_dir / filename)
    differences = parity(modules, models_dir, sizes, preset.code_dim)
    if max(differences.values()) > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime disagrees with torch beyond {PARITY_TOLERANCE}: {differences}")
    _, val = ctx.splits
    reconstruction = reconstruction_error(ctx, modules["inv_id"], modules["inv_noise"], val.images[:256])
    metadata = ModelMetadata(
        resolution=resolution,
        inv_id_resolution=identity_resolution,
        code_dim=preset.code_dim,
        mean=tuple(float(v) for v in generator["mean"]),
        std=tuple(float(v) for v in generator["std"]),
        schedule=ctx.diffusion.schedule,
        steps=preset.sample_steps,
        match_threshold=inv_id_saved["validation"]["threshold_fmr1"],
        preset=preset.as_dict(),
        inv_id_mode=inv_id_saved["mode"],
        validation=inv_id_saved["validation"],
        reconstruction=reconstruction,
        code_stats=generator["code_stats"],
        identities=len(generator["person_ids"]),
        identity_codes=IdentityCodes(file=CODES_FILE, recovered=bool(generator.get("codes_recovered", False))),
        parameters={name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()},
        mult_adds={name: multiply_adds(modules[name], size) for name, size in sizes.items() if name != "denoiser"},
        onnx_parity_max_abs=differences,
    )
    # The code table is no network the service runs, but a run started from this export needs it (its denoiser is
    # conditioned on these codes): kept, it need not be recovered by inversion.
    np.save(models_dir / CODES_FILE, generator["codes"].float().cpu().numpy())
    log.info("exported %s to %s (parity %s)", ctx.run_dir, models_dir, differences)
    return finish_export(ctx, models_dir, metadata)
