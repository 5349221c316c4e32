"""/health: liveness plus what the server runs on; open even when an API key is set."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

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
    match_threshold: float | None
    model_id: str | None = Field(description="the code space; a gallery holds codes of one model_id only")
    precision: dict[str, str] = Field(description="what each network runs in: int8 or float32")
    rerank: dict[str, bool] = Field(description="`available`: the model carries re-ranking parameters; "
                                    "`default`: /query re-ranks when the request does not say")


@router.get("/health", response_model=Health)
def health(services: ServicesDep) -> Health:
    encoders = services.encoders
    entries, persons = services.gallery.counts()
    store = services.gallery.describe()
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
        model_id=encoders.metadata.model_id,
        precision=dict(encoders.precision),
        rerank={"available": RerankParams.from_model(encoders.metadata) is not None,
                "default": services.settings.rerank},
    )
