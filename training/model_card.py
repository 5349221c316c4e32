"""models/MODEL_CARD.md and its JSON twin: what the shipped model is, how it was trained, how well it does.

Test metrics are the standard Market-1501 protocol on the data folder's query/ and bounding_box_test/, for
every Inv-Id variant the run trained (the shipped one through ONNX Runtime, exactly as served, in float32 and
INT8); the shipped one is also scored under the paper's lenient protocol, the only fair comparison with its
73 mAP. Settings were picked on identities held out of bounding_box_train, never on these. Without the run
directory, the card is rebuilt from the model directory, the data and the previous card's training facts.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from genreid.service.core.evaluation import Evaluator
from genreid.service.core.model_json import ModelMetadata
from genreid.service.core.reranking import RerankParams
from genreid.service.encoders import Encoders
from genreid.training.data.cache import ImageSet
from genreid.training.presets import get_preset
from genreid.training.run_files import MACHINES_FILE, TIMINGS_FILE, read_stage_record
from genreid.training.run_ledger import (
    RunRecord,
    Spread,
    generator_origin,
    inv_id_trunk_changes,
    read_ledger,
    summarise,
)
from genreid.training.runs import CARD_JSON, MEMBER_FIELDS, joined_members
from genreid.training.runtime import hardware, machine_name
from genreid.training.stages.context import StageContext
from genreid.training.validation import finished_inv_ids, inv_id_evaluator

CARD_FILE = "MODEL_CARD.md"
SUBSET = "market1501-subset"
SUBSET_NOTE = ("The subset's 150 test identities were carved from Market-1501's training split: this is not the "
               "official query/test split, so these numbers are not comparable to published Market-1501 results.")
# Measured on the same subset split and protocol (../shared/docs/METHOD.md).
REFERENCES = {
    "OSNet-x0.25 from scratch, 64x32, 35 epochs (13 CPU-min)": {"mAP": 0.501, "rank1": 0.650},
    "OSNet-x0.25 from scratch, 64x32, 100 epochs (37 CPU-min)": {"mAP": 0.565, "rank1": 0.699},
}


def served_evaluator(encoders: Encoders, query: ImageSet, gallery: ImageSet) -> Evaluator[ImageSet]:
    """The test split embedded by the exported Inv-Id, through ONNX Runtime exactly as the service runs it."""
    return Evaluator(lambda split: encoders.identity(split.floats()), query, gallery)


def rerank_facts(metadata: ModelMetadata, served: Evaluator[ImageSet]) -> dict[str, Any] | None:
    """The model's re-ranking parameters, their validation record, and test metrics as a CPU serves them: by
    code distance, re-ranked per query (what /query serves by default) and with all queries together (a
    reference)."""
    params = RerankParams.from_model(metadata)
    if params is None:
        return None
    return {**metadata.rerank, "test": {
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


# The activation ranges of INT8 files quantised before 2026-12-04, whose model.json and card do not name them.
MIN_MAX_CALIBRATION = "minimum and maximum"
# What only the training run knows; a card rebuilt without the run copies them from the previous card.
RUN_FACTS = ("preset", "training_wall_seconds", "training_machines", "generator_origin", "hardware", "validation",
             "inv_id_steps", "inv_id_members", "test")


def run_facts(ctx: StageContext, shipped: str, query: ImageSet, gallery: ImageSet) -> dict[str, Any]:
    """The run's own record: preset, timings, every finished Inv-Id's validation, and test metrics of the Inv-Ids
    that were not shipped (from their torch checkpoints; the shipped one is measured through ONNX)."""
    finished = finished_inv_ids(ctx)
    test = {mode: inv_id_evaluator(ctx, saved, query, gallery).metrics().as_dict()
            for mode, saved in finished.items() if mode != shipped}
    return {
        "preset": ctx.preset.as_dict(),
        "training_wall_seconds": json.loads(ctx.path(TIMINGS_FILE).read_text()),
        "training_machines": read_stage_record(ctx.path(MACHINES_FILE)),
        "generator_origin": generator_origin(ctx.load("generator")),
        "hardware": hardware(),
        "validation": {mode: saved["validation"] for mode, saved in finished.items()},
        "inv_id_steps": {mode: saved.get("steps", ctx.preset.inv_id_steps) for mode, saved in finished.items()},
        "inv_id_members": [{field: member[field] for field in MEMBER_FIELDS} for member in joined_members(ctx.run_dir)],
        "test": test,
    }


def previous_card_facts(models_dir: Path) -> dict[str, Any]:
    """RUN_FACTS as the card already in `models_dir` recorded them, for a model whose run is gone."""
    path = models_dir / CARD_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no previous card to take the training facts from; pass the run directory")
    previous = json.loads(path.read_text())
    return {key: previous[key] for key in RUN_FACTS if key in previous}  # cards before 2026-12-04 lack machines


def build_card(ctx: StageContext, models_dir: Path, *, from_run: bool) -> dict[str, Any]:
    """Training facts (from the run, or from the previous card when `from_run` is false) and everything that the
    model directory and the data can measure: test metrics and reconstructions through ONNX Runtime in float32,
    and float32 against INT8 for the quantised Inv-Id."""
    metadata = ModelMetadata.load(models_dir)
    quantization = metadata.quantization.get("inv_id")
    if quantization is None:
        raise ValueError(f"{models_dir}: no INT8 Inv-Id measured yet; run `genreid export --to {models_dir}` first")
    shipped = metadata.inv_id_mode
    # Inv-Id's test crops decoded at its own input size, as the service reads an upload.
    query, gallery = (ctx.split(split, metadata.identity_resolution) for split in ("query", "gallery"))
    drawn = ctx.split("query", metadata.resolution)
    facts = run_facts(ctx, shipped, query, gallery) if from_run else previous_card_facts(models_dir)
    floats = Encoders(models_dir, device="cpu", precision="float")
    int8 = Encoders(models_dir, device="cpu", precision="int8")
    served = {"float32": served_evaluator(floats, query, gallery), "int8": served_evaluator(int8, query, gallery)}
    test = {kind: evaluator.metrics().as_dict() for kind, evaluator in served.items()}
    lenient = {kind: evaluator.metrics(protocol="lenient").as_dict() for kind, evaluator in served.items()}
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
        "parameters": metadata.parameters,
        "mult_adds": metadata.mult_adds,
        "shipped_inv_id": shipped,
        "test": {mode: test["float32"] if mode == shipped else facts["test"][mode] for mode in facts["validation"]},
        "test_lenient_protocol": lenient,
        "match_threshold": metadata.match_threshold,
        "reconstruction": {"validation": metadata.reconstruction,
                           "test_queries": reconstruction_on_test(floats, query, drawn),
                           "test_queries_int8_inv_id": reconstruction_on_test(int8, query, drawn)},
        "code_stats": metadata.code_stats,
        "rerank": rerank_facts(metadata, served[cpu_kind]),
        "false_matches": None if metadata.false_matches is None else asdict(metadata.false_matches),
        "references": REFERENCES if ctx.data_root.name == SUBSET else {},
        "input_sizes": {"inv_id": list(metadata.identity_resolution), "generator": list(metadata.resolution)},
        "facts_from_run": from_run,
        "model_id": metadata.model_id,
        "precision": {
            "cpu": metadata.precisions("auto", cuda=False), "cuda": metadata.precisions("auto", cuda=True),
            "max_validation_mAP_loss": quantization.max_validation_mAP_loss,
            "calibration_crops": quantization.calibration_crops,
            "calibration": quantization.calibration,
            "inv_id": {"validation": quantization.validation, "test": test},
        },
    }


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def train_command(preset: dict[str, Any]) -> str:
    """`genreid train` for the card's preset: its name, and `--set` for each field that departs from it."""
    name = preset["name"]
    sets = _sets(preset, get_preset(name).as_dict())
    return f"genreid train --data ../shared/data/market1501-subset --preset {name}{sets} --out runs/{name}"


def _sets(preset: dict[str, Any], base: dict[str, Any]) -> str:
    """`--set` for each field of `preset` that departs from `base`."""
    return "".join(f" --set '{key}={json.dumps(value, separators=(',', ':'))}'" for key, value in preset.items()
                   if key in base and json.dumps(value) != json.dumps(base[key]))


def reproduce_commands(preset: dict[str, Any], members: list[dict[str, int]]) -> tuple[str, str]:
    """The commands that train the card's run, and the run directory they leave to export. A joined Inv-Id's run
    trains its first member in full, each further one `--from` it (one generator, so one code space), and joins
    them (`genreid join-inv-ids`)."""
    name = preset["name"]
    if not members:
        return train_command(preset), f"runs/{name}"
    runs = [f"runs/{name}"] + [f"runs/{name}-inv-id-{index}" for index in range(2, len(members) + 1)]
    first = preset | members[0] | {"inv_id_members": 1}
    lines = [train_command(first)]
    lines += [f"genreid train --from {runs[0]}{_sets(first | member, first)} --out {run}"
              for member, run in zip(members[1:], runs[1:], strict=True)]
    joined = f"runs/{name}-joined"
    lines.append(f"genreid join-inv-ids {' '.join(runs)} --out {joined}")
    return "\n".join(lines), joined


def render_steps(steps: int, members: list[dict[str, int]]) -> str:
    """An Inv-Id's training steps: its own, or each member's of a joined one (whose mean it is)."""
    if not members:
        return f"{steps} steps"
    return f"mean of {len(members)} Inv-Ids, {' + '.join(str(m['inv_id_steps']) for m in members)} steps"


def render_generator_origin(origin: str) -> str:
    """A note under the commands when the run took its generator from an export instead of training one."""
    if not origin:
        return ""
    return (f"The run behind this model took {origin} (the previous `models/`, with\n"
            "`genreid train --from models --data ...`) instead of training one; the first command above trains one\n"
            "of the same preset.\n")


def render_inputs(sizes: dict[str, list[int]]) -> str:
    """The networks' input size, or Inv-Id's and the generator's where they differ."""
    identity, generator = ("x".join(map(str, sizes[name])) for name in ("inv_id", "generator"))
    return generator if identity == generator else f"{identity} (Inv-Id), {generator} (Inv-Noise, generator)"


def template(name: str) -> Template:
    """One of the card's prose templates (training/templates/, shipped in the wheel as package data)."""
    return Template(resources.files("genreid.training").joinpath("templates", name).read_text(encoding="utf-8"))


def render_lenient(card: dict[str, Any]) -> str:
    """The shipped Inv-Id's test mAP and rank-1 under the standard and the paper's lenient protocol, on lines of
    their own after the paper's 73 mAP; empty for a card written before the lenient ones were measured."""
    lenient = card.get("test_lenient_protocol")
    if lenient is None:
        return ""
    standard = card["precision"]["inv_id"]["test"]
    names = {"float32": "float32 (the table's row)", "int8": "INT8"}
    scores = ";\n".join(f"mAP {_pct(standard[kind]['mAP'])} / {_pct(lenient[kind]['mAP'])}, rank-1 "
                        f"{_pct(standard[kind]['rank1'])} / {_pct(lenient[kind]['rank1'])} in {names[kind]}"
                        for kind in names)
    return f"\nThe shipped Inv-Id on this test split, standard / lenient protocol:\n{scores}."


def render_rerank(rerank: dict[str, Any] | None) -> str:
    """The re-ranking section (empty for a model without parameters), ending in a blank line."""
    if rerank is None:
        return ""
    names = {"code_distance": "code distance (`rerank=false`)",
             "reranked": "re-ranked per query (what `/query` serves by default)",
             "reranked_all_queries": "re-ranked, all queries together (reference)"}
    rows = "\n".join(
        f"| {split} | {name} | {_pct(m['mAP'])} | {_pct(m['rank1'])} | {_pct(m['rank5'])} | {_pct(m['mINP'])} |"
        for split in ("validation", "test") for key, name in names.items() for m in (rerank[split][key],))
    return template("model_card_rerank.md").substitute(
        k1=rerank["k1"], k2=rerank["k2"], lambda_=rerank["lambda"], candidates=rerank["candidates"],
        chosen_on=rerank["chosen_on"], precision=rerank["precision"], rows=rows,
    )


def render_false_matches(record: dict[str, Any] | None) -> str:
    """The per-query false-match section (empty for a model without the record), ending in a blank line."""
    if record is None:
        return ""
    rows = "\n".join(f"| {row['gallery']:,} | {_pct(row['rate'])} | {row['kind']} |" for row in record["per_query"])
    return template("model_card_false_matches.md").substitute(
        measured_on=record["measured_on"], precision=record["precision"], per_pair=f"{100 * record['per_pair']:.2f}",
        rows=rows)


def _spread(spread: Spread) -> str:
    if spread.sd is None:
        return _pct(spread.mean)
    return f"{_pct(spread.mean)} ± {_pct(spread.sd)} ({', '.join(_pct(v) for v in spread.values)})"


def render_runs(card: dict[str, Any]) -> str:
    """The variant table over the run ledger's records (empty for a card built without a ledger), ending in a blank
    line."""
    records = [RunRecord.from_dict(record) for record in card.get("inv_id_runs", [])]
    if not records:
        return ""
    rows = []
    for (variant, (height, width)), spreads in summarise(records).items():
        seeds = len(spreads["validation_mAP"].values)
        tested = (f"{_pct(spreads['test_mAP'].mean)} ({len(spreads['test_mAP'].values)}) | "
                  f"{_pct(spreads['test_rank1'].mean)}" if "test_mAP" in spreads else "not measured | not measured")
        rows.append(f"| {variant} | {height}x{width} | {seeds} | {_spread(spreads['validation_mAP'])} | "
                    f"{_spread(spreads['validation_rank1'])} | {_spread(spreads['validation_mINP'])} | {tested} |")
    return template("model_card_runs.md").substitute(ledger=card["inv_id_runs_ledger"], rows="\n".join(rows))


def render_markdown(card: dict[str, Any]) -> str:
    """MODEL_CARD.md from the card's JSON: the values formatted here, the prose in templates/model_card.md."""
    data, test = card["data"], card["test"]
    members = card.get("inv_id_members", [])
    rows = "\n".join(
        f"| Inv-Id `{mode}`{' (shipped)' if mode == card['shipped_inv_id'] else ''}, "
        f"{render_steps(card['inv_id_steps'][mode], members if mode == card['shipped_inv_id'] else [])} x "
        f"{card['preset']['inv_id_batch']} | {_pct(m['mAP'])} | "
        f"{_pct(m['rank1'])} | {_pct(m['rank5'])} | {_pct(m['rank10'])} | {_pct(m['mINP'])} |"
        for mode, m in test.items()
    )
    refs = "\n".join(f"| {name} | {_pct(m['mAP'])} | {_pct(m['rank1'])} | | | |"
                     for name, m in card["references"].items())
    machines = card.get("training_machines", {})
    times = "\n".join(f"| {stage} | {seconds / 60:.1f} | {machines.get(stage, 'not recorded')} |"
                      for stage, seconds in card["training_wall_seconds"].items())
    mult_adds = card.get("mult_adds", {})  # cards before trunks had a registry did not count them
    params = "\n".join(f"| {name} | {count / 1e6:.2f} M | "
                       f"{f'{mult_adds[name] / 1e6:.0f} M' if name in mult_adds else '-'} |"
                       for name, count in card["parameters"].items())
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
    device = machine_name(hw)
    preset = card["preset"]
    widths = tuple(preset["widths"])  # a list when the preset was read back from JSON
    codes = card["code_stats"]
    train_commands, run = reproduce_commands(preset, members)
    return template("model_card.md").substitute(
        source=source,
        widths=widths, blocks=preset["blocks"], code_dim=preset["code_dim"], inputs=render_inputs(card["input_sizes"]),
        preset=preset["name"], train_commands=train_commands, run=run,
        generator_note=render_generator_origin(card.get("generator_origin", "")),
        data_root=data["root"], train_identities=data["train_identities"], train_crops=data["train_crops"],
        validation_identities=data["validation_identities"], validation_crops=data["validation_crops"],
        data_note=data["note"],
        test_rows=rows, reference_rows=refs, lenient_scores=render_lenient(card),
        real_fraction=_pct(preset["real_fraction"]), real_identities=preset["real_identities"],
        triplet_weight=preset["triplet_weight"], label_smoothing=preset["label_smoothing"],
        weight_decay=preset["inv_id_weight_decay"], stripes=preset["inv_id_stripes"] or "no",
        inv_id_trunk="".join(f"; {change}" for change in inv_id_trunk_changes(preset)),
        model_id=card["model_id"], calibration_crops=precision["calibration_crops"],
        calibration=precision.get("calibration", MIN_MAX_CALIBRATION), int8_change=f"{change:+.1f}",
        max_mAP_loss=_pct(precision["max_validation_mAP_loss"]), verdict=verdict, precision_rows=precision_rows,
        threshold_int8=f"{parity['validation']['int8']['threshold_fmr1']:.4f}",
        threshold_float32=f"{parity['validation']['float32']['threshold_fmr1']:.4f}",
        psnr_int8=f"{recon['test_queries_int8_inv_id']['psnr']:.1f}",
        psnr_float32=f"{recon['test_queries']['psnr']:.1f}",
        match_threshold=f"{card['match_threshold']:.4f}",
        tpr_at_fmr1=_pct(card["validation"][card["shipped_inv_id"]]["tpr_at_fmr1"]),
        rerank_section=render_rerank(card["rerank"]), runs_section=render_runs(card),
        false_matches_section=render_false_matches(card.get("false_matches")),  # cards before 2026-12-07 lack it
        validation_l1=f"{recon['validation']['l1']:.3f}", validation_psnr=f"{recon['validation']['psnr']:.1f}",
        test_crops=recon["test_queries"]["crops"], test_l1=f"{recon['test_queries']['l1']:.3f}",
        test_psnr=f"{recon['test_queries']['psnr']:.1f}",
        nn_mean=f"{codes['nn_mean']:.3f}", nn_min=f"{codes['nn_min']:.3f}", pair_mean=f"{codes['pair_mean']:.3f}",
        pair_max=f"{codes['pair_max']:.3f}",
        parameter_rows=params, device=device, torch=hw["torch"], time_rows=times,
        # Cards from before the precision was recorded were all trained on an AVX-512 Xeon, in bf16.
        precision=hw.get("precision", "bf16 autocast"),
    )


def write_card(ctx: StageContext, models_dir: Path, *, from_run: bool = True, ledger: Path | None = None) -> Path:
    """MODEL_CARD.json and .md in `models_dir`; with a `ledger`, its records too (the variant table)."""
    card = build_card(ctx, models_dir, from_run=from_run)
    records = read_ledger(ledger) if ledger is not None else []
    if records:
        card.update(inv_id_runs_ledger=str(ledger), inv_id_runs=[asdict(record) for record in records])
    (models_dir / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    path = models_dir / CARD_FILE
    path.write_text(render_markdown(card))
    return path
