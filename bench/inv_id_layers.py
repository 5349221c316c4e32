"""Which layer of an exported Inv-Id retrieves best: the identity code, or one of the wider layers before it?

If a wider layer ranked people better than the 32-d code, the code's size would be what limits retrieval and a
larger code (a new generator) the lever to pull. The float32 Inv-Id's ONNX graph gets the outputs of its head's
earlier layers added, and each layer is scored like the code (compared by direction, standard protocol) on the
model's validation identities and on the test split. Needs torch (the `train` extra) for the validation split.

    python bench/inv_id_layers.py --data-root ../shared/data/market1501-subset
    python bench/inv_id_layers.py --data-root ../shared/data/market1501-subset --quick   # 100 crops a split
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _common import REPO_ROOT, accuracy_bench, accuracy_cells

from genreid.service.core.evaluation import Evaluator
from genreid.training.data.cache import ImageSet
from genreid.training.runs import models_context
from genreid.training.validation import validation_evaluator

# Graph tensor -> what it is, in the order the head computes them (torch.onnx's names for the `cpu` preset's
# 4-stripe head: average pool + flatten, Linear 512, SiLU, Linear 128, SiLU, Linear code_dim).
LAYERS = {"view": "4 stripes (trunk output)", "silu_8": "dense 512", "silu_9": "dense 128", "code": "identity code"}


def layer_session(path: Path) -> ort.InferenceSession:
    model = onnx.load(path)
    missing = set(LAYERS) - {name for node in model.graph.node for name in node.output}
    if missing:
        raise SystemExit(f"{path}: no tensors {sorted(missing)}; this script reads the 4-stripe head's graph")
    for name in LAYERS:
        if name not in {output.name for output in model.graph.output}:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


class LayerFeatures:
    """Every layer's features of a split, computed once per split."""

    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self.done: dict[int, list[np.ndarray]] = {}

    def __call__(self, split: ImageSet, layer: str) -> np.ndarray:
        if id(split) not in self.done:
            batches = [self.session.run(list(LAYERS), {"image": split.floats(slice(i, i + 256))})
                       for i in range(0, len(split), 256)]
            self.done[id(split)] = [np.concatenate([b[j] for b in batches]) for j in range(len(LAYERS))]
        return self.done[id(split)][list(LAYERS).index(layer)]


def run(args: argparse.Namespace) -> list[dict]:
    ctx = models_context(args.models, args.data_root, args.cache_dir)
    _, val = ctx.inv_id_splits
    query, gallery = (ctx.split(split, ctx.preset.inv_id_resolution) for split in ("query", "gallery"))
    if args.quick:
        val, query, gallery = (s.subset(np.arange(min(100, len(s)))) for s in (val, query, gallery))
    features = LayerFeatures(layer_session(args.models / "inv_id.onnx"))
    rows = []
    for layer, label in LAYERS.items():
        val_metrics = validation_evaluator(val, ctx.preset.split_seed, lambda s, layer=layer: features(s, layer))
        test_metrics = Evaluator(lambda s, layer=layer: features(s, layer), query, gallery)
        rows.append({"layer": label, "dim": int(features(query, layer).shape[1]),
                     **accuracy_cells(val_metrics.metrics(), test_metrics.metrics())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="the Market-1501 folder the model trained on")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models", help="an exported model directory")
    accuracy_bench(parser, run, name="inv_id_layers", key="layers", label_columns=["layer", "dim"],
                   title="Retrieval by layer (by direction, standard protocol; %)")


if __name__ == "__main__":
    main()
