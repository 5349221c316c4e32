"""How bad requests are refused: always a 4xx with {"detail": "<one readable sentence>"}, documented in
the OpenAPI schema, and before anything is stored."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genreid.service.store import InvalidEntry, StorageFull, StoreUnavailable, UnknownEntries


class ErrorBody(BaseModel):
    detail: str


_DESCRIPTIONS = {
    400: "Malformed request body",
    401: "Missing or wrong API key (X-API-Key, or Authorization: Bearer)",
    403: "The API key's role does not allow this route",
    404: "Unknown entry or person, or an entry without a stored crop",
    413: "Request body over the upload limit, or too many files",
    422: "Invalid parameters, or a file that is not a usable image",
    503: "The gallery's engine is unavailable; nothing was changed",
    507: "The gallery's storage is full; nothing was changed",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the given error statuses, all with the ErrorBody shape."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


async def unknown_entries(_: Request, exc: UnknownEntries) -> JSONResponse:
    """A store call that names entries the gallery does not hold is the client's 404, from any route."""
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def invalid_entry(_: Request, exc: InvalidEntry) -> JSONResponse:
    """A value the store refuses (its rule is the contract's, whatever a route checked before): 422."""
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def store_unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
    """The gallery's engine failed or is unreachable (503), or its disk is full (507): a reason, never a 500 or a
    hang; reads go on, and writes work again once the cause is gone."""
    if isinstance(exc, StorageFull):
        return JSONResponse({"detail": str(exc)}, status_code=507)
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's list of errors, flattened into the one-string detail every other error has."""
    detail = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )
    return JSONResponse({"detail": detail}, status_code=422)


class UploadLimit:
    """Refuse request bodies over `max_bytes` with 413: at once when Content-Length says so, and while
    reading for chunked or lying clients, so an oversize upload is never buffered whole."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"request body over {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = self._too_large()
            await JSONResponse({"detail": error.detail}, error.status_code)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI re-raises HTTPExceptions met while parsing the body, so this becomes a JSON 413.
                raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)
