"""A procedural person data set in the Market-1501 layout, for tests and CI.

Each identity is a figure (head, torso, legs) with its own shirt, trousers, hair colours and build; each
camera has its own background and lighting; every crop jitters position and scale. Written as 128x64 JPEGs
named `PPPP_cCs1_FFFFFF_01.jpg`, so the real reader, cache and evaluation run on it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from genreid.service.core.market import SPLIT_FOLDERS

HEIGHT, WIDTH = 128, 64


def _identity(rng: np.random.Generator) -> dict[str, np.ndarray | float]:
    return {
        "shirt": rng.integers(20, 236, 3),
        "trousers": rng.integers(20, 236, 3),
        "hair": rng.integers(0, 120, 3),
        "skin": np.array([rng.integers(120, 235), rng.integers(90, 190), rng.integers(70, 160)]),
        "width": rng.uniform(0.28, 0.45),
        "torso": rng.uniform(0.30, 0.42),
    }


def _camera(rng: np.random.Generator) -> dict[str, np.ndarray | float]:
    return {"top": rng.integers(0, 256, 3), "bottom": rng.integers(0, 256, 3), "light": rng.uniform(0.6, 1.3)}


def render(person: dict, camera: dict, rng: np.random.Generator) -> np.ndarray:
    """One 128x64 RGB uint8 crop of `person` seen by `camera`."""
    rows = np.linspace(0.0, 1.0, HEIGHT)[:, None, None]
    image = (1 - rows) * camera["top"] + rows * camera["bottom"] + np.zeros((1, WIDTH, 1))
    cx = WIDTH / 2 + rng.normal(0, 3)
    scale = rng.uniform(0.85, 1.05)
    half = person["width"] * WIDTH * scale / 2
    top = 8 + rng.normal(0, 2)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    head_r = 0.07 * HEIGHT * scale
    head_cy = top + head_r
    image[(x - cx) ** 2 + (y - head_cy) ** 2 < head_r**2] = person["skin"]
    image[((x - cx) ** 2 + (y - head_cy + head_r * 0.4) ** 2 < head_r**2) & (y < head_cy - head_r * 0.2)] = (
        person["hair"]
    )
    torso_top = head_cy + head_r
    torso_bottom = torso_top + person["torso"] * HEIGHT * scale
    image[(abs(x - cx) < half) & (y >= torso_top) & (y < torso_bottom)] = person["shirt"]
    stride = rng.uniform(0.1, 0.5) * half
    legs = (y >= torso_bottom) & (y < HEIGHT - 4)
    for side in (-1, 1):
        image[legs & (abs(x - (cx + side * stride)) < half * 0.4)] = person["trousers"]
    image = image * camera["light"] + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_synthetic_market(
    root: str | Path,
    train_identities: int = 12,
    test_identities: int = 6,
    cameras: int = 3,
    per_camera: int = 3,
    seed: int = 0,
) -> Path:
    """Write a small Market-1501-style data set under `root` and return it.

    Train and test identities are disjoint; the test identities get one query per camera and the rest
    of their crops in the gallery.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    for folder in SPLIT_FOLDERS.values():
        (root / folder).mkdir(parents=True, exist_ok=True)
    views = [_camera(rng) for _ in range(cameras)]
    frame = 0
    for pid in range(1, train_identities + test_identities + 1):
        person = _identity(rng)
        for cam, view in enumerate(views, start=1):
            for shot in range(per_camera):
                frame += 1
                if pid <= train_identities:
                    folder = SPLIT_FOLDERS["train"]
                else:
                    folder = SPLIT_FOLDERS["query" if shot == 0 else "gallery"]
                name = f"{pid:04d}_c{cam}s1_{frame:06d}_01.jpg"
                Image.fromarray(render(person, view, rng)).save(root / folder / name, quality=92)
    return root
