"""The operator page (/ui/) and the API docs (/docs), served from files shipped in Python packages so both work
on a machine without internet; FastAPI's own docs pages load Swagger UI from a CDN. There is no /redoc: ReDoc
fetches its logo from a CDN whatever it is given."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response

if TYPE_CHECKING:  # importlib.resources.abc is new in Python 3.11
    from importlib.resources.abc import Traversable

router = APIRouter(include_in_schema=False)

# The page's scripts are its own files only (no inline script or style, no eval); images are its own, or blob:
# URLs it made from API answers (crops fetched with the key header, which an <img src> cannot send).
PAGE_CSP = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob:",
    "connect-src 'self'",
    "form-action 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
))
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
PAGE_ROOT = files("genreid.service.ui")
PAGE_FILES = frozenset({"index.html", "app.js", "style.css", "icon.svg"})
# fastapi-offline ships Swagger UI 5 (OpenAPI 3.1, which FastAPI writes); only its files are used.
DOCS_ROOT = files("fastapi_offline").joinpath("static")
DOCS_FILES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"})
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@cache
def _read(root: Traversable, name: str) -> bytes:
    return root.joinpath(name).read_bytes()


def _file(root: Traversable, name: str, allowed: frozenset[str], headers: dict[str, str] | None = None) -> Response:
    """One of the listed files under a package folder (a name from the list, never a path from the request)."""
    if name not in allowed:
        raise HTTPException(404, f"no file {name!r}")
    return Response(_read(root, name), media_type=MEDIA_TYPES[PurePosixPath(name).suffix], headers=headers)


@router.get("/")
def root() -> RedirectResponse:
    # Relative, so the page is found under a proxy's path prefix too.
    return RedirectResponse("ui/")


@router.get("/ui/")
def page() -> Response:
    return _file(PAGE_ROOT, "index.html", PAGE_FILES, PAGE_HEADERS)


@router.get("/ui/{name}")
def page_file(name: str) -> Response:
    return _file(PAGE_ROOT, name, PAGE_FILES, PAGE_HEADERS)


@router.get("/docs/files/{name}")
def docs_file(name: str) -> Response:
    return _file(DOCS_ROOT, name, DOCS_FILES)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root_path = request.scope.get("root_path", "")  # behind a proxy's path prefix too
    prefix = f"{root_path}/docs/files"
    return get_swagger_ui_html(
        openapi_url=f"{root_path}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{prefix}/swagger-ui-bundle.js",
        swagger_css_url=f"{prefix}/swagger-ui.css",
        swagger_favicon_url=f"{prefix}/favicon.png",
    )
