"""The `genreid` command: serve, evaluate and manage galleries, and train and export models.

`serve`, `evaluate` and `gallery` need only the serve extra; `train`, `export`, `figures` and `card` import torch lazily
through training/cli.py, so a serve-only install never touches it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from genreid.service.core.evaluation import EvalProtocol
    from genreid.service.core.model_json import Precision
    from genreid.service.settings import Settings

# Reached through training/cli.py (torch, lazily): command -> what it does, for `genreid --help`.
TRAINING_COMMANDS = {
    "train": "train a model's stages into a run directory (resumes one)",
    "export": "export a finished run to ONNX + model.json, with the INT8 Inv-Id and re-ranking parameters",
    "figures": "draw the paper's figures from a run",
    "card": "write the model card (MODEL_CARD.md + .json)",
    "tune-rerank": "choose the re-ranking parameters on validation identities",
    "calibrate-false-matches": "measure how often a stranger's best match passes the match threshold per gallery size",
    "record-run": "append a run's finished Inv-Ids to the run ledger",
    "join-inv-ids": "average the Inv-Ids of runs on one generator into a new run",
}


@dataclass(frozen=True)
class LabelledCrops:
    """A Market-1501 split's crop files and their labels: a split as the Evaluator takes one."""

    paths: list[Path]
    person_ids: np.ndarray
    cameras: np.ndarray

    @classmethod
    def read(cls, root: Path, split: str) -> LabelledCrops:
        import numpy as np

        from genreid.service.core.market import read_split

        crops = read_split(root, split)
        return cls([crop.path for crop in crops], np.array([crop.person_id for crop in crops]),
                   np.array([crop.camera for crop in crops]))


def evaluate_command(data: Path, models: Path, device: str, *, rerank: bool, precision: Precision = "auto",
                     protocol: EvalProtocol = "standard") -> dict[str, Any]:
    """Embed the query and gallery splits with Inv-Id and score them under `protocol` (standard, or the paper's
    lenient one to compare with it); with `rerank`, also as /query re-ranks (the model's parameters, the
    service's code: `served`, what a server answers by default) and with all queries re-ranked together (the
    evaluation tools' variant, for reference)."""
    import numpy as np

    from genreid.service.core.evaluation import Evaluator
    from genreid.service.core.imaging import preprocess
    from genreid.service.core.market import check_layout
    from genreid.service.core.model_json import ModelError
    from genreid.service.core.reranking import RerankParams
    from genreid.service.encoders import Encoders

    root = check_layout(data, ("query", "gallery"))
    encoders = Encoders(models, device=device, precision=precision)

    def embed(split: LabelledCrops) -> np.ndarray:
        logging.info("embedding %d crops", len(split.paths))
        return encoders.identity(np.stack([preprocess(path, encoders.identity_resolution) for path in split.paths]))

    evaluator = Evaluator(embed, LabelledCrops.read(root, "query"), LabelledCrops.read(root, "gallery"))
    if not rerank:
        return evaluator.metrics(protocol=protocol).as_dict()
    params = RerankParams.from_model(encoders.metadata)
    if params is None:
        raise ModelError(f"{models}: model.json carries no re-ranking parameters (run `genreid tune-rerank`)")
    return {"served": "reranked", "rerank": params.as_dict(),
            "code_distance": evaluator.metrics(protocol=protocol).as_dict(),
            "reranked": evaluator.metrics(rerank=params, protocol=protocol).as_dict(),
            "reranked_all_queries": evaluator.metrics(rerank=params, all_queries=True, protocol=protocol).as_dict()}


def _add_location(parser: argparse.ArgumentParser, *, data: str, uri: str, collection: str, required: bool,
                  what: str) -> None:
    """Where a gallery is: an embedded directory or a Milvus URI (with its collection), never both."""
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument(data, type=Path, help=f"the embedded gallery directory of {what}")
    where.add_argument(uri, help=f"the Milvus gallery of {what} (http(s)://host:19530, or a milvus-lite .db path)")
    parser.add_argument(collection, help=f"the Milvus collection of {what} (default genreid)")


def _days(text: str) -> int:
    """A whole number of days, at least 1 (0 would delete the whole gallery)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days, at least 1")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, at least 0")
    return int(text)


def add_gallery_parser(commands: argparse._SubParsersAction) -> None:
    gallery = commands.add_parser("gallery", help="export, import, re-embed, prune a gallery or rebuild its kept "
                                  "neighbourhoods (serve extra only)")
    actions = gallery.add_subparsers(dest="action", required=True)
    here = "the gallery (default: GENREID_* settings, as `genreid serve`)"
    export = actions.add_parser("export", help="write every entry, code and crop to one portable file; an "
                                "embedded gallery can be exported while its server runs")
    export.add_argument("--to", type=Path, required=True, help="the file to write (replaced only once complete)")
    _add_location(export, data="--data", uri="--gallery-uri", collection="--gallery-collection", required=False,
                  what=here)
    export.add_argument("--models", type=Path, help="a Milvus gallery's model (its code space; default: shipped)")
    imported = actions.add_parser("import", help="add every entry of an exported file to a gallery of its model, "
                                  "skipping those it holds already (a repeated import adds nothing)")
    imported.add_argument("file", type=Path, help="a file written by `genreid gallery export`")
    _add_location(imported, data="--data", uri="--gallery-uri", collection="--gallery-collection",
                  required=False, what=here)
    imported.add_argument("--models", type=Path, help="refuse unless this model (the one to serve the gallery) "
                          "made the file's codes")
    imported.add_argument("--id-map", type=Path, help="write {file entry id: entry id in the gallery} here as JSON "
                          "(new ids, and the ids of the entries skipped as already there)")
    reembed = actions.add_parser("reembed", help="embed a gallery's stored crops with a new model into a new "
                                 "gallery (the old one may keep serving)")
    reembed.add_argument("--models", type=Path, required=True, help="the new model's directory")
    _add_location(reembed, data="--from-data", uri="--from-uri", collection="--from-collection", required=True,
                  what="the source")
    reembed.add_argument("--from-models", type=Path, help="a Milvus source's (old) model (default: shipped)")
    _add_location(reembed, data="--to-data", uri="--to-uri", collection="--to-collection", required=True,
                  what="the new gallery")
    reembed.add_argument("--skip-missing-crops", action="store_true",
                         help="leave out entries stored without a crop (otherwise they refuse the whole run)")
    reembed.add_argument("--id-map", type=Path, help="write {source entry id: new entry id} here as JSON")
    reembed.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the new model runs (default: "
                         "GENREID_DEVICE, else auto)")
    prune = actions.add_parser("prune", help="delete entries (and crops) enrolled more than N days ago, audited; an "
                               "embedded gallery only while no server holds it (a server prunes by itself with "
                               "GENREID_RETENTION_DAYS)")
    prune.add_argument("--older-than-days", type=_days, required=True,
                       help="N (at least 1): entries enrolled before now - N days go")
    _add_location(prune, data="--data", uri="--gallery-uri", collection="--gallery-collection", required=False,
                  what=here)
    prune.add_argument("--models", type=Path, help="the gallery's model (its code space; default: shipped)")
    kept = actions.add_parser("neighbourhoods", help="search every entry's nearest others anew and keep them for "
                              "re-ranking (a gallery made before they were kept, or another number of them); an "
                              "embedded gallery only while no server holds it")
    _add_location(kept, data="--data", uri="--gallery-uri", collection="--gallery-collection", required=False,
                  what=here)
    kept.add_argument("--models", type=Path, help="the gallery's model (its code space; default: shipped)")
    kept.add_argument("--size", type=_count, help="nearest others to keep per entry (default: what the model's "
                      "re-ranking reads; 0 keeps none)")


def build_parser() -> argparse.ArgumentParser:
    from genreid.service.core.evaluation import PROTOCOLS
    from genreid.service.core.model_json import PRECISIONS

    parser = argparse.ArgumentParser(
        prog="genreid", description="Person re-identification by inverting a generative model: a retrieval service "
        "(enrol crops, query ranked identities, draw one person in another's pose) and the trainer of its models.",
        epilog="`genreid COMMAND --help` describes each command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('genreid')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help="run the retrieval service (HTTP API, operator page)", add_help=False)
    evaluate = commands.add_parser("evaluate", help="Market-1501 metrics of a model, as JSON")
    evaluate.add_argument("--data", type=Path, required=True, help="Market-1501 folder (query/, bounding_box_test/)")
    evaluate.add_argument("--models", type=Path, default=None, help="exported model directory (default: shipped)")
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                          help="where Inv-Id runs (auto: a GPU when one is usable; default %(default)s)")
    evaluate.add_argument("--precision", choices=PRECISIONS, default="auto",
                          help="Inv-Id's precision (auto: as the service picks it, INT8 on CPUs if model.json says)")
    evaluate.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None,
                          help="also rank as /query re-ranks (the same code, the model's parameters) and with all "
                          "queries re-ranked together (a reference); default: as the service, on when the model "
                          "carries re-ranking parameters")
    evaluate.add_argument("--protocol", choices=PROTOCOLS, default="standard",
                          help="standard: same-person same-camera gallery crops dropped per query (torchreid); "
                          "lenient: every crop kept, as the paper scored its 73 mAP (only to compare with it)")
    add_gallery_parser(commands)
    for name, what in TRAINING_COMMANDS.items():
        commands.add_parser(name, help=f"{what} (train extra)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # called as the `genreid` command, not from Python
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "serve":
        from genreid.service.server import main as serve_main

        return serve_main(argv[1:])
    if argv and argv[0] in TRAINING_COMMANDS:
        try:
            from genreid.training.cli import main as training_main
        except ImportError as err:
            print(f"genreid {argv[0]}: needs the train extra (pip install -e '.[train]'): {err}", file=sys.stderr)
            return 2
        return training_main(argv, own_process=own_process)
    args = build_parser().parse_args(argv)
    if args.command == "gallery":
        return gallery_command(args)
    from genreid.service.core.market import MarketLayoutError
    from genreid.service.core.model_json import ModelError, ModelMetadata
    from genreid.service.settings import default_models

    try:
        models = args.models or default_models()
        rerank = args.rerank if args.rerank is not None else ModelMetadata.load(models).rerank is not None
        result = evaluate_command(args.data, models, args.device, rerank=rerank, precision=args.precision,
                                  protocol=args.protocol)
    except (MarketLayoutError, ModelError) as err:
        print(f"genreid evaluate: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def gallery_settings(*, data: Path | None, uri: str | None, collection: str | None, models: Path | None = None,
                     device: str | None = None) -> Settings:
    """Settings for one gallery: the flags given, GENREID_* variables and defaults for the rest (an explicit
    --data means the embedded gallery even where GENREID_GALLERY_URI names another)."""
    from genreid.service.settings import Settings

    given = {"data": data, "gallery_uri": uri, "gallery_collection": collection, "models": models, "device": device}
    values = {name: value for name, value in given.items() if value is not None}
    if data is not None:
        values["gallery_uri"] = None
    return Settings(**values)


def gallery_command(args: argparse.Namespace) -> int:
    """`genreid gallery ACTION`: a JSON summary on stdout, or one line on stderr and exit code 2."""
    from pydantic import ValidationError

    from genreid.service import gallery_tools
    from genreid.service.audit import AuditLogError
    from genreid.service.core.imaging import ImageError
    from genreid.service.core.model_json import ModelError
    from genreid.service.retention import prune_gallery
    from genreid.service.settings import describe_errors
    from genreid.service.store import GalleryError

    try:
        if args.action == "export":
            gallery = gallery_settings(data=args.data, uri=args.gallery_uri, collection=args.gallery_collection,
                                       models=args.models)
            summary = asdict(gallery_tools.export_gallery(gallery=gallery, to=args.to))
        elif args.action == "neighbourhoods":
            gallery = gallery_settings(data=args.data, uri=args.gallery_uri, collection=args.gallery_collection,
                                       models=args.models)
            summary = gallery_tools.rebuild_neighbourhoods(gallery=gallery, size=args.size)
        elif args.action == "prune":
            gallery = gallery_settings(data=args.data, uri=args.gallery_uri, collection=args.gallery_collection,
                                       models=args.models)
            summary = {"removed": len(prune_gallery(gallery, older_than_days=args.older_than_days))}
        else:
            if args.action == "import":
                gallery = gallery_settings(data=args.data, uri=args.gallery_uri, collection=args.gallery_collection)
                copied = gallery_tools.import_gallery(source=args.file, gallery=gallery, models=args.models)
            else:
                source = gallery_settings(data=args.from_data, uri=args.from_uri, collection=args.from_collection,
                                          models=args.from_models)
                target = gallery_settings(data=args.to_data, uri=args.to_uri, collection=args.to_collection,
                                          models=args.models, device=args.device)
                copied = gallery_tools.reembed_gallery(source=source, target=target,
                                                       skip_missing_crops=args.skip_missing_crops)
            if args.id_map is not None:
                gallery_tools.write_id_map(args.id_map, copied)
            summary = copied.summary()
    except ValidationError as err:
        print(f"genreid gallery {args.action}: {describe_errors(err)}", file=sys.stderr)
        return 2
    except (GalleryError, gallery_tools.GalleryFileError, ModelError, ImageError, AuditLogError, OSError) as err:
        print(f"genreid gallery {args.action}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
