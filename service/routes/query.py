"""/query: invert one crop and rank the gallery by the distance between identity codes (service.similarity)."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, UploadFile
from pydantic import BaseModel, Field

from service import imaging
from service.dependencies import EncodersDep, GalleryDep, ReaderDep
from service.errors import error_responses

router = APIRouter(tags=["query"])


class MatchOut(BaseModel):
    entry_id: int
    person_id: str
    camera: str | None
    distance: float = Field(description="Euclidean distance between the unit-length identity codes, in [0, 2]")
    same_person: bool | None = Field(description="distance <= the model's match_threshold; null without one")


class NoiseArray(BaseModel):
    shape: list[int]
    dtype: Literal["float32"]
    data: str = Field(description="base64 of the little-endian float32 values in C order")


class QueryResult(BaseModel):
    matches: list[MatchOut] = Field(description="best first")
    identity: list[float] = Field(description="the query's identity code")
    noise: NoiseArray | None = Field(None, description="the query's generator noise (include_noise=true)")
    noise_preview: str | None = Field(None, description="base64 PNG of the clipped noise (noise_preview)")


@router.post(
    "/query", response_model=QueryResult, response_model_exclude_unset=True,
    responses=error_responses(400, 413, 422),
)
def query(
    file: Annotated[UploadFile, File(description="the query crop")],
    encoders: EncodersDep,
    gallery: GalleryDep,
    reader: ReaderDep,
    k: Annotated[int, Query(ge=1, description="matches to return, capped at the gallery size")] = 10,
    include_noise: Annotated[bool, Query(description="return the generator noise array")] = True,
    noise_preview: Annotated[bool, Query(description="also return a PNG preview of the noise")] = False,
) -> QueryResult:
    """Rank the gallery for one crop, best first; also its identity code and, by default, its noise."""
    image = reader.read([file], "file")
    code = encoders.identity(image)[0]
    threshold = encoders.metadata.match_threshold
    matches = [
        MatchOut(
            entry_id=m.entry.entry_id, person_id=m.entry.person_id, camera=m.entry.camera,
            distance=m.distance, same_person=None if threshold is None else m.distance <= threshold,
        )
        for m in gallery.search(code, k)
    ]
    extra: dict[str, NoiseArray | str] = {}
    if include_noise or noise_preview:
        noise = encoders.noise(image)[0]
        if include_noise:
            data = base64.b64encode(noise.astype("<f4", copy=False).tobytes()).decode("ascii")
            extra["noise"] = NoiseArray(shape=list(noise.shape), dtype="float32", data=data)
        if noise_preview:
            png = imaging.to_png(imaging.noise_preview(noise))
            extra["noise_preview"] = base64.b64encode(png).decode("ascii")
    return QueryResult(matches=matches, identity=code.tolist(), **extra)
