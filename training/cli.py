"""`genreid train`, `export`, `figures`, `card`, `tune-rerank`, `calibrate-false-matches`, `record-run` and
`join-inv-ids` (reached lazily from service/cli.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from genreid.training.presets import Preset
from genreid.training.runs import prepare_run, run_context, run_or_models_context

DEFAULT_LEDGER = Path("docs/results/inv_id_runs.jsonl")  # in the repository; run from its root


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


def _positive(text: str) -> int:
    """A whole number, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def train(args: argparse.Namespace) -> int:
    from genreid.training.pipeline import run_stages

    ctx = prepare_run(out=args.out, data=args.data, preset_name=args.preset, overrides=args.set or [],
                      source=args.source, cache_dir=args.cache_dir, stop_after=args.stop_after)
    run_stages(ctx, args.stage)
    return 0


def export(args: argparse.Namespace) -> int:
    from genreid.service.core.model_json import ModelMetadata
    from genreid.training.export import export_run, finish_export

    ctx = run_or_models_context(run_dir=args.run_dir, models_dir=args.to, data=args.data, cache_dir=args.cache_dir)
    if args.run_dir is None:
        metadata = finish_export(ctx, args.to, ModelMetadata.load(args.to))
    else:
        metadata = export_run(ctx, args.to)
    print(json.dumps({"models": str(args.to), "model_id": metadata.model_id, "validation": metadata.validation,
                      "cpu_precision": metadata.cpu_precision, "rerank": metadata.rerank["validation"]["reranked"]}))
    return 0


def rerank_command(args: argparse.Namespace) -> int:
    from genreid.training.export import retune_rerank

    ctx = run_or_models_context(run_dir=args.run_dir, models_dir=args.models, data=args.data,
                                cache_dir=args.cache_dir)
    record = retune_rerank(ctx, args.models)
    print(json.dumps({key: record[key] for key in ("k1", "k2", "lambda", "candidates", "validation")}))
    return 0


def false_matches_command(args: argparse.Namespace) -> int:
    from genreid.training.export import calibrate_false_matches

    record = calibrate_false_matches(args.data_root, args.models, draws=args.draws, seed=args.seed)
    print(json.dumps({"models": str(args.models), "false_matches": dataclasses.asdict(record)}))
    return 0


def figures(args: argparse.Namespace) -> int:
    from genreid.training.figures import make_figures

    for path in make_figures(run_context(args.run_dir, args.cache_dir), args.out, args.models):
        print(path)
    return 0


def card(args: argparse.Namespace) -> int:
    from genreid.training.model_card import write_card

    print(write_card(run_or_models_context(run_dir=args.run_dir, models_dir=args.models, data=args.data,
                                     cache_dir=args.cache_dir), args.models, from_run=args.run_dir is not None,
                     ledger=args.ledger))
    return 0


def record_run_command(args: argparse.Namespace) -> int:
    from genreid.training.run_ledger import append_records, record_run

    records = record_run(run_context(args.run_dir, args.cache_dir), note=args.note)
    if not records:
        raise FileNotFoundError(f"{args.run_dir}: no Inv-Id has finished in this run")
    for record in append_records(args.ledger, records):
        print(record.to_json())
    return 0


def join_command(args: argparse.Namespace) -> int:
    from genreid.training.join import join_inv_ids

    result = join_inv_ids(args.runs, args.out, args.cache_dir)
    print(json.dumps({"run": str(args.out), "mode": result["mode"], "validation": result["validation"]}))
    return 0


def _subcommand(commands: argparse._SubParsersAction, name: str, *, help: str) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with what it does (the line `genreid --help` shows for it)."""
    return commands.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genreid")
    commands = parser.add_subparsers(dest="command", required=True)

    run = _subcommand(commands, "train", help="train every stage in order (resumes an existing run)")
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
    out = _subcommand(commands, "export", help="export a finished run to ONNX + model.json, with the model identity "
                              "and the INT8 Inv-Id; without RUN_DIR, add those to the float ONNX files in --to")
    out.add_argument("run_dir", type=Path, nargs="?")
    out.add_argument("--to", type=Path, default=Path("models"), help="model directory to write")
    out.set_defaults(handler=export)
    fig = _subcommand(commands, "figures", help="the paper's figures as PNG files")
    fig.add_argument("run_dir", type=Path)
    fig.add_argument("--out", type=Path, default=Path("docs/figures"))
    fig.add_argument("--models", type=Path, default=Path("models"), help="exported models (for retrieval)")
    fig.set_defaults(handler=figures)
    model_card = _subcommand(commands, "card", help="write MODEL_CARD.md (+ .json): training facts and test metrics; "
                                     "without RUN_DIR, the training facts come from the card already in --models")
    model_card.add_argument("run_dir", type=Path, nargs="?")
    model_card.add_argument("--models", type=Path, default=Path("models"), help="the exported model directory")
    model_card.set_defaults(handler=card)
    rerank = _subcommand(commands, "tune-rerank", help="choose the re-ranking parameters on the validation identities "
                                 "and write them into model.json (export does this too)")
    rerank.add_argument("run_dir", type=Path, nargs="?")
    rerank.add_argument("--models", type=Path, default=Path("models"), help="the exported model directory")
    rerank.set_defaults(handler=rerank_command)
    calibrate = _subcommand(commands, "calibrate-false-matches", help="measure how often a never-enrolled person's "
                                    "best match passes the match threshold at each gallery size, on a Market-1501 "
                                    "query/gallery split, and record it in model.json (/health reports it)")
    calibrate.add_argument("--data-root", type=Path, required=True,
                           help="Market-1501 folder (query/ and bounding_box_test/ are used)")
    calibrate.add_argument("--models", type=Path, default=Path("models"), help="the exported model directory")
    calibrate.add_argument("--draws", type=_positive, default=5, help="random galleries per size (default %(default)s)")
    calibrate.add_argument("--seed", type=int, default=0, help="of the random galleries (default %(default)s)")
    calibrate.set_defaults(handler=false_matches_command)
    ledger = _subcommand(commands, "record-run", help="append each finished Inv-Id of a run (validation, test, cost) "
                                 "to the run ledger that the model card's variant table is computed from")
    ledger.add_argument("run_dir", type=Path)
    ledger.add_argument("--note", default="", help="what the run was for, kept with its record")
    ledger.set_defaults(handler=record_run_command)
    join = _subcommand(commands, "join-inv-ids", help="a new run whose Inv-Id is the mean of runs' Inv-Ids on one "
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
        from genreid.training.allocator import reexec_under_jemalloc

        reexec_under_jemalloc()
    from genreid.service.core.market import MarketLayoutError
    from genreid.service.core.model_json import ModelError

    try:
        return args.handler(args)
    except (MarketLayoutError, ModelError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"genreid {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(own_process=True))
