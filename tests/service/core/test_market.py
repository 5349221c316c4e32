"""The Market-1501 folder reader (genreid.service.core.market): names, layout checks, splits, junk and distractors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from genreid.service.core.market import Crop, MarketLayoutError, check_layout, parse_name, read_split

REAL_SUBSET = Path(__file__).resolve().parents[1].parent / "shared/data/market1501-subset"


def make_layout(root: Path, files: dict[str, list[str]]) -> Path:
    """Empty files with the given names under root/<folder>; the reader only looks at names."""
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / folder / name).write_bytes(b"")
    return root


TRAIN = [
    "0002_c1s1_000451_03.jpg",
    "0002_c2s1_000301_01.jpg",
    "-1_c1s1_000000_00.jpg",  # junk
    "0000_c3s1_000551_01.jpg",  # distractor: not a training identity
    "0007_c6s1_012345_02.jpg",
    "Thumbs.db",
]
QUERY = [
    "0003_c1s1_000101_00.jpg",
    "0001_c4s2_000201_00.jpg",
    "-1_c2s1_000001_00.jpg",
    "0000_c1s1_000002_00.jpg",  # a distractor can never be a query
]
GALLERY = [
    "0003_c2s1_000151_01.jpg",
    "0000_c3s1_000101_02.jpg",
    "-1_c5s1_000031_01.jpg",
    "0001_c1s1_000005_01.jpg",
    "0000_c1s1_000001_01.jpg",
    "Thumbs.db",
    "desktop.ini",
]


@pytest.fixture
def market(tmp_path: Path) -> Path:
    return make_layout(
        tmp_path / "market",
        {"bounding_box_train": TRAIN, "query": QUERY, "bounding_box_test": GALLERY},
    )


def labels(crops: list[Crop]) -> list[tuple[str, int, int]]:
    return [(c.path.name, c.person_id, c.camera) for c in crops]


# ------------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("0002_c1s1_000451_03.jpg", (2, 1)),
        ("1501_c6s4_001902_02.jpg", (1501, 6)),
        ("-1_c1s1_000000_00.jpg", (-1, 1)),
        ("0000_c2s1_000101_01.jpg", (0, 2)),
        ("0042_c3s12_123456_07.png", (42, 3)),
        ("0042_c5s3_065487_01", (42, 5)),  # the stem is what counts
    ],
)
def test_parse_name(name: str, expected: tuple[int, int]) -> None:
    assert parse_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "abc.jpg",
        "002_c1s1_000451_03.jpg",  # three-digit person
        "00002_c1s1_000451_03.jpg",  # five-digit person
        "0002_c1_000451_03.jpg",  # no sequence
        "0002_cXs1_000451_03.jpg",
        "0002_c1s1_000451.jpg",  # no box number
        "-2_c1s1_000000_00.jpg",
        "0002_c1s1_000451_03_extra.jpg",
        "",
    ],
)
def test_parse_name_rejects_other_names_and_says_which(name: str) -> None:
    with pytest.raises(MarketLayoutError) as caught:
        parse_name(name)
    assert name in str(caught.value)
    assert "PPPP_cCsS_FFFFFF_NN" in str(caught.value)


def test_layout_error_is_a_value_error() -> None:
    assert issubclass(MarketLayoutError, ValueError)


# ----------------------------------------------------------------------------------------------- splits


def test_train_drops_junk_and_distractors_and_other_files(market: Path) -> None:
    assert labels(read_split(market, "train")) == [
        ("0002_c1s1_000451_03.jpg", 2, 1),
        ("0002_c2s1_000301_01.jpg", 2, 2),
        ("0007_c6s1_012345_02.jpg", 7, 6),
    ]


def test_query_drops_junk_and_distractors(market: Path) -> None:
    assert labels(read_split(market, "query")) == [
        ("0001_c4s2_000201_00.jpg", 1, 4),
        ("0003_c1s1_000101_00.jpg", 3, 1),
    ]


def test_gallery_keeps_distractors_and_drops_junk(market: Path) -> None:
    assert labels(read_split(market, "gallery")) == [
        ("0000_c1s1_000001_01.jpg", 0, 1),
        ("0000_c3s1_000101_02.jpg", 0, 3),
        ("0001_c1s1_000005_01.jpg", 1, 1),
        ("0003_c2s1_000151_01.jpg", 3, 2),
    ]


def test_crops_carry_full_paths_in_the_split_folder(market: Path) -> None:
    crops = read_split(market, "gallery")
    assert all(isinstance(c, Crop) for c in crops)
    assert all(c.path.parent == market / "bounding_box_test" and c.path.is_file() for c in crops)
    assert read_split(str(market), "gallery") == crops  # str roots work the same


def test_split_is_sorted_by_file_name(tmp_path: Path) -> None:
    names = ["0009_c1s1_000005_01.jpg", "0001_c3s1_000007_01.jpg", "0005_c2s1_000001_01.jpg"]
    names += ["0001_c1s1_000009_01.jpg", "0001_c1s1_000002_01.jpg"]
    root = make_layout(tmp_path, {"bounding_box_train": names})
    assert [c.path.name for c in read_split(root, "train")] == sorted(names)


def test_upper_case_and_png_suffixes_are_images(tmp_path: Path) -> None:
    names = ["0001_c1s1_000001_01.JPG", "0002_c1s1_000001_01.png", "0003_c1s1_000001_01.jpeg"]
    root = make_layout(tmp_path, {"bounding_box_train": [*names, "0004_c1s1_000001_01.txt", "notes"]})
    assert [c.person_id for c in read_split(root, "train")] == [1, 2, 3]


def test_bad_image_name_is_named_in_the_error(market: Path) -> None:
    (market / "bounding_box_test" / "abc.jpg").write_bytes(b"")
    with pytest.raises(MarketLayoutError, match="abc.jpg"):
        read_split(market, "gallery")
    # Other splits are unaffected.
    assert len(read_split(market, "query")) == 2


def test_split_with_only_junk_has_no_usable_images(tmp_path: Path) -> None:
    root = make_layout(tmp_path, {"query": ["-1_c1s1_000000_00.jpg", "0000_c1s1_000001_00.jpg", "Thumbs.db"]})
    with pytest.raises(MarketLayoutError, match="no usable images"):
        read_split(root, "query")


# ----------------------------------------------------------------------------------------------- layout


def test_check_layout_returns_the_root(market: Path) -> None:
    assert check_layout(str(market)) == market


def test_missing_folders_are_all_named(tmp_path: Path) -> None:
    root = make_layout(tmp_path, {"bounding_box_train": TRAIN})
    with pytest.raises(MarketLayoutError) as caught:
        check_layout(root)
    message = str(caught.value)
    assert "query/" in message and "bounding_box_test/" in message
    assert "bounding_box_train" not in message.split("missing", 1)[1]
    assert check_layout(root, ("train",)) == root  # the train split alone is there


def test_missing_split_folder_is_named_by_read_split(tmp_path: Path) -> None:
    root = make_layout(tmp_path, {"bounding_box_train": TRAIN})
    assert len(read_split(root, "train")) == 3
    with pytest.raises(MarketLayoutError, match="bounding_box_test/"):
        read_split(root, "gallery")


def test_nonexistent_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(MarketLayoutError, match="no such directory"):
        check_layout(missing)
    with pytest.raises(MarketLayoutError, match="nowhere"):
        read_split(missing, "train")


def test_root_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "market.zip"
    file.write_bytes(b"PK")
    with pytest.raises(MarketLayoutError, match="market.zip"):
        read_split(file, "query")


def test_unknown_split(market: Path) -> None:
    with pytest.raises(ValueError, match="'test'") as caught:
        read_split(market, "test")
    assert "gallery" in str(caught.value)  # and it lists the valid ones


# ---------------------------------------------------------------------------------------- the real subset


@pytest.fixture(scope="module")
def real() -> dict[str, list[Crop]]:
    if not REAL_SUBSET.is_dir():
        pytest.skip(f"{REAL_SUBSET} is not on this machine")
    return {split: read_split(REAL_SUBSET, split) for split in ("train", "query", "gallery")}


def test_real_subset_counts(real: dict[str, list[Crop]]) -> None:
    assert len(real["train"]) == 7827
    assert len({c.person_id for c in real["train"]}) == 451
    assert len(real["query"]) == 665
    assert len(real["gallery"]) == 1988


def test_real_subset_identities(real: dict[str, list[Crop]]) -> None:
    train = {c.person_id for c in real["train"]}
    query = {c.person_id for c in real["query"]}
    gallery = {c.person_id for c in real["gallery"]}
    assert len(query) == 150
    # The README says the gallery holds "the same 150", but an identity seen once per camera has all its
    # crops taken as queries; such queries have no true match and the evaluation skips them.
    assert gallery <= query
    assert not train & query
    assert 0 not in train | query | gallery and -1 not in train | query | gallery
    assert {c.camera for split in real.values() for c in split} <= set(range(1, 7))


def test_real_subset_has_one_query_per_identity_and_camera(real: dict[str, list[Crop]]) -> None:
    pairs = Counter((c.person_id, c.camera) for c in real["query"])
    assert max(pairs.values()) == 1
    # Every (identity, camera) of the test identities has its query.
    test_pairs = {(c.person_id, c.camera) for c in real["query"] + real["gallery"]}
    assert set(pairs) == test_pairs
