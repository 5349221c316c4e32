"""The app's upload reader (genreid.service.dependencies.ImageReader): one decode per file, one resize per distinct
input size among the networks a route feeds, each batch equal to the one preprocessing path's output."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi import HTTPException, UploadFile
from PIL import Image

from genreid.service.core.imaging import preprocess
from genreid.service.dependencies import ImageReader

FINER = {"inv_id": (128, 64), "inv_noise": (64, 32), "denoiser": (64, 32)}


def uploads(files: list[bytes]) -> list[UploadFile]:
    return [UploadFile(io.BytesIO(data), filename=f"{i}.img") for i, data in enumerate(files)]


def test_each_network_gets_the_upload_at_its_own_size(crop) -> None:
    files = [crop(1), crop(2, 3, fmt="JPEG")]
    reader = ImageReader(FINER, crop_size=(128, 64), max_pixels=10**6)
    images, crops = reader.read_with_crops(uploads(files), "files", "inv_id", "inv_noise", crops=True)
    for network in ("inv_id", "inv_noise"):
        np.testing.assert_array_equal(images[network], np.stack([preprocess(data, FINER[network]) for data in files]))
    assert [Image.open(io.BytesIO(kept)).size for kept in crops] == [(64, 128)] * 2


def test_networks_of_one_size_share_one_batch(crop) -> None:
    reader = ImageReader(dict.fromkeys(FINER, (64, 32)), crop_size=(128, 64), max_pixels=10**6)
    images = reader.read(uploads([crop(1)]), "file", "inv_id", "inv_noise")
    assert images["inv_id"] is images["inv_noise"]
    assert images["inv_id"].shape == (1, 3, 64, 32)


def test_one_bad_file_refuses_the_request_naming_it(crop) -> None:
    reader = ImageReader(FINER, crop_size=(128, 64), max_pixels=10**6)
    with pytest.raises(HTTPException, match=r"files\[1\] \('1.img'\): not a readable image"):
        reader.read(uploads([crop(1), b"not an image"]), "files", "inv_id")
