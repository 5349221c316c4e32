"""/health: liveness plus what the server runs on; open even when an API key is set."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from genreid.service.core.false_matches import estimate
from genreid.service.core.model_json import FalseMatches, GalleryFalseMatches
from genreid.service.core.reranking import RerankParams
from genreid.service.dependencies import ServicesDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]
    models_loaded: bool
    models_dir: str
    providers: list[str]
    faiss_device: Literal["cpu", "gpu"] | None = Field(description="the embedded gallery's FAISS device")
    gallery: dict[str, Any] = Field(description="the gallery store: backend and where it is (no credentials)")
    index_size: int
    persons: int
    code_dim: int
    resolution: list[int] = Field(description="the generator's (H, W): what /transfer renders")
    input_sizes: dict[str, list[int]] = Field(description="(H, W) each network reads an upload at")
    match_threshold: float | None = Field(description="the code distance under which a match is "
                                          "`within_match_threshold`: 1 % of strangers' pairs pass it")
    false_matches: FalseMatches | None = Field(
        description="model.json's record of what the threshold means per query: the rate among strangers' pairs, "
        "and the share of a never-enrolled person's queries whose best match passes it, by gallery size (measured, "
        "or extrapolated assuming independent pairs); null when the model has none")
    false_match_rate_at_gallery_size: GalleryFalseMatches | None = Field(
        description="that share estimated for the gallery's current size (`index_size`): interpolated in log size "
        "between measured sizes, else from the per-pair rate assuming independent pairs (`kind` says which); null "
        "without a record")
    model_id: str | None = Field(description="the code space; a gallery holds codes of one model_id only")
    precision: dict[str, str] = Field(description="what each network runs in: int8 or float32")
    rerank: dict[str, bool] = Field(description="`available`: the model carries re-ranking parameters; "
                                    "`default`: /query re-ranks when the request does not say; "
                                    "`neighbourhoods_kept`: the gallery keeps each entry's nearest others as "
                                    "re-ranking needs them (else it searches them: `genreid gallery "
                                    "neighbourhoods` builds them)")


@router.get("/health", response_model=Health)
def health(services: ServicesDep) -> Health:
    encoders = services.encoders
    entries, persons = services.gallery.counts()
    false_matches = encoders.metadata.false_matches
    store = services.gallery.describe()
    params = RerankParams.from_model(encoders.metadata)
    return Health(
        status="ok",
        models_loaded=True,
        models_dir=str(encoders.models_dir),
        providers=list(encoders.providers),
        faiss_device=store.get("faiss_device"),
        gallery=store,
        index_size=entries,
        persons=persons,
        code_dim=encoders.metadata.code_dim,
        resolution=list(encoders.resolution),
        input_sizes={network: list(size) for network, size in encoders.input_sizes.items()},
        match_threshold=encoders.metadata.match_threshold,
        false_matches=false_matches,
        false_match_rate_at_gallery_size=None if false_matches is None else estimate(false_matches, entries),
        model_id=encoders.metadata.model_id,
        precision=dict(encoders.precision),
        rerank={"available": params is not None, "default": params is not None and services.settings.rerank,
                "neighbourhoods_kept": params is not None
                and services.gallery.neighbourhood_size >= params.neighbours_kept},
    )
