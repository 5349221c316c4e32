"""What a request handler needs, handed over by FastAPI: the objects the lifespan built (through the
request's lifespan state, never module globals), the API-key check and upload decoding."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Depends, HTTPException, Query, Request, Security, UploadFile
from fastapi.security import APIKeyHeader
from pydantic import AwareDatetime

from service.encoders import Encoders
from service.imaging import ImageError, decode_rgb, resized, stored_crop, to_chw_float
from service.settings import Settings
from service.store import EntryFilter, GalleryStore
from service.store.base import utc

API_KEY_HEADER = "X-API-Key"


class ImageReader:
    """Uploads -> one (N, 3, H, W) float32 batch at the model's resolution, and the small crops a gallery keeps
    (one decode serves both); one bad file refuses them all, naming it."""

    def __init__(self, size: tuple[int, int], max_pixels: int):
        self.size = size
        self.max_pixels = max_pixels

    def read(self, uploads: Sequence[UploadFile], field: str) -> np.ndarray:
        return self.read_with_crops(uploads, field, crops=False)[0]

    def read_with_crops(self, uploads: Sequence[UploadFile], field: str, *, crops: bool
                        ) -> tuple[np.ndarray, list[bytes] | None]:
        batch = np.empty((len(uploads), 3, *self.size), np.float32)
        kept: list[bytes] = []
        for i, upload in enumerate(uploads):
            try:
                image = decode_rgb(upload.file.read(), self.max_pixels)
            except ImageError as err:
                where = f"{field}[{i}]" if len(uploads) > 1 else field
                raise HTTPException(422, f"{where} ({upload.filename!r}): {err}") from None
            batch[i] = to_chw_float(resized(image, self.size))
            if crops:
                kept.append(stored_crop(image, self.size))
        return batch, kept if crops else None


@dataclass(frozen=True)
class Services:
    """Everything the lifespan opens once per process and every request shares."""

    settings: Settings
    encoders: Encoders
    gallery: GalleryStore
    reader: ImageReader


# These are trivial and never block: `async def` spares each request a threadpool hop per dependency.
async def get_services(request: Request) -> Services:
    return request.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_encoders(services: ServicesDep) -> Encoders:
    return services.encoders


async def get_gallery(services: ServicesDep) -> GalleryStore:
    return services.gallery


async def get_reader(services: ServicesDep) -> ImageReader:
    return services.reader


async def get_entry_filter(
    camera: Annotated[list[str] | None, Query(description="only entries of these cameras (repeat the parameter)")]
    = None,
    exclude_camera: Annotated[
        list[str] | None, Query(description="leave out entries of these cameras: the cross-camera search")
    ] = None,
    seen_after: Annotated[AwareDatetime | None, Query(description="only entries seen at or after (ISO 8601)")]
    = None,
    seen_before: Annotated[AwareDatetime | None, Query(description="only entries seen at or before (ISO 8601)")]
    = None,
) -> EntryFilter:
    """Which gallery entries a search or listing considers; entries without seen_at fail either time bound."""
    if seen_after is not None and seen_before is not None and seen_after > seen_before:
        raise HTTPException(422, f"seen_after {seen_after.isoformat()} is later than seen_before")
    return EntryFilter(
        cameras=None if camera is None else frozenset(camera), exclude_cameras=frozenset(exclude_camera or ()),
        seen_after=utc(seen_after), seen_before=utc(seen_before),
    )


EncodersDep = Annotated[Encoders, Depends(get_encoders)]
EntryFilterDep = Annotated[EntryFilter, Depends(get_entry_filter)]
GalleryDep = Annotated[GalleryStore, Depends(get_gallery)]
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
