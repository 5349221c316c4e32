"""The Market-1501 folder reader (genreid.service.core.market): names, layout checks, splits, junk and distractors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from genreid.service.core.evaluation import evaluate_codes
from genreid.service.core.market import Crop, MarketLayoutError, check_layout, parse_name, read_split

REAL_SUBSET = Path(__file__).resolve().parents[3].parent / "shared/data/market1501-subset"


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


# ------------------------------------------------------------------------------------ the official split

REAL_OFFICIAL = REAL_SUBSET.parent / "market1501"


@pytest.fixture(scope="module")
def official() -> dict[str, list[Crop]]:
    if not REAL_OFFICIAL.is_dir():
        pytest.skip(f"{REAL_OFFICIAL} is not on this machine")
    return {split: read_split(REAL_OFFICIAL, split) for split in ("train", "query", "gallery")}


def test_official_split_reads_as_published(official: dict[str, list[Crop]]) -> None:
    """Market-1501's official query / gallery: all 3,368 queries of 750 identities; of the 19,732 gallery files the
    3,819 junk (-1) crops are dropped and the 2,798 distractors (0000) kept; the training folder holds 601 of the
    751 training identities, none of them a test identity."""
    folder = REAL_OFFICIAL / "bounding_box_test"
    files = [path.name for path in folder.iterdir() if path.suffix == ".jpg"]
    assert len(files) == 19_732 and sum(name.startswith("-1_") for name in files) == 3_819
    query, gallery, train = official["query"], official["gallery"], official["train"]
    assert len(query) == 3_368 and len({c.person_id for c in query}) == 750
    assert len(gallery) == 15_913 and sum(c.person_id == 0 for c in gallery) == 2_798
    assert {c.person_id for c in gallery} == {c.person_id for c in query} | {0}
    assert len(train) == 10_480 and len({c.person_id for c in train}) == 601
    assert not {c.person_id for c in train} & {c.person_id for c in query}
    assert {c.camera for split in official.values() for c in split} == set(range(1, 7))


def test_official_protocol_drops_same_camera_matches_and_keeps_distractors(official: dict[str, list[Crop]]) -> None:
    """Scored as published: codes that know every identity give mAP 1 on all 3,368 queries; camera 1's gallery crops
    scrambled leave camera 1's queries at mAP 1 under the standard protocol (those crops are dropped for them) but
    not under the lenient one (kept as matches); distractors sitting on a query's identity count as negatives."""
    query, gallery = official["query"], official["gallery"]
    table = np.random.default_rng(0).standard_normal((1502, 32))
    q_pids, g_pids = np.array([c.person_id for c in query]), np.array([c.person_id for c in gallery])
    q_cams, g_cams = np.array([c.camera for c in query]), np.array([c.camera for c in gallery])
    q_codes, g_codes = table[q_pids], table[g_pids]
    exact = evaluate_codes(q_codes, g_codes, q_pids, g_pids, q_cams, g_cams)
    assert exact.queries == 3_368 and exact.gallery == 15_913 and exact.mAP == pytest.approx(1.0)

    camera_one = q_cams == 1
    scrambled = g_codes.copy()
    scrambled[g_cams == 1] = np.random.default_rng(1).standard_normal(((g_cams == 1).sum(), 32))
    args = (q_codes[camera_one], scrambled, q_pids[camera_one], g_pids, q_cams[camera_one], g_cams)
    assert evaluate_codes(*args).mAP == pytest.approx(1.0)
    assert evaluate_codes(*args, protocol="lenient").mAP < 0.99

    fooled = g_codes.copy()
    distractors = np.flatnonzero(g_pids == 0)
    fooled[distractors] = table[q_pids[: len(distractors)]]  # gallery order puts 0000 first: they win the ties
    assert evaluate_codes(q_codes, fooled, q_pids, g_pids, q_cams, g_cams).mAP < 0.99
