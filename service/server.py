"""`genreid serve`: one flag per Settings field (flags override GENREID_* variables), then uvicorn."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import Literal, get_args, get_origin

import uvicorn
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from genreid.service.observability import configure_logging
from genreid.service.settings import ENV_PREFIX, Settings, describe_errors


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def build_parser() -> argparse.ArgumentParser:
    """Generated from Settings so a new setting is a flag and a variable at once; pydantic parses values. An on/off
    setting is a switch (`--rerank` / `--no-rerank`), a setting of a few values lists them."""
    parser = argparse.ArgumentParser(
        prog="genreid serve", argument_default=argparse.SUPPRESS,
        description="Run the retrieval service: enrol crops, query, transfer; the operator page at /, the API at "
        f"/docs. Every flag is also a {ENV_PREFIX}* variable; a flag overrides it.")
    for name, field in Settings.model_fields.items():
        flag = f"--{name.replace('_', '-')}"
        help_text = f"{field.description} (env {ENV_PREFIX}{name.upper()}, default {_default(field)})"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        elif get_origin(field.annotation) is Literal:
            parser.add_argument(flag, dest=name, choices=get_args(field.annotation), help=help_text)
        else:
            parser.add_argument(flag, dest=name, metavar=name.upper(), help=help_text)
    return parser


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound here rather than by uvicorn, which logs a bind failure and exits 1 with no way to report it in one
    line; bound as uvicorn binds (SO_REUSEADDR), and handed to it."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections of sockets that say TCP, and without it
    # Nagle's algorithm and delayed ACKs held every response for 40 ms (a /health round trip took 44 ms).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _refused(reason: object) -> int:
    """A start-up failure: one line on stderr, exit code 2; the traceback only at --log-level debug."""
    logging.getLogger(__name__).debug("start-up failed", exc_info=True)
    print(f"genreid serve: {reason}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings(**vars(args))
    except ValidationError as err:
        print(f"genreid serve: {describe_errors(err)}", file=sys.stderr)
        return 2
    configure_logging(level=settings.log_level, fmt=settings.log_format)

    from genreid.service.app import create_app, open_services
    from genreid.service.audit import AuditLogError
    from genreid.service.core.model_json import ModelError
    from genreid.service.store import GalleryError

    try:
        services = open_services(settings)
    except (GalleryError, ModelError, AuditLogError) as err:
        return _refused(err)
    try:
        sock = listening_socket(settings.host, settings.port)
    except OSError as err:
        services.close()
        return _refused(f"cannot listen on {settings.host}:{settings.port}: {err.strerror}")
    # log_config=None: uvicorn's loggers go through configure_logging's handler; RequestContext writes the access
    # log (with the request id), so uvicorn's own is off. SIGTERM: uvicorn stops accepting, lets the requests in
    # flight finish, then the lifespan closes the gallery.
    config = uvicorn.Config(create_app(settings, services), log_level=settings.log_level, log_config=None,
                            access_log=False)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    logging.getLogger(__name__).info("serving on http://%s:%d/ (the API at /docs)", host, sock.getsockname()[1])
    with sock:
        uvicorn.Server(config).run(sockets=[sock])
    return 0
