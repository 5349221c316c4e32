"""models/MODEL_CARD.md and its JSON twin: what the shipped model is, how it was trained, how well it does.

Test metrics are the standard Market-1501 protocol on the data folder's query/ and bounding_box_test/, for
every Inv-Id variant the run trained (the shipped one through ONNX Runtime, exactly as served, in float32 and
INT8). Settings were picked on identities held out of bounding_box_train, never on these. Without the run
directory, the card is rebuilt from the model directory, the data and the previous card's training facts.
"""

from __future__ import annotations

import json
import os
import platform
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.encoders import Encoders, ModelMetadata
from service.evaluation import Evaluator
from service.reranking import RerankParams
from training.data.cache import ImageSet, load_split
from training.stages.context import StageContext
from training.stages.inverters import embed, finished_inv_ids

CARD_FILE, CARD_JSON = "MODEL_CARD.md", "MODEL_CARD.json"
SUBSET = "market1501-subset"
SUBSET_NOTE = ("The subset's 150 test identities were carved from Market-1501's training split: this is not the "
               "official query/test split, so these numbers are not comparable to published Market-1501 results.")
# Measured on the same subset split and protocol (../shared/docs/METHOD.md).
REFERENCES = {
    "OSNet-x0.25 from scratch, 64x32, 35 epochs (13 CPU-min)": {"mAP": 0.501, "rank1": 0.650},
    "OSNet-x0.25 from scratch, 64x32, 100 epochs (37 CPU-min)": {"mAP": 0.565, "rank1": 0.699},
}


def hardware() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def split_at(ctx: StageContext, split: str, size: tuple[int, int]) -> ImageSet:
    """One of the data folder's test splits at `size` (H, W), decoded through the shared cache."""
    return load_split(ctx.data_root, split, size, ctx.cache_dir)


def served_evaluator(encoders: Encoders, query: ImageSet, gallery: ImageSet) -> Evaluator[ImageSet]:
    """The test split embedded by the exported Inv-Id, through ONNX Runtime exactly as the service runs it."""
    return Evaluator(lambda split: encoders.identity(split.floats()), query, gallery)


def rerank_facts(metadata: ModelMetadata, served: Evaluator[ImageSet]) -> dict[str, Any] | None:
    """The model's re-ranking parameters, their validation record, and test metrics as a CPU serves them: by
    code distance, re-ranked per query (/query?rerank=true) and with all queries together (a reference)."""
    params = RerankParams.from_model(metadata)
    if params is None:
        return None
    return {**metadata.extra["rerank"], "test": {
        "code_distance": served.metrics().as_dict(), "reranked": served.metrics(rerank=params).as_dict(),
        "reranked_all_queries": served.metrics(rerank=params, all_queries=True).as_dict()}}


def reconstruction_on_test(encoders: Encoders, seen: ImageSet, drawn: ImageSet, count: int = 256) -> dict[str, float]:
    """L1 and PSNR between real query crops and their regeneration from (Inv-Id, Inv-Noise), via ONNX: the same
    crops at Inv-Id's input size (`seen`) and at the generator's (`drawn`: Inv-Noise's input, and what is compared)."""
    images = drawn.floats(slice(0, count))
    rebuilt = encoders.render(encoders.identity(seen.floats(slice(0, count))), encoders.noise(images))
    mse = float(((rebuilt - images) ** 2).mean())
    return {"l1": float(np.abs(rebuilt - images).mean()), "psnr": 10.0 * np.log10(1.0 / max(mse, 1e-12)),
            "crops": len(images)}


# What only the training run knows; a card rebuilt without the run copies them from the previous card.
RUN_FACTS = ("preset", "training_wall_seconds", "hardware", "validation", "inv_id_steps", "test")


def run_facts(ctx: StageContext, shipped: str, query: ImageSet, gallery: ImageSet) -> dict[str, Any]:
    """The run's own record: preset, timings, every finished Inv-Id's validation, and test metrics of the Inv-Ids
    that were not shipped (from their torch checkpoints; the shipped one is measured through ONNX)."""
    finished = finished_inv_ids(ctx)
    test = {}
    for mode, saved in finished.items():
        if mode != shipped:
            model = ctx.new_inv_id().to(ctx.runtime.device)
            model.load_state_dict(saved["model"])
            evaluator = Evaluator(partial(embed, model, device=ctx.runtime.device), query, gallery)
            test[mode] = evaluator.metrics().as_dict()
    return {
        "preset": ctx.preset.as_dict(),
        "training_wall_seconds": json.loads(ctx.path("timings.json").read_text()),
        "hardware": hardware(),
        "validation": {mode: saved["validation"] for mode, saved in finished.items()},
        "inv_id_steps": {mode: saved.get("steps", ctx.preset.inv_id_steps) for mode, saved in finished.items()},
        "test": test,
    }


def previous_card_facts(models_dir: Path) -> dict[str, Any]:
    """RUN_FACTS as the card already in `models_dir` recorded them, for a model whose run is gone."""
    path = models_dir / CARD_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no previous card to take the training facts from; pass the run directory")
    previous = json.loads(path.read_text())
    return {key: previous[key] for key in RUN_FACTS}


def build_card(ctx: StageContext, models_dir: Path, *, from_run: bool) -> dict[str, Any]:
    """Training facts (from the run, or from the previous card when `from_run` is false) and everything that the
    model directory and the data can measure: test metrics and reconstructions through ONNX Runtime in float32,
    and float32 against INT8 for the quantised Inv-Id."""
    metadata = ModelMetadata.load(models_dir)
    quantization = metadata.extra.get("quantization", {}).get("inv_id")
    if quantization is None:
        raise ValueError(f"{models_dir}: no INT8 Inv-Id measured yet; run `genreid export --to {models_dir}` first")
    shipped = metadata.extra["inv_id_mode"]
    # Inv-Id's test crops decoded at its own input size, as the service reads an upload.
    query, gallery = (split_at(ctx, split, metadata.identity_resolution) for split in ("query", "gallery"))
    drawn = split_at(ctx, "query", metadata.resolution)
    facts = run_facts(ctx, shipped, query, gallery) if from_run else previous_card_facts(models_dir)
    floats = Encoders(models_dir, device="cpu", precision="float")
    int8 = Encoders(models_dir, device="cpu", precision="int8")
    served = {"float32": served_evaluator(floats, query, gallery), "int8": served_evaluator(int8, query, gallery)}
    test = {kind: evaluator.metrics().as_dict() for kind, evaluator in served.items()}
    cpu_kind = "int8" if metadata.precisions("auto", cuda=False)["inv_id"] == "int8" else "float32"
    train, val = ctx.splits
    return {
        "data": {
            "root": ctx.data_root.name,
            "train_identities": int(len(np.unique(train.person_ids))), "train_crops": len(train),
            "validation_identities": int(len(np.unique(val.person_ids))), "validation_crops": len(val),
            "note": SUBSET_NOTE if ctx.data_root.name == SUBSET else "",
        },
        **facts,
        "parameters": metadata.extra["parameters"],
        "shipped_inv_id": shipped,
        "test": {mode: test["float32"] if mode == shipped else facts["test"][mode] for mode in facts["validation"]},
        "match_threshold": metadata.match_threshold,
        "reconstruction": {"validation": metadata.extra["reconstruction"],
                           "test_queries": reconstruction_on_test(floats, query, drawn),
                           "test_queries_int8_inv_id": reconstruction_on_test(int8, query, drawn)},
        "code_stats": metadata.extra["code_stats"],
        "rerank": rerank_facts(metadata, served[cpu_kind]),
        "references": REFERENCES if ctx.data_root.name == SUBSET else {},
        "input_sizes": {"inv_id": list(metadata.identity_resolution), "generator": list(metadata.resolution)},
        "facts_from_run": from_run,
        "model_id": metadata.model_id,
        "precision": {
            "cpu": metadata.precisions("auto", cuda=False), "cuda": metadata.precisions("auto", cuda=True),
            "max_validation_mAP_loss": quantization["max_validation_mAP_loss"],
            "calibration_crops": quantization["calibration_crops"],
            "inv_id": {"validation": quantization["validation"], "test": test},
        },
    }


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def render_inputs(sizes: dict[str, list[int]]) -> str:
    """The networks' input size, or Inv-Id's and the generator's where they differ."""
    identity, generator = ("x".join(map(str, sizes[name])) for name in ("inv_id", "generator"))
    return generator if identity == generator else f"{identity} (Inv-Id), {generator} (Inv-Noise, generator)"


def render_rerank(rerank: dict[str, Any] | None) -> str:
    """The re-ranking section (empty for a model without parameters), ending in a blank line."""
    if rerank is None:
        return ""
    names = {"code_distance": "code distance", "reranked": "re-ranked per query (`/query?rerank=true`)",
             "reranked_all_queries": "re-ranked, all queries together (reference)"}
    rows = "\n".join(
        f"| {split} | {name} | {_pct(m['mAP'])} | {_pct(m['rank1'])} | {_pct(m['rank5'])} | {_pct(m['mINP'])} |"
        for split in ("validation", "test") for key, name in names.items() for m in (rerank[split][key],))
    return f"""## Re-ranking
k-reciprocal re-ranking (Zhong et al. 2017) over each query's neighbourhood, with k1 {rerank['k1']}, k2
{rerank['k2']}, lambda {rerank['lambda']} and K {rerank['candidates']} nearest re-ranked, chosen on the validation
identities ({rerank['chosen_on']}); Inv-Id in {rerank['precision']}, as a CPU serves it.

| split | ranking | mAP | rank-1 | rank-5 | mINP |
| --- | --- | --- | --- | --- | --- |
{rows}

"""


def render_markdown(card: dict[str, Any]) -> str:
    data, test = card["data"], card["test"]
    rows = "\n".join(
        f"| Inv-Id `{mode}`{' (shipped)' if mode == card['shipped_inv_id'] else ''}, "
        f"{card['inv_id_steps'][mode]} steps x {card['preset']['inv_id_batch']} | {_pct(m['mAP'])} | "
        f"{_pct(m['rank1'])} | {_pct(m['rank5'])} | {_pct(m['rank10'])} | {_pct(m['mINP'])} |"
        for mode, m in test.items()
    )
    refs = "\n".join(f"| {name} | {_pct(m['mAP'])} | {_pct(m['rank1'])} | | | |"
                     for name, m in card["references"].items())
    times = "\n".join(f"| {stage} | {seconds / 60:.1f} |" for stage, seconds in card["training_wall_seconds"].items())
    params = "\n".join(f"| {name} | {count / 1e6:.2f} M |" for name, count in card["parameters"].items())
    recon = card["reconstruction"]
    precision = card["precision"]
    parity = precision["inv_id"]
    precision_rows = "\n".join(
        f"| {kind} | {_pct(parity['validation'][kind]['mAP'])} | {_pct(parity['validation'][kind]['rank1'])} | "
        f"{_pct(parity['test'][kind]['mAP'])} | {_pct(parity['test'][kind]['rank1'])} |" for kind in ("float32", "int8")
    )
    change = 100 * (parity["validation"]["int8"]["mAP"] - parity["validation"]["float32"]["mAP"])
    verdict = "so CPUs serve the INT8 Inv-Id" if precision["cpu"]["inv_id"] == "int8" else \
        "more than allowed, so CPUs keep the float32 Inv-Id"
    source = ("Generated by `genreid card` from the training run; numbers below are measured, not copied." if
              card["facts_from_run"] else
              "Generated by `genreid card` from the model directory and the data, the training run being gone: test "
              "metrics,\nreconstructions and precisions are measured; training facts (preset, wall time, validation, "
              "the other\nInv-Id variants' test rows) are kept from the card written with the run.")
    hw = card["hardware"]
    device = f"GPU {hw['gpu']}" if hw["gpu"] else f"{hw['cpu']} ({hw['cores']} cores)"
    preset = card["preset"]
    widths = tuple(preset["widths"])  # a list when the preset was read back from JSON
    inputs = render_inputs(card["input_sizes"])
    return f"""# genreid model card

{source}

## What it is
A conditional diffusion model (U-Net widths {widths}, {preset['blocks']} residual blocks per level) learned
one {preset['code_dim']}-d identity code per training person as the condition it needs to draw that person from
noise; Inv-Id maps a crop to its code (what retrieval compares), Inv-Noise to the generator noise (pose,
background, light). Input {inputs} RGB. Preset `{preset['name']}`.

## Data
- Trained on `{data['root']}/bounding_box_train`: {data['train_identities']} identities, {data['train_crops']} crops.
- Validation: {data['validation_identities']} further identities ({data['validation_crops']} crops) held out of
  bounding_box_train, used to pick the Inv-Id variant and calibrate the match threshold.
- Test: the subset's query/ and bounding_box_test/. {data['note']}

## Retrieval on the subset's test split (standard protocol, %)
Gallery ranked by the distance between unit-length identity codes, as the service ranks it. Same-person
same-camera gallery crops are dropped per query; queries without a true match are skipped.

| model | mAP | rank-1 | rank-5 | rank-10 | mINP |
| --- | --- | --- | --- | --- | --- |
{rows}
{refs}

The paper reports 73 mAP on the official split with a lenient evaluation (same-camera matches kept).
`paper` = Inv-Id trained on generated images only, as in the paper; `hybrid` = also on real training crops
targeting their identity's learned code ({_pct(preset['real_fraction'])}% of each batch, {preset['real_identities']}
identities at a time, triplet weight {preset['triplet_weight']}, label smoothing {preset['label_smoothing']}, weight
decay {preset['inv_id_weight_decay']}; Inv-Id head over {preset['inv_id_stripes'] or 'no'} stripes). The recipe and
how it was chosen on the validation identities: docs/METHOD.md in the repository.

## Precision: float32 and INT8 Inv-Id
Model id `{card['model_id']}`
(a hash of the float32 Inv-Id's weights): the INT8 Inv-Id computes codes in the same code space, so CPU and GPU
replicas can serve one gallery. It is ONNX Runtime static quantisation (QDQ, per-channel int8 weights, uint8
activations calibrated on {precision['calibration_crops']} training crops). It changes validation mAP by
{change:+.1f} points (at most -{_pct(precision['max_validation_mAP_loss'])} allowed), {verdict}; CUDA hosts serve
float32. The service picks the precision per device unless told otherwise (`Encoders(precision=...)`; `genreid evaluate
--precision float|int8` reproduces either row).

| Inv-Id | validation mAP | validation rank-1 | test mAP | test rank-1 |
| --- | --- | --- | --- | --- |
{precision_rows}

The 1% false-match distance on validation is {parity['validation']['int8']['threshold_fmr1']:.4f} with INT8 codes
and {parity['validation']['float32']['threshold_fmr1']:.4f} with float32 ones; the match threshold below is float32's.
Reconstruction of the test queries with the INT8 Inv-Id (Inv-Noise and the denoiser in float32): PSNR
{recon['test_queries_int8_inv_id']['psnr']:.1f} dB (float32: {recon['test_queries']['psnr']:.1f} dB).

## Match threshold
Distance {card['match_threshold']:.4f} between unit-length codes: 1% of different-person pairs of the validation
identities fall under it (true-match rate there:
{_pct(card['validation'][card['shipped_inv_id']]['tpr_at_fmr1'])}%). `/query` marks matches under it
`same_person: true`.

{render_rerank(card["rerank"])}## Reconstruction (regenerated from Inv-Id + Inv-Noise, pixel values in [0, 1])
- Real validation crops: L1 {recon['validation']['l1']:.3f}, PSNR {recon['validation']['psnr']:.1f} dB
- Real test query crops ({recon['test_queries']['crops']}): L1 {recon['test_queries']['l1']:.3f},
  PSNR {recon['test_queries']['psnr']:.1f} dB

## Identity codes
Nearest-neighbour distance mean {card['code_stats']['nn_mean']:.3f} (min {card['code_stats']['nn_min']:.3f}),
mean pairwise {card['code_stats']['pair_mean']:.3f}, max {card['code_stats']['pair_max']:.3f}
(the paper: closest 0.14, mean about 0.6, farthest 0.99).

## Networks
| network | parameters |
| --- | --- |
{params}

## Training wall time
On {device}, torch {hw['torch']}, bf16 autocast + channels_last. As the run recorded it (timings.json): a stage that
shared the machine with other work took longer than it would alone.

| stage | minutes |
| --- | --- |
{times}

## Reproduce
```
genreid train --data ../shared/data/market1501-subset --preset {preset['name']} --out runs/{preset['name']}
genreid export runs/{preset['name']} --to models/
genreid card runs/{preset['name']} --models models/
genreid evaluate --data ../shared/data/market1501-subset --models models/
```
Without the run directory (its checkpoints gone), the identity, the INT8 Inv-Id and this card are rebuilt from
`models/` and the data: `genreid export --to models/ --data ../shared/data/market1501-subset`, then
`genreid card --models models/ --data ../shared/data/market1501-subset`.

## Limits
Low resolution: {inputs}; the subset is small (401 training identities); trained on CPU for hours, not days.
Market-1501 is for research use only.
"""


def write_card(ctx: StageContext, models_dir: Path, *, from_run: bool = True) -> Path:
    card = build_card(ctx, models_dir, from_run=from_run)
    (models_dir / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    path = models_dir / CARD_FILE
    path.write_text(render_markdown(card))
    return path
