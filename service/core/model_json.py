"""model.json: what travels with the exported ONNX files, one typed and versioned schema.

The service reads it at start (input sizes, normalisation, schedule, threshold, code space, precisions, re-ranking
parameters); training writes it once, in `genreid export` (training/export.py assembles every section, then saves).
A run started `--from` an export reads its preset here. Files of schema 1 (before `schema_version` existed: the
preset only by name, the card holding the rest) still load.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from genreid.service.core.schedule import Schedule

METADATA_FILE = "model.json"
SCHEMA_VERSION = 2
# The float32 networks: every device can serve them, and a CUDA host always does.
MODEL_FILES = {"inv_id": "inv_id.onnx", "inv_noise": "inv_noise.onnx", "denoiser": "denoiser.onnx"}


# Sections added after schema 2's first exports: written only when present, so re-saving an older file (as
# `genreid tune-rerank` and `genreid calibrate-false-matches` do) adds nothing but what the command measured.
LATER_SECTIONS = ("mult_adds", "false_matches")


Precision = Literal["auto", "float", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


class ModelError(RuntimeError):
    """The model directory is missing, incomplete or unusable."""


def input_sizes(resolution: tuple[int, int], identity_resolution: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """network -> the (H, W) of the images it takes: Inv-Id its own, Inv-Noise and the denoiser (its noisy input)
    the generator's `resolution`."""
    return {"inv_id": identity_resolution, "inv_noise": resolution, "denoiser": resolution}


@dataclass(frozen=True)
class IdentityCodes:
    """The generator's identity-code table, kept beside the networks so a run `--from` the export need not recover
    it; `recovered`: the table was itself recovered by inversion (the export's run started from another export)."""

    file: str
    recovered: bool


@dataclass(frozen=True)
class Quantization:
    """How a network's INT8 file was made and what it scored against float32 on the validation identities."""

    calibration_crops: int
    max_validation_mAP_loss: float
    validation: dict[str, dict[str, float]]  # "float32" / "int8" -> metrics
    calibration: str = "minimum and maximum"  # activation ranges (the first INT8 exports said nothing: min-max)


@dataclass(frozen=True)
class GalleryFalseMatches:
    """The share of queries of a never-enrolled person whose best match in a gallery of `gallery` crops is within
    the match threshold; `kind`: "measured", "extrapolated (independent pairs)" from the per-pair rate, or (an
    estimate for a gallery's size, not recorded) "interpolated (log gallery size)"."""

    gallery: int
    rate: float
    kind: str


@dataclass(frozen=True)
class FalseMatches:
    """What the per-pair match threshold means per query (`genreid calibrate-false-matches`): `per_pair` is the
    rate among strangers' pairs, `per_query` grows with the gallery, since each query makes one pair per entry."""

    per_pair: float
    per_query: tuple[GalleryFalseMatches, ...]
    measured_on: str  # the data folder, its queries and gallery crops
    precision: str  # of the Inv-Id that made the codes: int8 or float32, as a CPU serves it

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FalseMatches:
        return cls(**{**raw, "per_query": tuple(GalleryFalseMatches(**row) for row in raw["per_query"])})


@dataclass(frozen=True)
class ModelMetadata:
    """Never re-derived at serve time. Sections a test or an old export may lack are None or empty."""

    resolution: tuple[int, int]  # the generator's (H, W): Inv-Noise reads it, the denoiser draws it
    code_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    schedule: Schedule
    steps: int  # of the sampler that /transfer draws with
    match_threshold: float | None = None
    # The code space: codes of two models compare only when these agree (a gallery records it on first write).
    model_id: str | None = None
    # network -> its INT8 file, and network -> "int8" where that file serves CPUs by default (it kept the
    # float model's accuracy); a network absent from either is served in float32.
    int8_files: dict[str, str] = field(default_factory=dict)
    cpu_precision: dict[str, str] = field(default_factory=dict)
    # Inv-Id's input (H, W): it may read finer crops than the generator draws. None means `resolution`.
    inv_id_resolution: tuple[int, int] | None = None
    # The training run's preset: every field (schema 1 kept only its name, under "name").
    preset: dict[str, Any] = field(default_factory=dict)
    inv_id_mode: str | None = None  # which Inv-Id the export serves (hybrid, paper, discriminative)
    validation: dict[str, Any] = field(default_factory=dict)  # the served Inv-Id's metrics on validation identities
    reconstruction: dict[str, float] | None = None  # Inv-Id + Inv-Noise + denoiser round trip on validation crops
    code_stats: dict[str, float] | None = None  # distances in the generator's identity-code table
    identities: int | None = None  # training identities (rows of the code table)
    identity_codes: IdentityCodes | None = None
    parameters: dict[str, int] = field(default_factory=dict)  # per network
    mult_adds: dict[str, int] = field(default_factory=dict)  # per network that reads a crop, for one crop
    onnx_parity_max_abs: dict[str, float] = field(default_factory=dict)  # ONNX Runtime against torch, per network
    quantization: dict[str, Quantization] = field(default_factory=dict)  # per network with an INT8 file
    rerank: dict[str, Any] | None = None  # k1, k2, lambda, candidates and how they were chosen (training/rerank.py)
    false_matches: FalseMatches | None = None  # per-query false-match rates by gallery size
    schema_version: int = SCHEMA_VERSION

    @property
    def identity_resolution(self) -> tuple[int, int]:
        """Inv-Id's input (H, W)."""
        return self.inv_id_resolution or self.resolution

    @property
    def input_sizes(self) -> dict[str, tuple[int, int]]:
        return input_sizes(self.resolution, self.identity_resolution)

    @property
    def preset_name(self) -> str | None:
        return self.preset.get("name")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelMetadata:
        version = raw.get("schema_version", 1)
        if version > SCHEMA_VERSION:
            raise ModelError(f"model.json schema {version} is newer than this genreid reads ({SCHEMA_VERSION})")
        preset = raw.get("preset", {})
        codes = raw.get("identity_codes")
        known = {f.name for f in fields(cls)} | {"files"}
        values: dict[str, Any] = {key: value for key, value in raw.items() if key in known and key != "files"}
        values.update(
            resolution=tuple(raw["resolution"]),
            mean=tuple(raw["mean"]),
            std=tuple(raw["std"]),
            schedule=Schedule(raw["schedule"]["max_signal_rate"], raw["schedule"]["min_signal_rate"]),
            inv_id_resolution=tuple(raw["inv_id_resolution"]) if raw.get("inv_id_resolution") else None,
            preset={"name": preset} if isinstance(preset, str) else dict(preset),
            identity_codes=None if codes is None else IdentityCodes(**codes),
            quantization={name: Quantization(**report) for name, report in raw.get("quantization", {}).items()},
            false_matches=None if raw.get("false_matches") is None else FalseMatches.from_dict(raw["false_matches"]),
            schema_version=SCHEMA_VERSION,
        )
        return cls(**values)

    @classmethod
    def load(cls, models_dir: str | Path) -> ModelMetadata:
        path = Path(models_dir) / METADATA_FILE
        if not path.is_file():
            raise ModelError(f"{path}: no model metadata (export a model with `genreid export`)")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as err:
            raise ModelError(f"{path}: not a readable model.json ({err})") from err

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.update(resolution=list(self.resolution), mean=list(self.mean), std=list(self.std),
                      schedule=self.schedule.as_dict(), files=MODEL_FILES)
        if self.inv_id_resolution is None:  # one input size for all: written as exports before it wrote them
            del values["inv_id_resolution"]
        else:
            values["inv_id_resolution"] = list(self.inv_id_resolution)
        for name in LATER_SECTIONS:  # absent, as in the exports from before them
            if not values[name]:
                del values[name]
        return {"schema_version": values.pop("schema_version"), **values}

    def precisions(self, precision: Precision, *, cuda: bool) -> dict[str, str]:
        """network -> "int8" or "float32" for `precision` ("auto": model.json's `cpu_precision` on a CPU, float32
        on CUDA; "float": float32 everywhere; "int8": every INT8 variant there is, Inv-Id's at least)."""
        if precision not in PRECISIONS:
            raise ModelError(f"precision {precision!r}: choose one of {PRECISIONS}")
        if precision == "int8" and "inv_id" not in self.int8_files:
            raise ModelError("precision 'int8' requested but model.json lists no INT8 Inv-Id "
                             "(`genreid export --to MODELS --data MARKET` makes one)")
        unknown = {name for name, kind in self.cpu_precision.items() if kind == "int8"} - set(self.int8_files)
        if unknown:
            raise ModelError(f"model.json serves {sorted(unknown)} in int8 on CPU but lists no INT8 file for them")
        chosen = {
            "float": {},
            "int8": dict.fromkeys(self.int8_files, "int8"),
            "auto": {} if cuda else self.cpu_precision,
        }[precision]
        return {name: chosen.get(name, "float32") for name in MODEL_FILES}

    def save(self, models_dir: str | Path) -> Path:
        """Called by `genreid export` alone (training/export.py), once it has assembled every section."""
        path = Path(models_dir) / METADATA_FILE
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        return path
