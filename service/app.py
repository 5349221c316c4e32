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
from threadpoolctl import threadpool_limits

from genreid.service.audit import AuditLog
from genreid.service.core.imaging import stored_crop_size
from genreid.service.core.reranking import neighbours_kept
from genreid.service.dependencies import ImageReader, Services, require_api_key, require_metrics_key
from genreid.service.encoders import Encoders
from genreid.service.errors import (
    UploadLimit,
    error_responses,
    invalid_entry,
    store_unavailable,
    unknown_entries,
    validation_error,
)
from genreid.service.metrics import Metrics
from genreid.service.observability import RequestContext
from genreid.service.retention import retention
from genreid.service.routes import gallery, health, metrics, query, transfer, ui
from genreid.service.settings import Settings
from genreid.service.store import InvalidEntry, StoreUnavailable, UnknownEntries, open_gallery

log = logging.getLogger(__name__)


def open_services(settings: Settings) -> Services:
    """Load the ONNX models (GPU when usable) and open the gallery store the settings name. numpy's BLAS runs on
    the calling thread from then on, in the whole process: a server's products are small (a re-ranked query's few
    hundred codes), and BLAS threads spread over them stall against inference threads on a busy CPU (a re-ranked
    /query took 42 ms instead of 19 beside a training job; docs/BENCHMARKS.md, "What a fresh server does")."""
    threadpool_limits(1, user_api="blas")
    encoders = Encoders(settings.models, device=settings.device, threads=settings.threads,
                        precision=settings.precision)
    store = open_gallery(settings, code_dim=encoders.metadata.code_dim, model_id=encoders.metadata.model_id,
                         neighbourhood_size=neighbours_kept(encoders.metadata))
    audit = AuditLog(settings.audit_path, power_safe=settings.power_safe)
    log.info("models %s (%s) on %s; gallery %s holds %d entries", settings.models, encoders.metadata.model_id,
             ", ".join(encoders.providers), store.describe(), store.counts()[0])
    reader = ImageReader(encoders.input_sizes, stored_crop_size(encoders.resolution, encoders.identity_resolution),
                         settings.max_pixels)
    return Services(settings, encoders, store, reader, audit)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The app; it opens its services at start-up unless given them already open (as `genreid serve` does, to
    report a start-up failure in one line before the server starts)."""

    observed = Metrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Services]]:
        opened = services if services is not None else await run_in_threadpool(open_services, settings)
        observed.watch(opened)
        try:
            async with retention(opened.gallery, opened.audit, days=settings.retention_days):
                yield {"services": opened}
        finally:
            opened.close()

    app = FastAPI(
        title="genreid",
        version=version("genreid"),
        description="Person re-identification by inverting a conditional diffusion model.",
        lifespan=lifespan,
        docs_url=None,  # genreid.service.routes.ui serves /docs from local files, not a CDN; no /redoc (it needs one)
        redoc_url=None,
    )
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestContext, observe=observed.observe_request)  # added last: the outermost
    app.state.metrics = observed
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(UnknownEntries, unknown_entries)
    app.add_exception_handler(StoreUnavailable, store_unavailable)
    app.add_exception_handler(InvalidEntry, invalid_entry)
    protected = {"dependencies": [Depends(require_api_key)], "responses": error_responses(401, 403, 503)}
    app.include_router(gallery.router, **protected)
    app.include_router(query.router, **protected)
    app.include_router(transfer.router, **protected)
    app.include_router(health.router)
    app.include_router(metrics.router, **({} if settings.metrics_public else {
        "dependencies": [Depends(require_metrics_key)], "responses": error_responses(401, 403)}))
    app.include_router(ui.router)
    return app
