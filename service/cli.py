"""The `genreid` command.

`serve` and `evaluate` need only the serve extra; `train`, `export`, `figures` and `card` import torch lazily
through training/cli.py, so a serve-only install never touches it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

TRAINING_COMMANDS = ("train", "export", "figures", "card")


def evaluate_command(data: Path, models: Path, device: str) -> dict[str, float | int]:
    """Embed the query and gallery splits with Inv-Id and score them with the standard protocol."""
    import numpy as np

    from service.encoders import Encoders
    from service.evaluation import evaluate_codes
    from service.imaging import preprocess
    from service.market import check_layout, read_split

    root = check_layout(data, ("query", "gallery"))
    encoders = Encoders(models, device=device)
    embedded = {}
    for split in ("query", "gallery"):
        crops = read_split(root, split)
        logging.info("embedding %d %s crops", len(crops), split)
        images = np.stack([preprocess(crop.path, encoders.resolution) for crop in crops])
        embedded[split] = (
            encoders.identity(images),
            np.array([crop.person_id for crop in crops]),
            np.array([crop.camera for crop in crops]),
        )
    (q_codes, q_pids, q_cams), (g_codes, g_pids, g_cams) = embedded["query"], embedded["gallery"]
    return evaluate_codes(q_codes, g_codes, q_pids, g_pids, q_cams, g_cams).as_dict()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genreid", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the retrieval service (see `genreid serve --help`)", add_help=False)
    evaluate = commands.add_parser("evaluate", help="standard Market-1501 metrics of a model, as JSON")
    evaluate.add_argument("--data", type=Path, required=True, help="Market-1501 folder (query/, bounding_box_test/)")
    evaluate.add_argument("--models", type=Path, default=None, help="exported model directory (default: shipped)")
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    for name in TRAINING_COMMANDS:
        commands.add_parser(name, help=f"{name} (needs the train extra; see `genreid {name} --help`)",
                            add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "serve":
        from service.server import main as serve_main

        return serve_main(argv[1:])
    if argv and argv[0] in TRAINING_COMMANDS:
        try:
            from training.cli import main as training_main
        except ImportError as err:
            print(f"genreid {argv[0]}: needs the train extra (pip install -e '.[train]'): {err}", file=sys.stderr)
            return 2
        return training_main(argv)
    args = build_parser().parse_args(argv)
    from service.encoders import ModelError
    from service.market import MarketLayoutError
    from service.settings import default_models

    try:
        result = evaluate_command(args.data, args.models or default_models(), args.device)
    except (MarketLayoutError, ModelError) as err:
        print(f"genreid evaluate: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
