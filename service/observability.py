"""Request ids, the access log and unhandled errors, in one pure ASGI middleware (BaseHTTPMiddleware would buffer
streamed bodies and run the app in another task, losing the UploadLimit's early 413), and the log format.

Every response carries X-Request-ID: the client's own when it sends a sane one (so a proxy's id follows the
request through), else a new one. Every log record written while a request runs carries it too, and the access
log line (logger `genreid.access`) has it with the route template, status and latency. An exception no handler
turned into an answer becomes a JSON 500 with the id, and its traceback is logged under that id.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Literal

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
UNMATCHED = "unmatched"  # the route label of requests no route matched (keeps scanners' paths out of metrics)
KEY_NAME = "genreid.key_name"  # scope entry: the name of the API key that authenticated the request
_SANE_ID = re.compile(r"[A-Za-z0-9._:=+/-]{1,128}")  # no spaces or control characters: it goes into log lines
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
access_log = logging.getLogger("genreid.access")
log = logging.getLogger(__name__)

# (method, route template, status, seconds): what the metrics count; called once per request.
RequestObserver = Callable[[str, str, int, float], None]


def route_of(scope: Scope) -> str:
    """The template of the route that matched ("/gallery/entries/{entry_id}"), never the raw path; without
    converters ("{person_id}", not "{person_id:path}")."""
    route = scope.get("route")
    return getattr(route, "path_format", UNMATCHED)


def _incoming_id(scope: Scope) -> str:
    given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
    return given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex


class RequestContext:
    """Outermost app middleware: request id, JSON 500s, access log line, and the observer (metrics)."""

    def __init__(self, app: ASGIApp, observe: RequestObserver | None = None):
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _incoming_id(scope)
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s (request %s)", scope["method"], scope["path"], rid)
            status = 500
            if not response_started:
                body = {"detail": "internal server error: the server log has the cause under this request_id",
                        "request_id": rid}
                await JSONResponse(body, status_code=500)(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = route_of(scope)
            client = (scope.get("client") or ("-",))[0]
            key = scope.get(KEY_NAME, "-")
            access_log.info(
                "%s %s %s %d %.1f ms key=%s request_id=%s", client, scope["method"], scope["path"], status,
                seconds * 1000, key, rid,
                extra={"request_id": rid, "client": client, "key": key, "method": scope["method"],
                       "path": scope["path"], "route": route, "status": status,
                       "latency_ms": round(seconds * 1000, 3)},
            )
            if self.observe is not None:
                self.observe(scope["method"], route, status, seconds)
            request_id.reset(token)


# Attributes every LogRecord has; anything else on a record came through `extra=` and goes into the JSON object.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "color_message"}  # color_message: uvicorn's coloured copy of the message


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (inside a request), the record's
    `extra` fields, and the traceback as one string."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", None) is not None:
            line["request_id"] = record.request_id
        line.update((key, value) for key, value in vars(record).items() if key not in _STANDARD)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class _WithRequestId(logging.Filter):
    """Stamps the current request's id on every record (records outside a request get None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure_logging(*, level: str, fmt: Literal["text", "json"]) -> None:
    """The root handler for the whole process (uvicorn's loggers propagate to it: run it with log_config=None)."""
    handler = logging.StreamHandler()
    handler.addFilter(_WithRequestId())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
