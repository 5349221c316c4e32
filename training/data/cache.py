"""Decoded image sets: every JPEG of a split decoded once through genreid.service.core.imaging and cached as a uint8
array, so training epochs never re-decode. The cache lives in a cache directory, never beside the data."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from genreid.service.core.imaging import decode_resized, to_chw_float
from genreid.service.core.market import read_split

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genreid"


@dataclass(frozen=True)
class ImageSet:
    """uint8 images (N, H, W, 3) with their person ids and cameras."""

    images: np.ndarray
    person_ids: np.ndarray
    cameras: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, mask: np.ndarray) -> ImageSet:
        return ImageSet(self.images[mask], self.person_ids[mask], self.cameras[mask])

    def floats(self, index: np.ndarray | slice = slice(None)) -> np.ndarray:
        """float32 (n, 3, H, W) in [0, 1], exactly what the service feeds the inverters."""
        return to_chw_float(self.images[index])


def load_split(
    root: str | Path, split: str, size: tuple[int, int], cache_dir: str | Path | None = None
) -> ImageSet:
    """Decode one Market-1501 split at `size` (H, W), reusing the on-disk cache when the file list matches."""
    crops = read_split(root, split)
    listing = "\n".join(f"{c.path.name}:{c.path.stat().st_size}" for c in crops)
    key = hashlib.sha256(f"{Path(root).resolve()}|{split}|{size}|{listing}".encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / f"{split}-{size[0]}x{size[1]}-{key}.npz"
    if path.is_file():
        with np.load(path) as cached:
            return ImageSet(cached["images"], cached["person_ids"], cached["cameras"])
    log.info("decoding %d %s crops into %s", len(crops), split, path)
    images = np.stack([decode_resized(c.path, size) for c in tqdm(crops, desc=f"decode {split}", leave=False)])
    result = ImageSet(images, np.array([c.person_id for c in crops]), np.array([c.camera for c in crops]))
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name per process: torchrun ranks may decode the same split at once.
    partial = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(partial, images=result.images, person_ids=result.person_ids, cameras=result.cameras)
    os.replace(partial, path)
    return result


def hold_out_identities(data: ImageSet, count: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split off `count` whole identities (seeded) as a validation set: (train, validation)."""
    identities = np.unique(data.person_ids)
    if count >= len(identities):
        raise ValueError(f"cannot hold out {count} of {len(identities)} identities")
    held = np.random.default_rng(seed).choice(identities, size=count, replace=False)
    mask = np.isin(data.person_ids, held)
    return data.subset(~mask), data.subset(mask)


def query_gallery_split(data: ImageSet, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Market-style retrieval split of a labelled set: one query per (person, camera), the rest gallery.

    Returns boolean masks (query, gallery).
    """
    rng = np.random.default_rng(seed)
    query = np.zeros(len(data), dtype=bool)
    for pid, cam in set(zip(data.person_ids.tolist(), data.cameras.tolist(), strict=True)):
        members = np.flatnonzero((data.person_ids == pid) & (data.cameras == cam))
        query[rng.choice(members)] = True
    return query, ~query
