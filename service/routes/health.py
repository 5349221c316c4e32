"""/health: liveness plus what the server runs on; open even when an API key is set."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from service.dependencies import ServicesDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]
    models_loaded: bool
    models_dir: str
    providers: list[str]
    faiss_device: Literal["cpu", "gpu"]
    index_size: int
    persons: int
    code_dim: int
    resolution: list[int]
    match_threshold: float | None


@router.get("/health", response_model=Health)
def health(services: ServicesDep) -> Health:
    encoders = services.encoders
    entries, persons = services.gallery.counts()
    return Health(
        status="ok",
        models_loaded=True,
        models_dir=str(encoders.models_dir),
        providers=list(encoders.providers),
        faiss_device=services.faiss_device,
        index_size=entries,
        persons=persons,
        code_dim=encoders.metadata.code_dim,
        resolution=list(encoders.resolution),
        match_threshold=encoders.metadata.match_threshold,
    )
