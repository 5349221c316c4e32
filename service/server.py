"""`genreid serve`: one flag per Settings field (flags override GENREID_* variables), then uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from pydantic import ValidationError

from service.settings import ENV_PREFIX, Settings


def build_parser() -> argparse.ArgumentParser:
    """Generated from Settings so a new setting is a flag and a variable at once; pydantic parses values."""
    parser = argparse.ArgumentParser(prog="genreid serve", description=__doc__.splitlines()[0],
                                     argument_default=argparse.SUPPRESS)
    for name, field in Settings.model_fields.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}", dest=name, metavar=name.upper(),
            help=f"{field.description} (env {ENV_PREFIX}{name.upper()}, default {field.default})",
        )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings(**vars(args))
    except ValidationError as err:
        print(f"genreid serve: {err}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(settings.log_level.upper())

    from service.app import create_app, open_services
    from service.encoders import ModelError
    from service.store import GalleryError

    try:
        services = open_services(settings)
    except (GalleryError, ModelError) as err:
        logging.getLogger(__name__).debug("start-up failed", exc_info=True)
        print(f"genreid serve: {err}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(settings, services), host=settings.host, port=settings.port,
                log_level=settings.log_level)
    return 0
