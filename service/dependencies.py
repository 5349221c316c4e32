"""What a request handler needs, handed over by FastAPI: the objects the lifespan built (through the
request's lifespan state, never module globals), the API-key check and upload decoding."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from fastapi import Depends, HTTPException, Request, Security, UploadFile
from fastapi.security import APIKeyHeader

from service.encoders import Encoders
from service.gallery import Gallery
from service.imaging import ImageError, preprocess
from service.settings import Settings

API_KEY_HEADER = "X-API-Key"


class ImageReader:
    """Uploads -> one (N, 3, H, W) float32 batch at the model's resolution; one bad file refuses them all."""

    def __init__(self, size: tuple[int, int], max_pixels: int):
        self.size = size
        self.max_pixels = max_pixels

    def read(self, uploads: Sequence[UploadFile], field: str) -> np.ndarray:
        batch = np.empty((len(uploads), 3, *self.size), np.float32)
        for i, upload in enumerate(uploads):
            try:
                batch[i] = preprocess(upload.file.read(), self.size, self.max_pixels)
            except ImageError as err:
                where = f"{field}[{i}]" if len(uploads) > 1 else field
                raise HTTPException(422, f"{where} ({upload.filename!r}): {err}") from None
        return batch


@dataclass(frozen=True)
class Services:
    """Everything the lifespan opens once per process and every request shares."""

    settings: Settings
    encoders: Encoders
    gallery: Gallery
    reader: ImageReader
    faiss_device: Literal["cpu", "gpu"]


# These are trivial and never block: `async def` spares each request a threadpool hop per dependency.
async def get_services(request: Request) -> Services:
    return request.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_encoders(services: ServicesDep) -> Encoders:
    return services.encoders


async def get_gallery(services: ServicesDep) -> Gallery:
    return services.gallery


async def get_reader(services: ServicesDep) -> ImageReader:
    return services.reader


EncodersDep = Annotated[Encoders, Depends(get_encoders)]
GalleryDep = Annotated[Gallery, Depends(get_gallery)]
ReaderDep = Annotated[ImageReader, Depends(get_reader)]

_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False,
    description="needed on every route but /health when the server has a key",
)


async def require_api_key(
    services: ServicesDep, key: Annotated[str | None, Security(_api_key_header)]
) -> None:
    """401 unless the server has no key or the header matches it (compared in constant time)."""
    expected = services.settings.api_key
    if expected is None:
        return
    if key is None or not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise HTTPException(
            401, f"missing or wrong {API_KEY_HEADER} header", headers={"WWW-Authenticate": "APIKey"}
        )
