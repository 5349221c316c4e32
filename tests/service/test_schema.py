"""Property-based fuzzing over the app's own OpenAPI schema, in process: no operation may answer 5xx, and
every answer must be one the schema documents (status, content type, body shape)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from genreid.service.app import create_app
from genreid.service.settings import Settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Building the schema needs no models: the lifespan, which loads them, does not run for openapi().
OPERATIONS = [
    f"{method.upper()} {path}" for path, methods in create_app(Settings()).openapi()["paths"].items()
    for method in methods
]
FILE_FIELDS = ("files", "file", "identity", "pose")


@pytest.fixture(scope="module")
def api_schema(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> schemathesis.BaseSchema:
    """One app for all operations, in schema order, so the gallery the POSTs fill is there for the rest."""
    app_settings = Settings(models=models_dir, data=tmp_path_factory.mktemp("fuzz"), device="cpu", threads=1,
                            max_upload_bytes=64 * 1024)
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(app_settings))


def with_images(images: list[bytes]) -> Callable[[schemathesis.Case], schemathesis.Case]:
    """Random bytes are never images: swap real crops into generated forms (one per person_id) so the
    fuzzer also reaches the paths past decoding."""

    def swap(case: schemathesis.Case) -> schemathesis.Case:
        # Only forms carry files: a JSON body with a stray "file" key (merge's extra properties) stays JSON.
        if case.media_type != "multipart/form-data" or not isinstance(case.body, dict):
            return case
        labels = case.body.get("person_id")
        if isinstance(labels, list) and labels:
            case.body["files"] = labels
            if isinstance(case.body.get("camera"), list):
                case.body["camera"] = (case.body["camera"] + [""] * len(labels))[: len(labels)]
        for field in FILE_FIELDS:
            value = case.body.get(field)
            if isinstance(value, list):
                case.body[field] = [images[i % len(images)] for i in range(len(value))]
            elif value is not None:
                case.body[field] = images[0]
        return case

    return swap


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_server_errors_and_only_documented_answers(api_schema: schemathesis.BaseSchema, crop, label: str):
    operation = api_schema.find_operation_by_label(label)
    generated = [operation.as_strategy(mode) for mode in GenerationMode]
    cases = st.one_of(*generated, generated[0].map(with_images([crop(i) for i in range(3)])))

    @given(case=cases)
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    fuzz()
