"""/query: rank the gallery for a crop (or a stored entry, or many crops at once) by the distance between
identity codes (genreid.service.core.similarity), optionally within some cameras or a time window, optionally re-ranked
(genreid.service.core.reranking)."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile
from pydantic import BaseModel, Field

from genreid.service.core import imaging
from genreid.service.core.reranking import RankedMatch, RerankParams, rerank_search
from genreid.service.dependencies import EncodersDep, EntryFilterDep, GalleryDep, ReaderDep, ServicesDep
from genreid.service.encoders import Encoders, ImageNetwork
from genreid.service.errors import error_responses
from genreid.service.routes.gallery import MAX_ENTRY_ID
from genreid.service.settings import Settings
from genreid.service.store import EntryFilter, GalleryStore

router = APIRouter(prefix="/query", tags=["query"])

K = Annotated[int, Query(ge=1, le=1000, description="matches to return, capped at the admitted entries")]
Rerank = Annotated[bool | None, Query(
    description="re-rank the nearest entries by k-reciprocal neighbours (the model's parameters, model.json "
    "`rerank`); default: the server's rerank setting. 422 when asked for a model without parameters")]


class MatchOut(BaseModel):
    entry_id: int
    person_id: str
    camera: str | None
    seen_at: datetime | None
    track_id: str | None
    has_crop: bool = Field(description="GET /gallery/entries/{entry_id}/crop serves its stored crop")
    distance: float = Field(description="Euclidean distance between the unit-length identity codes, in [0, 2]; "
                            "re-ranking leaves it as it is")
    within_match_threshold: bool | None = Field(
        description="distance <= the model's match_threshold: a verdict on the code distance `distance`, not on the "
        "re-ranked order (re-ranking does not change it). The threshold passes 1 % of strangers' pairs, so in a "
        "large gallery a never-enrolled person's best match is usually within it (GET /health "
        "`false_match_rate_at_gallery_size`); null when the model has no threshold")
    same_person: bool | None = Field(
        deprecated=True, description="deprecated: the same value as within_match_threshold, which names what it "
        "says (a code distance under the threshold, not a verdict on identity)")
    rerank_distance: float | None = Field(
        description="the order of a re-ranked answer: (1 - lambda) x the Jaccard distance between the query's and "
        "this entry's k-reciprocal neighbour sets + lambda x distance^2 / 4, in [0, 1], lower is better; null when "
        "not re-ranked or when the entry lies past the K nearest that re-ranking reorders (those follow in "
        "distance order)")


class NoiseArray(BaseModel):
    shape: list[int]
    dtype: Literal["float32"]
    data: str = Field(description="base64 of the little-endian float32 values in C order")


RankedBy = Literal["distance", "rerank_distance"]


class QueryResult(BaseModel):
    matches: list[MatchOut] = Field(description="best first")
    ranked_by: RankedBy = Field(
        description="what orders `matches`: `distance`, or `rerank_distance` when re-ranked (then entries past the "
        "K that re-ranking reorders follow in distance order, and the list is not sorted by distance)")
    identity: list[float] = Field(description="the query's identity code")
    noise: NoiseArray | None = Field(None, description="the query's generator noise (include_noise=true)")
    noise_preview: str | None = Field(None, description="base64 PNG of the clipped noise (noise_preview)")


class BatchResult(BaseModel):
    results: list[QueryResult] = Field(description="one per file, in file order (no noise)")


def rerank_params(encoders: Encoders, settings: Settings, asked: bool | None) -> RerankParams | None:
    """The model's re-ranking parameters when this request re-ranks (asked, or by the server's default), else None."""
    params = RerankParams.from_model(encoders.metadata)
    if asked and params is None:
        raise HTTPException(422, "this model carries no re-ranking parameters (model.json `rerank`, written by "
                            "`genreid tune-rerank`)")
    return params if (settings.rerank if asked is None else asked) else None


def ranked(gallery: GalleryStore, codes: np.ndarray, k: int, entry_filter: EntryFilter, *,
           threshold: float | None, rerank: RerankParams | None) -> list[QueryResult]:
    """The gallery's answer for each code (one, or a row each), in the API's shape, without noise."""

    def out(match: RankedMatch) -> MatchOut:
        entry = match.entry
        within = None if threshold is None else match.distance <= threshold
        return MatchOut(
            entry_id=entry.entry_id, person_id=entry.person_id, camera=entry.camera, seen_at=entry.seen_at,
            track_id=entry.track_id, has_crop=entry.has_crop, distance=match.distance,
            within_match_threshold=within, same_person=within, rerank_distance=match.rerank_distance,
        )

    codes = np.atleast_2d(codes)
    if rerank is not None:
        rows = rerank_search(gallery, codes, k, entry_filter, params=rerank)
    else:
        rows = [[RankedMatch(m.entry, m.distance, None) for m in row] for row in gallery.search(codes, k, entry_filter)]
    by: RankedBy = "distance" if rerank is None else "rerank_distance"
    return [QueryResult(matches=[out(m) for m in row], identity=code.tolist(), ranked_by=by)
            for row, code in zip(rows, codes, strict=True)]


@router.post("", response_model=QueryResult, response_model_exclude_unset=True,
             responses=error_responses(400, 404, 413, 422))
def query(
    services: ServicesDep,
    encoders: EncodersDep,
    gallery: GalleryDep,
    reader: ReaderDep,
    entry_filter: EntryFilterDep,
    file: Annotated[UploadFile | None, File(description="the query crop (or give entry_id)")] = None,
    entry_id: Annotated[
        int | None, Form(ge=1, le=MAX_ENTRY_ID, description="search from this stored entry's code instead of a "
                         "crop; the entry itself is left out of the matches")
    ] = None,
    k: K = 10,
    rerank: Rerank = None,
    include_noise: Annotated[bool, Query(description="return the generator noise array (crops only)")] = True,
    noise_preview: Annotated[bool, Query(description="also return a PNG preview of the noise (crops only)")] = False,
) -> QueryResult:
    """Rank the gallery for one crop or stored entry, best first; also the identity code and, for a crop, by
    default its noise."""
    if (file is None) == (entry_id is None):
        raise HTTPException(422, "give either a file or an entry_id, not both or neither")
    threshold = encoders.metadata.match_threshold
    params = rerank_params(encoders, services.settings, rerank)
    if entry_id is not None:
        code = gallery.codes([entry_id])[0]
        entry_filter = replace(entry_filter, exclude_ids=entry_filter.exclude_ids | {entry_id})
        return ranked(gallery, code, k, entry_filter, threshold=threshold, rerank=params)[0]
    with_noise = include_noise or noise_preview
    networks: tuple[ImageNetwork, ...] = ("inv_id", "inv_noise") if with_noise else ("inv_id",)
    images = reader.read([file], "file", *networks)  # one decode, a resize per network size
    code = encoders.identity(images["inv_id"])[0]
    extra: dict[str, NoiseArray | str] = {}
    if with_noise:
        noise = encoders.noise(images["inv_noise"])[0]
        if include_noise:
            data = base64.b64encode(noise.astype("<f4", copy=False).tobytes()).decode("ascii")
            extra["noise"] = NoiseArray(shape=list(noise.shape), dtype="float32", data=data)
        if noise_preview:
            png = imaging.to_png(imaging.noise_preview(noise))
            extra["noise_preview"] = base64.b64encode(png).decode("ascii")
    return ranked(gallery, code, k, entry_filter, threshold=threshold, rerank=params)[0].model_copy(update=extra)


@router.post("/batch", response_model=BatchResult, response_model_exclude_unset=True,
             responses=error_responses(400, 413, 422))
def query_batch(
    files: Annotated[list[UploadFile], File(description="the query crops")],
    services: ServicesDep,
    encoders: EncodersDep,
    gallery: GalleryDep,
    reader: ReaderDep,
    entry_filter: EntryFilterDep,
    k: K = 10,
    rerank: Rerank = None,
) -> BatchResult:
    """Rank the gallery for many crops in one request: one batched inversion and one batched search."""
    if len(files) > services.settings.max_files:
        raise HTTPException(413, f"{len(files)} files: at most {services.settings.max_files} per request")
    codes = encoders.identity(reader.read(files, "files", "inv_id")["inv_id"])
    return BatchResult(results=ranked(gallery, codes, k, entry_filter, threshold=encoders.metadata.match_threshold,
                                      rerank=rerank_params(encoders, services.settings, rerank)))
