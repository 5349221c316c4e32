"""/gallery: enrol person crops (one batched inversion per request), count and remove them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Path, UploadFile
from pydantic import BaseModel, StringConstraints

from service.dependencies import EncodersDep, GalleryDep, ReaderDep, ServicesDep
from service.errors import error_responses

router = APIRouter(prefix="/gallery", tags=["gallery"])

PersonId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"\S")]
Camera = Annotated[str, StringConstraints(max_length=256)]
MAX_ENTRY_ID = 2**63 - 1  # SQLite INTEGER PRIMARY KEY range


class EntryOut(BaseModel):
    entry_id: int
    person_id: str
    camera: str | None


class Added(BaseModel):
    added: int
    entries: list[EntryOut]


class GalleryCounts(BaseModel):
    entries: int
    persons: int


class Removed(BaseModel):
    removed: int
    entry_ids: list[int]


@router.post("", status_code=201, response_model=Added, responses=error_responses(400, 413, 422))
def add_images(
    files: Annotated[list[UploadFile], File(description="person crops, any image format PIL reads")],
    person_id: Annotated[list[PersonId], Form(description="one label per file, in file order")],
    services: ServicesDep,
    encoders: EncodersDep,
    gallery: GalleryDep,
    reader: ReaderDep,
    camera: Annotated[
        list[Camera] | None, Form(description="optional: one camera per file, in file order ('' for unknown)")
    ] = None,
) -> Added:
    """Store every crop's identity code under its person id; all files are checked before any is stored."""
    max_files = services.settings.max_files
    if len(files) > max_files:
        raise HTTPException(413, f"{len(files)} files: at most {max_files} per request")
    if len(person_id) != len(files):
        raise HTTPException(422, f"{len(files)} files but {len(person_id)} person_id fields: one per file")
    if camera is not None and len(camera) != len(files):
        raise HTTPException(422, f"{len(files)} files but {len(camera)} camera fields: one per file or none")
    cameras = [c or None for c in camera] if camera is not None else [None] * len(files)
    codes = encoders.identity(reader.read(files, "files"))
    entries = gallery.add(person_id, cameras, codes)
    return Added(
        added=len(entries),
        entries=[EntryOut(entry_id=e.entry_id, person_id=e.person_id, camera=e.camera) for e in entries],
    )


@router.get("", response_model=GalleryCounts)
def counts(gallery: GalleryDep) -> GalleryCounts:
    entries, persons = gallery.counts()
    return GalleryCounts(entries=entries, persons=persons)


@router.delete("/entries/{entry_id}", response_model=Removed, responses=error_responses(404, 422))
def remove_entry(entry_id: Annotated[int, Path(ge=1, le=MAX_ENTRY_ID)], gallery: GalleryDep) -> Removed:
    removed = gallery.remove_entry(entry_id)
    if not removed:
        raise HTTPException(404, f"no gallery entry {entry_id}")
    return Removed(removed=len(removed), entry_ids=removed)


@router.delete("/persons/{person_id}", response_model=Removed, responses=error_responses(404))
def remove_person(person_id: str, gallery: GalleryDep) -> Removed:
    """Remove every entry of a person."""
    removed = gallery.remove_person(person_id)
    if not removed:
        raise HTTPException(404, f"no gallery entries for person {person_id!r}")
    return Removed(removed=len(removed), entry_ids=removed)
