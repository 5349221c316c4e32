"""The one preprocessing path: bytes or file -> RGB -> a network's input size -> [0,1] float32 CHW.

Training (through its decoded cache) and the service both go through `decode_resized`, so the pixels a
model was trained on are exactly the pixels it is served. Each network reads crops at its own size (model.json:
Inv-Id's may be finer than the generator's): a crop is decoded once and resized once per size. No torch here.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# Input size (H, W) when none is given: the paper's 64x32.
DEFAULT_SIZE: tuple[int, int] = (64, 32)
# Refuse images with more pixels than this before decoding them (decompression bombs).
DEFAULT_MAX_PIXELS = 4096 * 4096

ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """The input is not an image this service can use; the message says why."""


def _open(source: bytes | str | Path, max_pixels: int) -> Image.Image:
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageError("empty file")
        fp: io.BytesIO | str | Path = io.BytesIO(bytes(source))
    else:
        fp = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"image is {width}x{height}, more than the {max_pixels} pixels allowed")
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not a readable image: unknown format (JPEG, PNG, WebP, BMP, GIF, TIFF are read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"not a readable image: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"corrupt or truncated image: {err}") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit images carry 0..65535; scale by the format's range, not the image's, to keep exposure.
        peak = 65535.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        image = Image.fromarray(np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_rgb(source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode any image PIL reads into 8-bit RGB. Raises ImageError on bad input."""
    return to_rgb(_open(source, max_pixels))


def resized(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An RGB image resized to `size` (H, W), bilinear; uint8 HWC."""
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_resized(
    source: bytes | str | Path, size: tuple[int, int] = DEFAULT_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode, convert to RGB and resize to `size` (H, W); uint8 HWC. Raises ImageError on bad input."""
    return resized(decode_rgb(source, max_pixels), size)


def to_chw_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [0, 1]."""
    return np.moveaxis(pixels.astype(np.float32) / 255.0, -1, -3)


def preprocess(
    source: bytes | str | Path, size: tuple[int, int] = DEFAULT_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Any image PIL can read -> float32 (3, H, W) in [0, 1], the inverters' input."""
    return to_chw_float(decode_resized(source, size, max_pixels))


def stored_crop_size(resolution: tuple[int, int], identity_resolution: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) a gallery keeps crops at: twice the generator's `resolution` (an operator recognises the person)
    and, per side, at least Inv-Id's input, so re-embedding never reads fewer pixels than an upload gave."""
    return max(2 * resolution[0], identity_resolution[0]), max(2 * resolution[1], identity_resolution[1])


def stored_crop(image: Image.Image, size: tuple[int, int], quality: int = 80) -> bytes:
    """The small image a gallery keeps of an enrolled crop: WebP at `size` (H, W, `stored_crop_size`), about 2-4 KB
    at 128x64, cheap beside the code. Re-embedding it with the same model gives the code its upload gave, up to WebP
    loss where `size` is Inv-Id's input, and up to one more bilinear resampling where it is larger. WebP method 2
    encodes 128x64 Market crops in 0.5 ms against the default method 4's 0.9 ms, for 4 % more bytes: it runs in
    every enrolment's request."""
    buffer = io.BytesIO()
    Image.fromarray(resized(image, size)).save(buffer, format="WEBP", quality=quality, method=2)
    return buffer.getvalue()


def to_png(image_chw: np.ndarray) -> bytes:
    """float (3, H, W) in [0, 1] -> PNG bytes (values outside [0, 1] are clipped)."""
    pixels = (np.clip(np.moveaxis(image_chw, 0, -1), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_preview(noise_chw: np.ndarray, clip: float = 2.5) -> np.ndarray:
    """The paper's noise display: clip to +-clip and rescale to [0, 1]."""
    return (np.clip(noise_chw, -clip, clip) + clip) / (2.0 * clip)
