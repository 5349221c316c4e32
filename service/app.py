"""The FastAPI application: `create_app(settings)` wires routers, limits and errors; the lifespan loads the
models and opens the gallery once per process and hands them to requests through the lifespan state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

import faiss
from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from service.dependencies import ImageReader, Services, require_api_key
from service.encoders import Encoders
from service.errors import UploadLimit, error_responses, validation_error
from service.gallery import Gallery, gpu_search_copy
from service.routes import gallery, health, query, transfer
from service.settings import Settings

log = logging.getLogger(__name__)


def open_services(settings: Settings) -> Services:
    """Load the ONNX models (GPU when usable) and rebuild the FAISS index from the gallery store."""
    encoders = Encoders(settings.models, device=settings.device, threads=settings.threads)
    search_copy = gpu_search_copy(settings.device)
    faiss.omp_set_num_threads(settings.search_threads)
    store = Gallery(settings.data, encoders.metadata.code_dim, search_copy, settings.power_safe)
    faiss_device = "cpu" if search_copy is None else "gpu"
    log.info(
        "models %s on %s; FAISS on %s; gallery %s holds %d entries",
        settings.models, ", ".join(encoders.providers), faiss_device, store.path, store.counts()[0],
    )
    reader = ImageReader(encoders.resolution, settings.max_pixels)
    return Services(settings, encoders, store, reader, faiss_device)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Services]]:
        services = await run_in_threadpool(open_services, settings)
        try:
            yield {"services": services}
        finally:
            services.gallery.close()

    app = FastAPI(
        title="genreid",
        version=version("genreid"),
        description="Person re-identification by inverting a conditional diffusion model.",
        lifespan=lifespan,
    )
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.add_exception_handler(RequestValidationError, validation_error)
    protected = {"dependencies": [Depends(require_api_key)], "responses": error_responses(401)}
    app.include_router(gallery.router, **protected)
    app.include_router(query.router, **protected)
    app.include_router(transfer.router, **protected)
    app.include_router(health.router)
    return app
