"""The one preprocessing path (genreid.service.core.imaging): every PIL mode and common format to float32 (3, 64, 32) in
[0, 1], resizing, the errors bad input gets, and the PNG / noise display helpers."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genreid.service.core.imaging import (
    ImageError,
    decode_resized,
    decode_rgb,
    noise_preview,
    preprocess,
    resized,
    stored_crop,
    stored_crop_size,
    to_chw_float,
    to_png,
    to_rgb,
)

H, W = 64, 32
RNG = np.random.default_rng(1234)
RGB_PIXELS = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
GREY_PIXELS = RNG.integers(0, 256, (H, W), dtype=np.uint8)
# A smooth picture (lossy codecs keep it close): red rises down, green across, blue constant.
_rows, _cols = np.mgrid[0:H, 0:W]
SMOOTH_PIXELS = np.dstack([_rows * 4, _cols * 8, np.full((H, W), 90)]).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def check_model_input(array: np.ndarray) -> None:
    assert array.dtype == np.float32
    assert array.shape == (3, H, W)
    assert np.isfinite(array).all()
    assert array.min() >= 0.0 and array.max() <= 1.0


def chw(pixels_hwc: np.ndarray) -> np.ndarray:
    """Independent expectation: uint8 HWC -> float CHW / 255."""
    return pixels_hwc.astype(np.float64).transpose(2, 0, 1) / 255.0


# ---------------------------------------------------------------------------------------------- PIL modes


def _palette_image(transparent: bool) -> Image.Image:
    image = Image.fromarray(RGB_PIXELS).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    if transparent:
        image.info["transparency"] = 0
    return image


MODE_IMAGES = {
    "RGB": lambda: Image.fromarray(RGB_PIXELS),
    "RGBA": lambda: Image.fromarray(np.dstack([RGB_PIXELS, GREY_PIXELS])),
    "L": lambda: Image.fromarray(GREY_PIXELS),
    "LA": lambda: Image.fromarray(GREY_PIXELS).convert("LA"),
    "P": lambda: _palette_image(transparent=False),
    "P-transparent": lambda: _palette_image(transparent=True),
    "CMYK": lambda: Image.fromarray(RGB_PIXELS).convert("CMYK"),
    "I;16": lambda: Image.fromarray(GREY_PIXELS.astype(np.uint16) * 257),
    "I": lambda: Image.fromarray(GREY_PIXELS.astype(np.int32) * 257),
    "F": lambda: Image.fromarray(GREY_PIXELS.astype(np.float32)),
    "1": lambda: Image.fromarray(GREY_PIXELS > 127),
}


@pytest.mark.parametrize("name", list(MODE_IMAGES))
def test_every_mode_becomes_float_chw_in_unit_range(name: str) -> None:
    image = MODE_IMAGES[name]()
    assert image.mode == name.split("-")[0]
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (W, H)
    # Through a lossless container so the decoder sees the mode too (TIFF keeps all of these modes).
    check_model_input(preprocess(encode(image, "TIFF")))


def test_grey_modes_keep_their_brightness() -> None:
    """8-bit grey, 16-bit grey scaled by 257, 32-bit int and float grey all map to the same [0,1] values."""
    expected = np.broadcast_to(GREY_PIXELS / 255.0, (3, H, W))
    for name in ("L", "I;16", "I", "F"):
        result = preprocess(encode(MODE_IMAGES[name](), "TIFF"))
        np.testing.assert_allclose(result, expected, atol=0.5 / 255 + 1e-6, err_msg=name)


def test_bilevel_mode_is_black_and_white() -> None:
    result = preprocess(encode(MODE_IMAGES["1"](), "TIFF"))
    expected = np.broadcast_to((GREY_PIXELS > 127).astype(np.float64), (3, H, W))
    np.testing.assert_array_equal(result, expected)


def test_rgba_drops_alpha_and_keeps_colour() -> None:
    result = preprocess(encode(MODE_IMAGES["RGBA"](), "PNG"))
    np.testing.assert_allclose(result, chw(RGB_PIXELS), atol=1e-7)


def test_palette_with_transparency_uses_palette_colours() -> None:
    image = _palette_image(transparent=True)
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 0
    palette = np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
    expected = palette[np.asarray(image)]
    np.testing.assert_allclose(preprocess(data), chw(expected), atol=1e-7)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_mid_grey_is_half_not_saturated(fmt: str) -> None:
    image = Image.fromarray(np.full((H, W), 32768, dtype=np.uint16))
    assert image.mode == "I;16"
    result = preprocess(encode(image, fmt))
    check_model_input(result)
    # 32768 / 65535 = 0.50001 -> 8-bit 128 -> 0.502; an 8-bit reading would clip to 1.0.
    np.testing.assert_allclose(result, 0.5, atol=1.0 / 255)


def test_sixteen_bit_dark_grey_stays_dark() -> None:
    image = Image.fromarray(np.full((H, W), 200, dtype=np.uint16))  # 200 / 65535: nearly black
    assert preprocess(encode(image, "PNG")).max() <= 1.0 / 255


def test_cmyk_white_and_black() -> None:
    cmyk = np.zeros((H, W, 4), dtype=np.uint8)
    cmyk[H // 2 :, :, 3] = 255  # bottom half full black ink
    result = preprocess(encode(Image.fromarray(cmyk, mode="CMYK"), "TIFF"))
    np.testing.assert_array_equal(result[:, : H // 2], 1.0)
    np.testing.assert_array_equal(result[:, H // 2 :], 0.0)


# --------------------------------------------------------------------------------------------- formats

FORMATS = {
    "JPEG": ("RGB", {"quality": 95}),
    "PNG": ("RGB", {}),
    "BMP": ("RGB", {}),
    "WEBP": ("RGB", {"lossless": True}),
    "GIF": ("P", {}),
    "TIFF": ("RGB", {}),
}
LOSSLESS = {"PNG", "BMP", "WEBP", "TIFF"}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_formats_from_bytes_and_path_agree(fmt: str, tmp_path: Path) -> None:
    mode, options = FORMATS[fmt]
    data = encode(Image.fromarray(RGB_PIXELS).convert(mode), fmt, **options)
    path = tmp_path / f"crop.{fmt.lower()}"
    path.write_bytes(data)
    from_bytes = preprocess(data)
    check_model_input(from_bytes)
    np.testing.assert_array_equal(preprocess(path), from_bytes)
    np.testing.assert_array_equal(preprocess(str(path)), from_bytes)
    np.testing.assert_array_equal(preprocess(bytearray(data)), from_bytes)
    np.testing.assert_array_equal(preprocess(memoryview(data)), from_bytes)
    if fmt in LOSSLESS:
        np.testing.assert_allclose(from_bytes, chw(RGB_PIXELS), atol=1e-7)
    elif fmt == "GIF":  # exactly the palette colours it was saved with
        quantised = np.asarray(Image.fromarray(RGB_PIXELS).convert("P").convert("RGB"))
        np.testing.assert_allclose(from_bytes, chw(quantised), atol=1e-7)


def test_jpeg_is_close_to_the_original_picture() -> None:
    result = preprocess(encode(Image.fromarray(SMOOTH_PIXELS), "JPEG", quality=95))
    assert np.abs(result - chw(SMOOTH_PIXELS)).max() < 8 / 255


def test_model_size_image_is_left_untouched() -> None:
    data = encode(Image.fromarray(RGB_PIXELS), "PNG")
    pixels = decode_resized(data)
    assert pixels.dtype == np.uint8 and pixels.shape == (H, W, 3)
    np.testing.assert_array_equal(pixels, np.asarray(Image.fromarray(RGB_PIXELS)))
    expected = np.asarray(Image.fromarray(RGB_PIXELS), dtype=np.float32) / 255.0
    np.testing.assert_array_equal(preprocess(data), expected.transpose(2, 0, 1))


def test_double_size_image_is_resized_to_model_size() -> None:
    top, bottom = np.array([200, 10, 30], np.uint8), np.array([5, 90, 250], np.uint8)
    pixels = np.empty((2 * H, 2 * W, 3), dtype=np.uint8)
    pixels[:H] = top
    pixels[H:] = bottom
    result = decode_resized(encode(Image.fromarray(pixels), "PNG"))
    assert result.shape == (H, W, 3) and result.dtype == np.uint8
    # Rows far from the boundary see only one colour whatever the filter's support.
    np.testing.assert_array_equal(result[: H // 2 - 2], np.broadcast_to(top, (H // 2 - 2, W, 3)))
    np.testing.assert_array_equal(result[H // 2 + 2 :], np.broadcast_to(bottom, (H // 2 - 2, W, 3)))
    # The boundary rows blend the two colours.
    boundary = result[H // 2 - 1 : H // 2 + 1].astype(int)
    assert (boundary >= np.minimum(top, bottom)).all() and (boundary <= np.maximum(top, bottom)).all()


def test_other_sizes_and_custom_target_size() -> None:
    odd = Image.fromarray(RNG.integers(0, 256, (97, 41, 3), dtype=np.uint8))
    check_model_input(preprocess(encode(odd, "PNG")))
    assert preprocess(encode(odd, "PNG"), size=(32, 16)).shape == (3, 32, 16)


def test_one_decode_resized_per_network_size_equals_preprocess_at_that_size() -> None:
    """What the service does with an upload that feeds two networks of different input sizes."""
    data = encode(Image.fromarray(RNG.integers(0, 256, (97, 41, 3), dtype=np.uint8)), "PNG")
    image = decode_rgb(data)
    for size in ((H, W), (2 * H, 2 * W)):
        np.testing.assert_array_equal(to_chw_float(resized(image, size)), preprocess(data, size))


# ------------------------------------------------------------------------------------------ stored crops


@pytest.mark.parametrize(("resolution", "identity", "kept"), [
    ((64, 32), (64, 32), (128, 64)),  # one size for all (the shipped model): twice it, for the operator
    ((64, 32), (128, 64), (128, 64)),  # Inv-Id at twice the generator's: exactly Inv-Id's input
    ((64, 32), (256, 96), (256, 96)),  # finer still, per side: never below Inv-Id's input
])
def test_stored_crop_size_is_twice_the_generators_and_at_least_inv_ids(resolution, identity, kept) -> None:
    assert stored_crop_size(resolution, identity) == kept


def test_stored_crop_is_webp_at_the_size_asked_and_re_reads_close_to_the_upload() -> None:
    image = Image.fromarray(np.kron(SMOOTH_PIXELS, np.ones((2, 2, 1), np.uint8)))  # a smooth 128x64 picture
    crop = stored_crop(image, (2 * H, 2 * W))
    with Image.open(io.BytesIO(crop)) as stored:
        assert stored.format == "WEBP" and stored.size == (2 * W, 2 * H)
    # Re-read at that size: the upload's pixels up to WebP loss.
    assert np.abs(preprocess(crop, (2 * H, 2 * W)) - preprocess(encode(image, "PNG"), (2 * H, 2 * W))).mean() < 4 / 255


# ---------------------------------------------------------------------------------------------- errors


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR claiming width x height RGB, and IEND: no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _jpeg() -> bytes:
    return encode(Image.fromarray(RGB_PIXELS), "JPEG", quality=95)


def test_empty_bytes() -> None:
    with pytest.raises(ImageError, match="empty"):
        preprocess(b"")


def test_random_bytes() -> None:
    junk = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match="not a readable image"):
        preprocess(junk)


def test_text_is_not_an_image() -> None:
    with pytest.raises(ImageError, match="not a readable image"):
        preprocess(b"hello, this is not a picture")


def test_truncated_jpeg() -> None:
    data = _jpeg()
    with pytest.raises(ImageError, match="truncated"):
        preprocess(data[: len(data) // 2])


def test_truncated_png() -> None:
    data = encode(Image.fromarray(RGB_PIXELS), "PNG")
    with pytest.raises(ImageError):
        preprocess(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((5000, 5000), "5000x5000.*16777216 pixels allowed"),  # our guard, below PIL's own bomb limit
        ((100_000, 100_000), "not a readable image.*decompression bomb"),  # PIL's guard fires first
    ],
)
def test_header_claiming_huge_size_is_refused_before_decoding(size: tuple[int, int], message: str) -> None:
    with pytest.raises(ImageError, match=message):
        preprocess(png_header_claiming(*size))


def test_crafted_header_is_accepted_below_the_limit_then_fails_on_missing_pixels() -> None:
    # Control for the test above: the same crafted header at a small size passes the pixel guard and only
    # then fails for lack of pixel data, so the guard is what refuses the huge one.
    with pytest.raises(ImageError) as caught:
        preprocess(png_header_claiming(64, 32))
    assert "pixels allowed" not in str(caught.value)


def test_small_max_pixels_refuses_a_real_image() -> None:
    data = encode(Image.fromarray(RGB_PIXELS), "PNG")
    with pytest.raises(ImageError, match=f"{W}x{H}.*{H * W - 1}"):
        preprocess(data, max_pixels=H * W - 1)
    check_model_input(preprocess(data, max_pixels=H * W))  # exactly at the limit is fine


def _bad_inputs() -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("one byte", b"\xff"),
        ("png signature only", b"\x89PNG\r\n\x1a\n"),
        ("jpeg soi only", b"\xff\xd8\xff"),
        ("huge png header", png_header_claiming(70_000, 70_000)),
    ]
    for fmt, (mode, options) in FORMATS.items():
        data = encode(Image.fromarray(RGB_PIXELS).convert(mode), fmt, **options)
        for fraction in (0.1, 0.5, 0.9):
            cases.append((f"{fmt} cut to {fraction}", data[: int(len(data) * fraction)]))
    return cases


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bad_input_only_ever_raises_image_error() -> None:
    for label, data in _bad_inputs():
        try:
            preprocess(data)
        except ImageError as err:
            assert str(err), label  # a message saying why
        except Exception as err:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{label}: raised {type(err).__name__} ({err}), not ImageError")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupted_bytes_only_ever_raise_image_error() -> None:
    rng = np.random.default_rng(0)
    for fmt, (mode, options) in FORMATS.items():
        data = encode(Image.fromarray(RGB_PIXELS).convert(mode), fmt, **options)
        for _ in range(20):
            corrupted = bytearray(data)
            for position in rng.integers(0, min(len(data), 256), 4):
                corrupted[position] = int(rng.integers(0, 256))
            try:
                check_model_input(preprocess(bytes(corrupted)))
            except ImageError:
                pass
            except Exception as err:  # noqa: BLE001 - the point of the test
                pytest.fail(f"{fmt} with flipped bytes: raised {type(err).__name__} ({err}), not ImageError")


def test_image_error_is_a_value_error() -> None:
    assert issubclass(ImageError, ValueError)


# ---------------------------------------------------------------------------------- PNG and noise display


def test_to_png_round_trips() -> None:
    image = np.random.default_rng(3).random((3, H, W)).astype(np.float32)
    decoded = np.asarray(Image.open(io.BytesIO(to_png(image))))
    assert decoded.shape == (H, W, 3) and decoded.dtype == np.uint8
    expected = np.floor(image.transpose(1, 2, 0).astype(np.float64) * 255.0 + 0.5)
    np.testing.assert_array_equal(decoded, expected)
    # And back through the preprocessing path: within half a grey level of the original.
    np.testing.assert_allclose(preprocess(to_png(image)), image, atol=0.5 / 255 + 1e-6)


def test_to_png_clips_out_of_range_values() -> None:
    image = np.zeros((3, 4, 2), dtype=np.float32)
    image[0] = -3.0
    image[1] = 7.0
    image[2, 0, 0] = 0.5
    decoded = np.asarray(Image.open(io.BytesIO(to_png(image))))
    assert (decoded[..., 0] == 0).all()
    assert (decoded[..., 1] == 255).all()
    assert decoded[0, 0, 2] == 128 and (decoded[..., 2].ravel()[1:] == 0).all()


def test_noise_preview_maps_and_clips() -> None:
    noise = np.array([-10.0, -2.5, -1.25, 0.0, 1.25, 2.5, 10.0])
    np.testing.assert_allclose(noise_preview(noise), [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    np.testing.assert_allclose(noise_preview(np.array([-1.0, 0.0, 1.0]), clip=1.0), [0.0, 0.5, 1.0])
