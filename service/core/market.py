"""Reader for the standard Market-1501 folder layout.

Names are `PPPP_cCsS_FFFFFF_NN.jpg`: PPPP the person (-1 junk, 0000 distractor), C the camera (1-6).
Junk is dropped everywhere; distractors are kept in the gallery only, where they can never be a true match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SPLIT_FOLDERS: dict[str, str] = {
    "train": "bounding_box_train",
    "query": "query",
    "gallery": "bounding_box_test",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_NAME = re.compile(r"^(-1|\d{4})_c(\d)s\d+_\d+_\d+$")
JUNK, DISTRACTOR = -1, 0


class MarketLayoutError(ValueError):
    """The folder is not in the Market-1501 layout; the message names what is wrong."""


@dataclass(frozen=True)
class Crop:
    """One image of the data set and its labels."""

    path: Path
    person_id: int
    camera: int


def parse_name(name: str) -> tuple[int, int]:
    """`0002_c1s1_000451_03.jpg` -> (person_id, camera). Raises MarketLayoutError on other names."""
    match = _NAME.match(Path(name).stem)
    if match is None:
        raise MarketLayoutError(f"{name}: not a Market-1501 name (PPPP_cCsS_FFFFFF_NN.jpg)")
    return int(match.group(1)), int(match.group(2))


def check_layout(root: str | Path, splits: tuple[str, ...] = tuple(SPLIT_FOLDERS)) -> Path:
    """Return `root` as a Path if it holds the folders of `splits`; otherwise say which are missing."""
    root = Path(root)
    if not root.is_dir():
        raise MarketLayoutError(f"{root}: no such directory")
    missing = [SPLIT_FOLDERS[split] + "/" for split in splits if not (root / SPLIT_FOLDERS[split]).is_dir()]
    if missing:
        raise MarketLayoutError(f"{root} is not a Market-1501 folder: missing {', '.join(missing)}")
    return root


def read_split(root: str | Path, split: str) -> list[Crop]:
    """All usable crops of one split ('train', 'query' or 'gallery'), sorted by file name."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_FOLDERS)}")
    folder = check_layout(root, (split,)) / SPLIT_FOLDERS[split]
    crops = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue  # Thumbs.db and friends ship with the official archive
        person_id, camera = parse_name(path.name)
        if person_id == JUNK or (person_id == DISTRACTOR and split != "gallery"):
            continue
        crops.append(Crop(path, person_id, camera))
    if not crops:
        raise MarketLayoutError(f"{folder}: no usable images")
    return crops
