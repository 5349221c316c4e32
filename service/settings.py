"""Every knob of `genreid serve` in one place: a GENREID_* environment variable or a flag (flags win)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from genreid.service.core.imaging import DEFAULT_MAX_PIXELS
from genreid.service.keys import key_ring

ENV_PREFIX = "GENREID_"
# Where the shipped models are: beside the package in a source checkout (editable install), or where a wheel
# install puts pyproject's data-files.
SHIPPED_MODELS = (Path(__file__).resolve().parent.parent / "models", Path(sys.prefix) / "share" / "genreid" / "models")


def default_models() -> Path:
    """The first shipped model directory that exists (the checkout's when none does, so errors name it)."""
    return next((path for path in SHIPPED_MODELS if (path / "model.json").is_file()), SHIPPED_MODELS[0])


def describe_errors(err: ValidationError) -> str:
    """Settings errors in one line, without the values given (a key list's secrets must not reach a terminal)."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_input=False))


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
    api_keys: SecretStr | None = Field(
        None, description="named keys with roles, name:role:secret,name2:role:secret2 (roles: metrics, query, "
        "admin; docs/OPERATIONS.md); api_key, if also set, is an admin key named default",
    )
    audit_log: Path | None = Field(
        None, description="append-only JSON lines of every write and deletion (default: DATA/audit.jsonl)"
    )
    retention_days: int | None = Field(
        None, ge=1, description="delete entries (and crops) enrolled more than this many days ago, hourly"
    )
    log_format: Literal["text", "json"] = Field("text", description="log lines as text, or one JSON object each")
    metrics_public: bool = Field(False, description="serve GET /metrics without a key")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="logging")
    precision: Literal["auto", "float", "int8"] = Field(
        "auto", description="network precision: auto serves the INT8 variants model.json picks for CPUs (about "
        "twice as fast, parity in the model card) and float32 on CUDA; float or int8 forces one",
    )
    threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads, one pool for all networks (0: one per core)"
    )
    search_threads: int = Field(
        1, ge=1, description="FAISS threads per search: 1 avoids OpenMP spinning against inference threads"
    )
    power_safe: bool = Field(
        False,
        description="fsync every gallery write and audit record (survives power loss; kill -9 is survived either way)",
    )
    store_crops: bool = Field(
        True, description="keep each enrolled crop as a small WebP beside its code (false: codes only)"
    )
    rerank: bool = Field(
        True, description="/query re-ranks by default (k-reciprocal, with the parameters in model.json, over the "
        "neighbourhoods the gallery keeps; a model without them serves code-distance order); ?rerank= overrides "
        "it per request",
    )

    @field_validator("api_key", "api_keys", "gallery_token", "gallery_uri", "audit_log", "retention_days",
                     mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        # GENREID_API_KEY= in an env file means "no key", not "the empty key".
        return None if value == "" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # A malformed key list stops the start (describe_errors reports it without the secrets).
        key_ring(api_key=info.data.get("api_key"), api_keys=value)
        return value

    @property
    def audit_path(self) -> Path:
        return self.audit_log if self.audit_log is not None else self.data / "audit.jsonl"
