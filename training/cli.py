"""`genreid train`, `export`, `figures`, `card`, `tune-rerank` and `record-run` (reached lazily from service/cli.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from training.presets import Preset, get_preset

DEFAULT_LEDGER = Path("docs/results/inv_id_runs.jsonl")  # in the repository; run from its root

CONFIG_FILE = "config.json"


def _override(text: str) -> tuple[str, object]:
    """`field=value` for a preset field, the value parsed as JSON (numbers, lists) or kept as text."""
    key, sep, value = text.partition("=")
    fields = {f.name for f in dataclasses.fields(Preset)}
    if not sep or key not in fields:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE with FIELD one of {sorted(fields)}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key, tuple(parsed) if isinstance(parsed, list) else parsed


def load_run(run_dir: Path) -> tuple[Preset, Path]:
    """The preset and data folder a run was started with (saved in its config.json)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a training run (no {CONFIG_FILE})")
    config = json.loads(path.read_text())
    preset = config["preset"]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in preset.items()}
    return Preset(**values), Path(config["data"])


GENERATOR_FROM = "generator_from"  # config.json: the export a run's generator was recovered from
MEMBERS = "inv_id_members"  # config.json: each member's run, seed, steps and validation mAP
# What members may differ in; anything else would make their mean a mean of different things.
MEMBER_FIELDS = ("inv_id_seed", "inv_id_steps")


def joined_members(run: Path) -> list[dict[str, Any]]:
    """The members a joined run was made of (config.json), in order; empty for a run that trained its own Inv-Id
    (or a run directory without a config, as a test's context)."""
    config = run / CONFIG_FILE
    return json.loads(config.read_text()).get(MEMBERS, []) if config.is_file() else []


def _context(preset: Preset, data: Path, run_dir: Path, cache_dir: Path | None, stop_after: int | None):
    from training.stages.context import StageContext
    from training.trainer import setup_runtime

    config = run_dir / CONFIG_FILE
    export = json.loads(config.read_text()).get(GENERATOR_FROM) if config.is_file() else None
    return StageContext(preset, data, run_dir, setup_runtime(), cache_dir, stop_after,
                        generator_export=None if export is None else Path(export))


def run_context(run_dir: Path, cache_dir: Path | None):
    """The stage context of an existing run, with the preset and data its config.json names."""
    preset, data = load_run(run_dir)
    return _context(preset, data, run_dir, cache_dir, None)


def is_export(path: Path) -> bool:
    """A model directory `genreid export` wrote, as opposed to a training run."""
    from service.encoders import METADATA_FILE

    return (path / METADATA_FILE).is_file() and not (path / CONFIG_FILE).is_file()


def _source_preset(source: Path, data: Path | None) -> tuple[Preset, Path]:
    """The preset and data a run started `--from` source begins with: a run's own, or an export's (its card's
    preset, and the data folder it was trained on, which only the caller knows)."""
    if not is_export(source):
        if data is not None:
            raise ValueError("--from takes the data and preset of the run it starts from; change fields with --set")
        return load_run(source)
    if data is None:
        raise ValueError(f"--from {source} is an export: add --data, the Market-1501 folder it was trained on")
    from training.model_card import card_preset

    return card_preset(source), data


def _check_same_start(run_dir: Path, preset: Preset, start: Preset, overrides: list[tuple[str, object]] | None) -> None:
    """The command that started a run from another one resumes it; a changed one is refused, not half-applied."""
    if dataclasses.replace(start, **dict(overrides or [])) != preset:
        raise ValueError(f"{run_dir} was started with other settings; resume it with the command that started it, "
                         f"or with `genreid train --out {run_dir}`")


def train(args: argparse.Namespace) -> int:
    from service.market import check_layout

    run_dir: Path = args.out
    config: dict[str, object] = {}
    reused: list[str] = []
    if args.source and args.preset:
        raise ValueError("--from takes the preset of the run or export it starts from; change fields with --set")
    if (run_dir / CONFIG_FILE).is_file():
        preset, data = load_run(run_dir)
        config = json.loads((run_dir / CONFIG_FILE).read_text())
        if args.source:
            _check_same_start(run_dir, preset, _source_preset(args.source, args.data)[0], args.set)
        else:
            if args.preset and args.preset != preset.name:
                raise ValueError(f"{run_dir} was started with preset {preset.name!r}, not {args.preset!r}")
            if args.set:
                preset = dataclasses.replace(preset, **dict(args.set))
    elif args.source:
        from training.pipeline import GENERATOR_FIELDS, link_stages, reusable_stages

        start, data = _source_preset(args.source, args.data)
        preset = dataclasses.replace(start, **dict(args.set or []))
        if is_export(args.source):
            data = check_layout(data, ("train",)).resolve()
            if changed := [name for name in GENERATOR_FIELDS if getattr(preset, name) != getattr(start, name)]:
                raise ValueError(f"{args.source}: its generator was trained with other {', '.join(changed)}")
            config[GENERATOR_FROM] = str(args.source.resolve())
        else:
            reused = reusable_stages(args.source, start, preset)
            source_config = json.loads((args.source / CONFIG_FILE).read_text())
            if GENERATOR_FROM in source_config:  # its generator (linked here) is an export's
                config[GENERATOR_FROM] = source_config[GENERATOR_FROM]
        run_dir.mkdir(parents=True, exist_ok=True)
        link_stages(args.source, run_dir, reused)
    else:
        if args.data is None:
            raise ValueError("--data is required to start a new run")
        data = check_layout(args.data, ("train",)).resolve()
        preset = get_preset(args.preset or "cpu", **dict(args.set or []))
        run_dir.mkdir(parents=True, exist_ok=True)
    from training.pipeline import run_stages
    from training.trainer import write_text_atomic

    # Stages of one run may start in parallel processes that read it.
    config.update({"preset": preset.as_dict(), "data": str(data)})
    write_text_atomic(run_dir / CONFIG_FILE, json.dumps(config, indent=2))
    if reused:
        print(f"genreid train: reusing {', '.join(reused)} of {args.source}", file=sys.stderr)

    run_stages(_context(preset, data, run_dir, args.cache_dir, args.stop_after), args.stage)
    return 0


def models_context(models_dir: Path, data: Path | None, cache_dir: Path | None):
    """A context for a model directory whose training run is gone: the run's preset as the model card recorded
    it (so the same validation identities), and the data folder given."""
    from service.market import check_layout
    from training.model_card import card_preset

    if data is None:
        raise ValueError("without a run directory, --data (the Market-1501 folder it was trained on) is required")
    return _context(card_preset(models_dir), check_layout(data, ("train",)).resolve(), models_dir, cache_dir, None)


def _run_or_models_context(args: argparse.Namespace, models_dir: Path):
    if args.run_dir is None:
        return models_context(models_dir, args.data, args.cache_dir)
    if args.data is not None:
        raise ValueError("--data is for a model directory without its run; a run knows its data")
    return run_context(args.run_dir, args.cache_dir)


def export(args: argparse.Namespace) -> int:
    from training.rerank import tune_rerank

    ctx = _run_or_models_context(args, args.to)
    if args.run_dir is None:
        from training.quantize import quantize_models

        metadata = quantize_models(ctx, args.to).as_dict()
    else:
        from training.export import export_run

        metadata = export_run(ctx, args.to)
    rerank = tune_rerank(ctx, args.to)  # on the codes a CPU serves, so after the INT8 Inv-Id is decided
    print(json.dumps({"models": str(args.to), "model_id": metadata["model_id"], "validation": metadata["validation"],
                      "cpu_precision": metadata["cpu_precision"], "rerank": rerank["validation"]["reranked"]}))
    return 0


def rerank_command(args: argparse.Namespace) -> int:
    from training.rerank import tune_rerank

    record = tune_rerank(_run_or_models_context(args, args.models), args.models)
    print(json.dumps({key: record[key] for key in ("k1", "k2", "lambda", "candidates", "validation")}))
    return 0


def figures(args: argparse.Namespace) -> int:
    from training.figures import make_figures

    for path in make_figures(run_context(args.run_dir, args.cache_dir), args.out, args.models):
        print(path)
    return 0


def card(args: argparse.Namespace) -> int:
    from training.model_card import write_card

    print(write_card(_run_or_models_context(args, args.models), args.models, from_run=args.run_dir is not None,
                     ledger=args.ledger))
    return 0


def record_run_command(args: argparse.Namespace) -> int:
    from training.run_ledger import append_records, record_run

    records = record_run(run_context(args.run_dir, args.cache_dir), note=args.note)
    if not records:
        raise FileNotFoundError(f"{args.run_dir}: no Inv-Id has finished in this run")
    for record in append_records(args.ledger, records):
        print(record.to_json())
    return 0


def join_command(args: argparse.Namespace) -> int:
    from training.join import join_inv_ids

    result = join_inv_ids(args.runs, args.out, args.cache_dir)
    print(json.dumps({"run": str(args.out), "mode": result["mode"], "validation": result["validation"]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genreid")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train every stage in order (resumes an existing run)")
    run.add_argument("--data", type=Path, help="Market-1501 folder (bounding_box_train/ is used)")
    run.add_argument("--preset", choices=("tiny", "cpu", "paper"), help="configuration (default cpu)")
    run.add_argument("--out", type=Path, required=True, help="run directory: checkpoints, logs, results")
    run.add_argument("--stage", help="run only this stage (generator, codes, samples, inv_id_*, inv_noise)")
    run.add_argument("--set", type=_override, action="append", metavar="FIELD=VALUE",
                     help="override a preset field, e.g. --set generator_steps=2000")
    run.add_argument("--from", dest="source", type=Path, metavar="RUN_OR_MODELS_DIR",
                     help="start a new run on a run's finished generator, codes, samples and Inv-Noise (linked, "
                     "while --set changes nothing they depend on), or on an export's denoiser (with --data, its "
                     "codes recovered in minutes): for Inv-Id experiments on one generator; the same command "
                     "again resumes it")
    run.add_argument("--stop-after", type=int, help="checkpoint and stop after this many steps of a stage")
    run.set_defaults(handler=train)
    out = commands.add_parser("export", help="export a finished run to ONNX + model.json, with the model identity "
                              "and the INT8 Inv-Id; without RUN_DIR, add those to the float ONNX files in --to")
    out.add_argument("run_dir", type=Path, nargs="?")
    out.add_argument("--to", type=Path, default=Path("models"), help="model directory to write")
    out.set_defaults(handler=export)
    fig = commands.add_parser("figures", help="the paper's figures as PNG files")
    fig.add_argument("run_dir", type=Path)
    fig.add_argument("--out", type=Path, default=Path("docs/figures"))
    fig.add_argument("--models", type=Path, default=Path("models"), help="exported models (for retrieval)")
    fig.set_defaults(handler=figures)
    model_card = commands.add_parser("card", help="write MODEL_CARD.md (+ .json): training facts and test metrics; "
                                     "without RUN_DIR, the training facts come from the card already in --models")
    model_card.add_argument("run_dir", type=Path, nargs="?")
    model_card.add_argument("--models", type=Path, default=Path("models"), help="the exported model directory")
    model_card.set_defaults(handler=card)
    rerank = commands.add_parser("tune-rerank", help="choose the re-ranking parameters on the validation identities "
                                 "and write them into model.json (export does this too)")
    rerank.add_argument("run_dir", type=Path, nargs="?")
    rerank.add_argument("--models", type=Path, default=Path("models"), help="the exported model directory")
    rerank.set_defaults(handler=rerank_command)
    ledger = commands.add_parser("record-run", help="append each finished Inv-Id of a run (validation, test, cost) "
                                 "to the run ledger that the model card's variant table is computed from")
    ledger.add_argument("run_dir", type=Path)
    ledger.add_argument("--note", default="", help="what the run was for, kept with its record")
    ledger.set_defaults(handler=record_run_command)
    join = commands.add_parser("join-inv-ids", help="a new run whose Inv-Id is the mean of runs' Inv-Ids on one "
                               "generator (seeds or steps of one recipe), scored on validation; export it as any run")
    join.add_argument("runs", type=Path, nargs="+", help="finished runs on one generator")
    join.add_argument("--out", type=Path, required=True, help="the new run directory")
    join.set_defaults(handler=join_command)
    for sub in (model_card, ledger):
        sub.add_argument("--ledger", type=Path, default=DEFAULT_LEDGER, help="the run ledger (default %(default)s)")
    for sub in (out, model_card, rerank):
        sub.add_argument("--data", type=Path, help="without RUN_DIR: the Market-1501 folder the model was trained on")
    for sub in (run, out, fig, model_card, rerank, ledger, join):
        sub.add_argument("--cache-dir", type=Path, help="decoded-image cache (default $XDG_CACHE_HOME/genreid)")
    return parser


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """Run one training command; `own_process` (the `genreid` command itself) lets `train` re-execute under
    jemalloc, which a caller's Python process must never do."""
    args = build_parser().parse_args(argv)
    if own_process and args.command == "train":
        from training.allocator import reexec_under_jemalloc

        reexec_under_jemalloc()
    from service.market import MarketLayoutError

    try:
        return args.handler(args)
    except (MarketLayoutError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"genreid {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(own_process=True))
