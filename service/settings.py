"""Every knob of `genreid serve` in one place: a GENREID_* environment variable or a flag (flags win)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.imaging import DEFAULT_MAX_PIXELS

ENV_PREFIX = "GENREID_"
# Where the shipped models are: beside the package in a source checkout (editable install), or where a wheel
# install puts pyproject's data-files.
SHIPPED_MODELS = (Path(__file__).resolve().parent.parent / "models", Path(sys.prefix) / "share" / "genreid" / "models")


def default_models() -> Path:
    """The first shipped model directory that exists (the checkout's when none does, so errors name it)."""
    return next((path for path in SHIPPED_MODELS if (path / "model.json").is_file()), SHIPPED_MODELS[0])


class Settings(BaseSettings):
    """Read once at start; `create_app` takes it explicitly so tests and embedders need no environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True)

    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    models: Path = Field(default_factory=default_models,
                         description="exported model directory (model.json + ONNX files); default: the shipped one")
    data: Path = Field(Path("genreid-data"), description="directory of the embedded gallery (without --gallery-uri)")
    gallery_uri: str | None = Field(
        None, description="a Milvus gallery instead of the embedded one: http(s)://host:19530 for a server or "
        "cluster, or a path ending in .db for milvus-lite in this process (needs the milvus extra)",
    )
    gallery_collection: str = Field(
        "genreid", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,200}$",
        description="the Milvus collection holding the gallery (one per model: a model upgrade re-embeds into a "
        "new one)",
    )
    gallery_index: str = Field(
        "FLAT", description="the Milvus vector index: FLAT (exact), or HNSW / IVF_FLAT with parameters, e.g. "
        "HNSW:M=16,efConstruction=200,ef=64 (docs/BENCHMARKS.md measures recall and latency)",
    )
    gallery_token: SecretStr | None = Field(
        None, description="Milvus credentials (user:password or an API key); never shown in /health or logs"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="inference and FAISS device: auto uses a GPU when one is usable"
    )
    max_upload_bytes: int = Field(32 * 1024 * 1024, ge=1, description="largest request body in bytes")
    max_files: int = Field(64, ge=1, description="most images in one POST /gallery")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="largest decoded image (width x height)")
    api_key: SecretStr | None = Field(
        None, description="when set (non-empty), every route but /health needs it in X-API-Key"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="logging")
    threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads, one pool for all networks (0: one per core)"
    )
    search_threads: int = Field(
        1, ge=1, description="FAISS threads per search: 1 avoids OpenMP spinning against inference threads"
    )
    power_safe: bool = Field(
        False, description="fsync every gallery write (survives power loss; kill -9 is survived either way)"
    )
    store_crops: bool = Field(
        True, description="keep each enrolled crop as a small WebP beside its code (false: codes only)"
    )
    rerank: bool = Field(
        False, description="/query re-ranks by default (k-reciprocal, with the parameters in model.json; "
        "a model without them serves code-distance order); ?rerank= overrides it per request",
    )

    @field_validator("api_key", "gallery_token", "gallery_uri", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        # GENREID_API_KEY= in an env file means "no key", not "the empty key".
        return None if value == "" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
