"""The FastAPI application: `create_app(settings)` wires routers, limits and errors; the lifespan loads the
models and opens the gallery once per process and hands them to requests through the lifespan state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from service.dependencies import ImageReader, Services, require_api_key
from service.encoders import Encoders
from service.errors import (
    UploadLimit,
    error_responses,
    invalid_entry,
    store_unavailable,
    unknown_entries,
    validation_error,
)
from service.routes import gallery, health, query, transfer, ui
from service.settings import Settings
from service.store import InvalidEntry, StoreUnavailable, UnknownEntries, open_gallery

log = logging.getLogger(__name__)


def open_services(settings: Settings) -> Services:
    """Load the ONNX models (GPU when usable) and open the gallery store the settings name."""
    encoders = Encoders(settings.models, device=settings.device, threads=settings.threads)
    store = open_gallery(settings, code_dim=encoders.metadata.code_dim, model_id=encoders.metadata.model_id)
    log.info("models %s (%s) on %s; gallery %s holds %d entries", settings.models, encoders.metadata.model_id,
             ", ".join(encoders.providers), store.describe(), store.counts()[0])
    reader = ImageReader(encoders.resolution, settings.max_pixels)
    return Services(settings, encoders, store, reader)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The app; it opens its services at start-up unless given them already open (as `genreid serve` does, to
    report a start-up failure in one line before the server starts)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Services]]:
        opened = services if services is not None else await run_in_threadpool(open_services, settings)
        try:
            yield {"services": opened}
        finally:
            opened.gallery.close()

    app = FastAPI(
        title="genreid",
        version=version("genreid"),
        description="Person re-identification by inverting a conditional diffusion model.",
        lifespan=lifespan,
        docs_url=None,  # service.routes.ui serves /docs from local files, not a CDN; no /redoc (it needs one)
        redoc_url=None,
    )
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(UnknownEntries, unknown_entries)
    app.add_exception_handler(StoreUnavailable, store_unavailable)
    app.add_exception_handler(InvalidEntry, invalid_entry)
    protected = {"dependencies": [Depends(require_api_key)], "responses": error_responses(401, 503)}
    app.include_router(gallery.router, **protected)
    app.include_router(query.router, **protected)
    app.include_router(transfer.router, **protected)
    app.include_router(health.router)
    app.include_router(ui.router)
    return app
