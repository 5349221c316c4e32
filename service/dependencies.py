"""What a request handler needs, handed over by FastAPI: the objects the lifespan built (through the
request's lifespan state, never module globals), API keys and their roles (service/keys.py), the audit record
writer of admin routes, and upload decoding."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated

import numpy as np
from fastapi import Depends, HTTPException, Query, Request, Security, UploadFile
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime

from genreid.service.audit import AuditLog, AuditRecord
from genreid.service.core.imaging import ImageError, decode_rgb, resized, stored_crop, to_chw_float
from genreid.service.encoders import Encoders, ImageNetwork
from genreid.service.keys import ApiKey, Role, key_ring, match
from genreid.service.observability import KEY_NAME, request_id, route_of
from genreid.service.settings import Settings
from genreid.service.store import EntryFilter, GalleryStore
from genreid.service.store.base import utc

API_KEY_HEADER = "X-API-Key"


class ImageReader:
    """Uploads -> one (N, 3, H, W) float32 batch per network asked for, at that network's input size, and the small
    crops a gallery keeps: each file is decoded once and resized once per distinct size (networks of one size share
    the batch); one bad file refuses them all, naming it."""

    def __init__(self, sizes: Mapping[str, tuple[int, int]], crop_size: tuple[int, int], max_pixels: int):
        self.sizes = dict(sizes)
        self.crop_size = crop_size
        self.max_pixels = max_pixels

    def read(self, uploads: Sequence[UploadFile], field: str, *networks: ImageNetwork) -> dict[str, np.ndarray]:
        return self.read_with_crops(uploads, field, *networks, crops=False)[0]

    def read_with_crops(self, uploads: Sequence[UploadFile], field: str, *networks: ImageNetwork, crops: bool
                        ) -> tuple[dict[str, np.ndarray], list[bytes] | None]:
        sizes = {network: self.sizes[network] for network in networks}
        batches = {size: np.empty((len(uploads), 3, *size), np.float32) for size in set(sizes.values())}
        kept: list[bytes] = []
        for i, upload in enumerate(uploads):
            try:
                image = decode_rgb(upload.file.read(), self.max_pixels)
            except ImageError as err:
                where = f"{field}[{i}]" if len(uploads) > 1 else field
                raise HTTPException(422, f"{where} ({upload.filename!r}): {err}") from None
            for size, batch in batches.items():
                batch[i] = to_chw_float(resized(image, size))
            if crops:
                kept.append(stored_crop(image, self.crop_size))
        return {network: batches[size] for network, size in sizes.items()}, kept if crops else None


@dataclass(frozen=True)
class Services:
    """Everything the lifespan opens once per process and every request shares."""

    settings: Settings
    encoders: Encoders
    gallery: GalleryStore
    reader: ImageReader
    audit: AuditLog

    @cached_property
    def keys(self) -> tuple[ApiKey, ...]:
        """The configured API keys, parsed once (Settings checked them at start)."""
        return key_ring(api_key=self.settings.api_key, api_keys=self.settings.api_keys)

    def close(self) -> None:
        self.gallery.close()
        self.audit.close()


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
    description="needed on every route but /health when the server has keys",
)
_bearer = HTTPBearer(auto_error=False, description="the same keys as Authorization: Bearer (Prometheus scrapes)")


async def authenticate(
    request: Request, services: ServicesDep, key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> ApiKey | None:
    """The key presented in X-API-Key or as Authorization: Bearer (None on a server without keys); 401 when it
    is missing or matches no key (genreid.service.keys.match compares in constant time)."""
    if not services.keys:
        return None
    presented = key if key is not None else None if bearer is None else bearer.credentials
    found = None if presented is None else match(services.keys, presented)
    if found is None:
        raise HTTPException(401, f"missing or wrong API key: send it in the {API_KEY_HEADER} header or as "
                            "Authorization: Bearer", headers={"WWW-Authenticate": "APIKey"})
    request.scope[KEY_NAME] = found.name  # for the access log line
    return found


def requires(role: Role) -> Callable[..., Awaitable[ApiKey | None]]:
    """A dependency that lets through keys of `role` or above (genreid.service.keys.ROLES); 403 naming both roles."""

    async def require(key: Annotated[ApiKey | None, Depends(authenticate)]) -> ApiKey | None:
        if key is not None and not key.allows(role):
            raise HTTPException(403, f"the API key {key.name!r} has the {key.role} role; this route needs the "
                                f"{role} role")
        return key

    return require


require_api_key = requires("query")  # every read route
require_metrics_key = requires("metrics")
_require_admin_key = requires("admin")


@dataclass(frozen=True)
class Audit:
    """An admin route's audit record writer, bound to the key's name, the route and the request id: call it once
    the store acknowledged the change."""

    log: AuditLog
    actor: str
    route: str
    request_id: str | None

    def __call__(self, action: str, *, entry_ids: Sequence[int], person_ids: Sequence[str] = (),
                 **detail: str) -> None:
        self.log.record(AuditRecord(actor=self.actor, action=action, route=self.route,
                                    entry_ids=[int(i) for i in entry_ids], person_ids=list(dict.fromkeys(person_ids)),
                                    detail=detail, request_id=self.request_id))


async def require_admin(
    request: Request, services: ServicesDep, key: Annotated[ApiKey | None, Depends(_require_admin_key)]
) -> Audit:
    """Enrolment, relabel, merge and deletion: an admin key (any caller on a server without keys), audited."""
    return Audit(services.audit, actor="anonymous" if key is None else key.name,
                 route=f"{request.method} {route_of(request.scope)}", request_id=request_id.get())


AdminDep = Annotated[Audit, Depends(require_admin)]
