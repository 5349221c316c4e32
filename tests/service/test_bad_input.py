"""Every kind of bad request gets its 4xx with a string detail, stores nothing, and the service goes on."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from genreid.service.app import create_app

MAX_UPLOAD = 20_000
MAX_FILES = 3
CROP = (48, 96)  # width, height of the conftest crops: exactly the pixel limit below
MAX_PIXELS = CROP[0] * CROP[1]


def png_claiming(width: int, height: int, crop: bytes) -> bytes:
    """A real PNG whose header is rewritten to claim a huge size: a decompression bomb's calling card."""
    ihdr = bytearray(crop[8 + 8 : 8 + 8 + 13])
    ihdr[0:8] = struct.pack(">II", width, height)
    chunk = b"IHDR" + bytes(ihdr)
    return crop[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + crop[8 + 25 :]


def noise_png(size: int) -> bytes:
    """Incompressible pixels, so the file is about 3 * size * size bytes."""
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def limited(make_settings, enrol) -> Iterator[TestClient]:
    """A client with small limits and two stored entries."""
    settings = make_settings(max_upload_bytes=MAX_UPLOAD, max_files=MAX_FILES, max_pixels=MAX_PIXELS)
    with TestClient(create_app(settings)) as client:
        enrol(client, [(1, 0), (2, 0)])
        yield client


def gallery_form(files: list[bytes], person_ids: list[str] | None, **data: Any) -> dict[str, Any]:
    form = {"person_id": person_ids, **data} if person_ids is not None else data
    return {"files": [("files", (f"{i}.img", content)) for i, content in enumerate(files)], "data": form}


def to_gallery(files: list[bytes], ids: list[str] | None, **data: Any) -> tuple[str, str, dict[str, Any]]:
    return "post", "/gallery", gallery_form(files, ids, **data)


def bad_requests(crop: Callable[..., bytes]) -> dict[str, tuple[str, str, dict[str, Any], int]]:
    good = crop(3)
    jpeg = crop(3, fmt="JPEG")
    bomb = png_claiming(100_000, 100_000, good)
    too_wide = crop(3, size=(CROP[0] + 1, CROP[1]))
    many = MAX_FILES + 1
    query_with = {"files": {"file": ("q.png", good)}}
    return {
        "non-image bytes": (*to_gallery([b"GIF89a not really"], ["p"]), 422),
        "text file": (*to_gallery([b"hello, world\n" * 20], ["p"]), 422),
        "truncated jpeg": (*to_gallery([jpeg[: len(jpeg) // 2]], ["p"]), 422),
        "empty file": (*to_gallery([b""], ["p"]), 422),
        "decompression bomb": (*to_gallery([bomb], ["p"]), 422),
        "over max pixels": (*to_gallery([too_wide], ["p"]), 422),
        "oversize upload": (*to_gallery([noise_png(100)], ["p"]), 413),
        "too many files": (*to_gallery([good] * many, ["p"] * many), 413),
        "fewer person ids than files": (*to_gallery([good, good], ["p"]), 422),
        "more person ids than files": (*to_gallery([good], ["p", "q"]), 422),
        "camera count mismatch": (*to_gallery([good, good], ["p", "q"], camera=["c1"]), 422),
        "empty person id": (*to_gallery([good], [""]), 422),
        "blank person id": (*to_gallery([good], ["   "]), 422),
        "missing person id": (*to_gallery([good], None), 422),
        "missing files": ("post", "/gallery", {"data": {"person_id": ["p"]}}, 422),
        "one bad file of three": (*to_gallery([good, b"junk", good], ["a", "b", "c"]), 422),
        "query k = 0": ("post", "/query", {**query_with, "params": {"k": 0}}, 422),
        "query k < 0": ("post", "/query", {**query_with, "params": {"k": -3}}, 422),
        "query k not a number": ("post", "/query", {**query_with, "params": {"k": "ten"}}, 422),
        "query without file": ("post", "/query", {"data": {"x": "1"}}, 422),
        "query of non-image": ("post", "/query", {"files": {"file": ("q.png", b"\x89PNG\r\n\x1a\n")}}, 422),
        "query of empty file": ("post", "/query", {"files": {"file": ("q.png", b"")}}, 422),
        "transfer without pose": ("post", "/transfer", {"files": {"identity": ("a.png", good)}}, 422),
        "transfer of truncated jpeg": (
            "post", "/transfer", {"files": {"identity": ("a.png", good), "pose": ("b.jpg", jpeg[:300])}}, 422
        ),
        "transfer scale 9": (
            "post", "/transfer",
            {"files": {"identity": ("a.png", good), "pose": ("b.png", good)}, "params": {"scale": 9}}, 422,
        ),
        "unknown entry": ("delete", "/gallery/entries/999", {}, 404),
        "entry id 0": ("delete", "/gallery/entries/0", {}, 422),
        "entry id not a number": ("delete", "/gallery/entries/abc", {}, 422),
        "unknown person": ("delete", "/gallery/persons/nobody", {}, 404),
    }


# The names only, for parametrize; each test builds its requests with the real crop fixture.
CASES = list(bad_requests(lambda *_, **__: noise_png(4)))


@pytest.mark.parametrize("case", CASES)
def test_bad_request_is_refused_and_changes_nothing(limited: TestClient, crop, case: str):
    method, path, kwargs, expected = bad_requests(crop)[case]
    before = limited.get("/gallery").json()
    response = limited.request(method.upper(), path, **kwargs)
    assert response.status_code == expected, response.text
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]
    assert limited.get("/gallery").json() == before
    still_serving = limited.post("/query", files={"file": ("q.png", crop(1))})
    assert still_serving.status_code == 200 and still_serving.json()["matches"][0]["person_id"] == "p1"


def test_bad_image_detail_names_the_file(limited: TestClient, crop):
    response = limited.post("/gallery", **gallery_form([crop(3), b"junk"], ["a", "b"]))
    assert response.status_code == 422
    assert "files[1]" in response.json()["detail"] and "'1.img'" in response.json()["detail"]


def test_chunked_upload_over_the_limit_is_refused_while_reading(limited: TestClient, crop):
    """No Content-Length to check up front: the limit must hold while the body streams in."""
    request = limited.build_request("POST", "/gallery", **gallery_form([noise_png(100)], ["p"]))
    body = request.read()
    assert len(body) > MAX_UPLOAD

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    headers = {"content-type": request.headers["content-type"]}
    response = limited.post("/gallery", content=chunks(), headers=headers)
    assert response.status_code == 413 and "bytes" in response.json()["detail"]
    assert limited.get("/gallery").json()["entries"] == 2


def test_chunked_upload_under_the_limit_is_accepted(limited: TestClient, crop):
    request = limited.build_request("POST", "/gallery", **gallery_form([crop(3)], ["p3"]))
    response = limited.post("/gallery", content=iter([request.read()]), headers=dict(request.headers))
    assert response.status_code == 201
    assert limited.get("/gallery").json()["entries"] == 3
