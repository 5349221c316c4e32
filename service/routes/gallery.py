"""/gallery: enrol person crops (one batched inversion per request), list, relabel, merge, remove them, and serve
their stored crops."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, File, Form, HTTPException, Path, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, TypeAdapter, ValidationError

from genreid.service.dependencies import AdminDep, EncodersDep, EntryFilterDep, GalleryDep, ReaderDep, ServicesDep
from genreid.service.errors import error_responses
from genreid.service.store import Entry, NewEntry
from genreid.service.store.base import MAX_LABEL

router = APIRouter(prefix="/gallery", tags=["gallery"])

Label = Annotated[str, StringConstraints(min_length=1, max_length=MAX_LABEL, pattern=r"\S")]
Optional = Annotated[str, StringConstraints(max_length=MAX_LABEL)]  # '' stands for "none" in a form list
MAX_ENTRY_ID = 2**53 - 1  # exact in every JSON client (JavaScript numbers included)
EntryId = Annotated[int, Path(ge=1, le=MAX_ENTRY_ID)]
_MOMENT = TypeAdapter(AwareDatetime)


class EntryOut(BaseModel):
    entry_id: int
    person_id: str
    camera: str | None
    seen_at: datetime | None = Field(description="when the crop was seen (ISO 8601, UTC)")
    track_id: str | None
    has_crop: bool = Field(description="GET /gallery/entries/{entry_id}/crop serves it")
    enrolled_at: datetime | None = Field(description="when the gallery took it (UTC): what retention counts from")

    @classmethod
    def of(cls, entry: Entry) -> EntryOut:
        return cls(entry_id=entry.entry_id, person_id=entry.person_id, camera=entry.camera,
                   seen_at=entry.seen_at, track_id=entry.track_id, has_crop=entry.has_crop,
                   enrolled_at=entry.enrolled_at)


class Added(BaseModel):
    added: int
    entries: list[EntryOut]


class GalleryCounts(BaseModel):
    entries: int
    persons: int


class EntryList(BaseModel):
    total: int = Field(description="entries the filter admits, over all pages")
    offset: int
    limit: int
    entries: list[EntryOut] = Field(description="in entry-id order")


class Relabel(BaseModel):
    person_id: Label


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_RELABEL_SCHEMA = Relabel.model_json_schema()


def _invalid(*errors: dict) -> RequestValidationError:
    """A body error in FastAPI's own shape, so the 422 reads like every other validation error."""
    return RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in errors])


async def relabel_body(request: Request) -> Relabel:
    """PATCH's body as a form (`person_id`, like every other write) or JSON (`{"person_id"}`, as the route first
    took): read by hand, since FastAPI binds a route's body to one media type."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    data: object
    if media_type in FORM_TYPES:
        async with request.form() as form:
            values = form.getlist("person_id")
        if len(values) > 1:
            raise HTTPException(422, f"{len(values)} person_id fields: give one")
        data = {"person_id": values[0]} if values else {}
    elif media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(422, f"body: {media_type} is neither JSON nor a form; send JSON {{\"person_id\": ...}} "
                            "or a form field person_id")
    else:
        body = await request.body()
        if not body:
            raise _invalid({"type": "missing", "loc": (), "msg": "Field required", "input": None})
        try:
            data = json.loads(body)
        except ValueError as error:
            raise _invalid({"type": "json_invalid", "loc": (getattr(error, "pos", 0),), "msg": "JSON decode error",
                            "input": {}}) from None
    try:
        return Relabel.model_validate(data)
    except ValidationError as error:
        raise _invalid(*error.errors(include_url=False)) from None


class Merge(BaseModel):
    into: Label = Field(description="the person id that takes over every entry of the merged person")


class Moved(BaseModel):
    moved: int
    entry_ids: list[int]


class Removed(BaseModel):
    removed: int
    entry_ids: list[int]


def _per_file(values: list[str] | None, count: int, name: str) -> list[str | None]:
    """One optional form value per file ('' for none), or none at all."""
    if values is None:
        return [None] * count
    if len(values) != count:
        raise HTTPException(422, f"{count} files but {len(values)} {name} fields: one per file or none")
    return [value or None for value in values]


def _moments(values: list[str | None]) -> list[datetime | None]:
    moments = []
    for i, value in enumerate(values):
        try:
            moments.append(None if value is None else _MOMENT.validate_python(value))
        except ValidationError:
            raise HTTPException(
                422, f"seen_at[{i}]: {value!r} is not an ISO 8601 time with a UTC offset (e.g. 2026-12-02T14:55:00Z)"
            ) from None
    return moments


@router.post("", status_code=201, response_model=Added, responses=error_responses(400, 413, 422, 507))
def add_images(
    files: Annotated[list[UploadFile], File(description="person crops, any image format PIL reads")],
    person_id: Annotated[list[Label], Form(description="one label per file, in file order")],
    audit: AdminDep,
    services: ServicesDep,
    encoders: EncodersDep,
    gallery: GalleryDep,
    reader: ReaderDep,
    camera: Annotated[
        list[Optional] | None, Form(description="optional: one camera per file, in file order ('' for unknown)")
    ] = None,
    seen_at: Annotated[
        list[Optional] | None,
        Form(description="optional: when each crop was seen, ISO 8601 with a UTC offset ('' for unknown)"),
    ] = None,
    track_id: Annotated[
        list[Optional] | None, Form(description="optional: the tracker's id of each crop ('' for none)")
    ] = None,
) -> Added:
    """Store every crop's identity code (and, unless the server stores codes only, a small copy of the crop)
    under its person id; every file and field is checked before anything is stored."""
    max_files = services.settings.max_files
    if len(files) > max_files:
        raise HTTPException(413, f"{len(files)} files: at most {max_files} per request")
    if len(person_id) != len(files):
        raise HTTPException(422, f"{len(files)} files but {len(person_id)} person_id fields: one per file")
    cameras = _per_file(camera, len(files), "camera")
    tracks = _per_file(track_id, len(files), "track_id")
    moments = _moments(_per_file(seen_at, len(files), "seen_at"))
    images, crops = reader.read_with_crops(files, "files", "inv_id", crops=services.settings.store_crops)
    codes = encoders.identity(images["inv_id"])
    new = [NewEntry(p, c, s, t, None if crops is None else crops[i])
           for i, (p, c, s, t) in enumerate(zip(person_id, cameras, moments, tracks, strict=True))]
    entries = gallery.add(new, codes)
    audit("enrol", entry_ids=[e.entry_id for e in entries], person_ids=[e.person_id for e in entries])
    return Added(added=len(entries), entries=[EntryOut.of(e) for e in entries])


@router.get("", response_model=GalleryCounts)
def counts(gallery: GalleryDep) -> GalleryCounts:
    entries, persons = gallery.counts()
    return GalleryCounts(entries=entries, persons=persons)


@router.get("/entries", response_model=EntryList, responses=error_responses(422))
def list_entries(
    gallery: GalleryDep,
    entry_filter: EntryFilterDep,
    person_id: Annotated[str | None, Query(description="only this person's entries")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_ENTRY_ID)] = 0,  # SQLite refuses integers past 2**63
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> EntryList:
    """A page of entries, in entry-id order, filtered like /query plus by person id."""
    page = gallery.list_entries(replace(entry_filter, person_id=person_id), offset=offset, limit=limit)
    return EntryList(total=page.total, offset=offset, limit=limit, entries=[EntryOut.of(e) for e in page.entries])


@router.get("/entries/{entry_id}", response_model=EntryOut, responses=error_responses(404, 422))
def get_entry(entry_id: EntryId, gallery: GalleryDep) -> EntryOut:
    found = gallery.get([entry_id])
    if not found:
        raise HTTPException(404, f"no gallery entry {entry_id}")
    return EntryOut.of(found[0])


@router.get(
    "/entries/{entry_id}/crop", response_class=Response, responses={
        200: {"description": "the stored crop, WebP at twice the generator's resolution (at least Inv-Id's input)",
              "content": {"image/webp": {}}},
        **error_responses(404, 422)},
)
def get_crop(entry_id: EntryId, gallery: GalleryDep) -> Response:
    crop = gallery.crop(entry_id)
    if crop is None:
        detail = f"gallery entry {entry_id} has no stored crop" if gallery.get([entry_id]) else (
            f"no gallery entry {entry_id}")
        raise HTTPException(404, detail)
    # Private: crops are biometric data, never to be kept by shared caches.
    return Response(crop, media_type="image/webp", headers={"Cache-Control": "private, max-age=3600"})


@router.patch(
    "/entries/{entry_id}", response_model=EntryOut, responses=error_responses(400, 404, 422, 507),
    openapi_extra={"requestBody": {"required": True, "content": {
        media_type: {"schema": _RELABEL_SCHEMA} for media_type in ("application/json", *FORM_TYPES)}}},
)
def relabel(
    entry_id: EntryId,
    audit: AdminDep,  # before the body: a caller without the admin role gets 401/403, not a body error
    change: Annotated[Relabel, Depends(relabel_body)],
    gallery: GalleryDep,
) -> EntryOut:
    """Give one entry another person id (fix a label): a form field `person_id` or JSON `{"person_id"}`."""
    entry = gallery.relabel(entry_id, person_id=change.person_id)
    audit("relabel", entry_ids=[entry_id], person_ids=[entry.person_id])
    return EntryOut.of(entry)


@router.post("/persons/{person_id:path}/merge", response_model=Moved, responses=error_responses(400, 404, 422, 507))
def merge(person_id: str, target: Annotated[Merge, Body()], gallery: GalleryDep, audit: AdminDep) -> Moved:
    """Move every entry of `person_id` to the person `into` (two ids found to be one person). The id may hold "/"
    (e.g. `cam1/track42`), sent percent-encoded or not: the route reads the rest of the path."""
    if person_id == target.into:
        raise HTTPException(422, f"cannot merge person {person_id!r} into itself")
    moved = gallery.merge(person_id, into=target.into)
    if not moved:
        raise HTTPException(404, f"no gallery entries for person {person_id!r}")
    audit("merge", entry_ids=moved, person_ids=[person_id, target.into])
    return Moved(moved=len(moved), entry_ids=moved)


@router.delete("/entries/{entry_id}", response_model=Removed, responses=error_responses(404, 422, 507))
def remove_entry(entry_id: EntryId, gallery: GalleryDep, audit: AdminDep) -> Removed:
    doomed = gallery.get([entry_id])  # only for the audit record's person id
    removed = gallery.remove_entries([entry_id])
    if not removed:
        raise HTTPException(404, f"no gallery entry {entry_id}")
    audit("remove_entries", entry_ids=removed, person_ids=[e.person_id for e in doomed])
    return Removed(removed=len(removed), entry_ids=removed)


@router.delete("/persons/{person_id:path}", response_model=Removed, responses=error_responses(404, 507))
def remove_person(person_id: str, gallery: GalleryDep, audit: AdminDep) -> Removed:
    """Remove every entry of a person (an id with "/" in it is the rest of the path)."""
    removed = gallery.remove_person(person_id)
    if not removed:
        raise HTTPException(404, f"no gallery entries for person {person_id!r}")
    audit("remove_person", entry_ids=removed, person_ids=[person_id])
    return Removed(removed=len(removed), entry_ids=removed)
