"""The synthetic Market-1501 writer, the decoded-split cache and the identity / query-gallery splits
(genreid.training.data); torch-free."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import genreid.training.data.cache as cache_module
from genreid.service.core.imaging import decode_resized, preprocess
from genreid.service.core.market import check_layout, read_split
from genreid.training.data.cache import ImageSet, hold_out_identities, load_split, query_gallery_split
from genreid.training.data.synthetic import write_synthetic_market

TRAIN_IDS, TEST_IDS, CAMERAS, PER_CAMERA = 4, 3, 2, 3
SIZE = (64, 32)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "market"
    returned = write_synthetic_market(
        root,
        train_identities=TRAIN_IDS,
        test_identities=TEST_IDS,
        cameras=CAMERAS,
        per_camera=PER_CAMERA,
        seed=3,
    )
    assert returned == root
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# ------------------------------------------------------------------------------------------- the writer


def test_writes_the_layout_the_reader_accepts(synthetic: Path) -> None:
    assert check_layout(synthetic) == synthetic
    train, query, gallery = (read_split(synthetic, split) for split in ("train", "query", "gallery"))
    assert len(train) == TRAIN_IDS * CAMERAS * PER_CAMERA
    assert len(query) == TEST_IDS * CAMERAS
    assert len(gallery) == TEST_IDS * CAMERAS * (PER_CAMERA - 1)
    for crop in train + query + gallery:
        with Image.open(crop.path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (64, 128)


def test_train_and_test_identities_are_disjoint(synthetic: Path) -> None:
    train = {c.person_id for c in read_split(synthetic, "train")}
    query = {c.person_id for c in read_split(synthetic, "query")}
    gallery = {c.person_id for c in read_split(synthetic, "gallery")}
    assert len(train) == TRAIN_IDS and len(query) == TEST_IDS
    assert query == gallery
    assert not train & query
    assert 0 not in train | query  # no distractor or junk ids
    cameras = {c.camera for split in ("train", "query", "gallery") for c in read_split(synthetic, split)}
    assert cameras == set(range(1, CAMERAS + 1))


def test_one_query_per_identity_and_camera(synthetic: Path) -> None:
    pairs = Counter((c.person_id, c.camera) for c in read_split(synthetic, "query"))
    gallery_pairs = Counter((c.person_id, c.camera) for c in read_split(synthetic, "gallery"))
    assert set(pairs.values()) == {1}
    assert set(pairs) == set(gallery_pairs)
    assert set(gallery_pairs.values()) == {PER_CAMERA - 1}


def test_file_names_are_unique_across_splits(synthetic: Path) -> None:
    names = [p.name for p in synthetic.rglob("*.jpg")]
    assert len(names) == len(set(names)) == (TRAIN_IDS + TEST_IDS) * CAMERAS * PER_CAMERA


def test_same_seed_same_pictures(tmp_path: Path, synthetic: Path) -> None:
    again = write_synthetic_market(
        tmp_path / "again",
        train_identities=TRAIN_IDS,
        test_identities=TEST_IDS,
        cameras=CAMERAS,
        per_camera=PER_CAMERA,
        seed=3,
    )
    for path in synthetic.rglob("*.jpg"):
        assert (again / path.relative_to(synthetic)).read_bytes() == path.read_bytes()


def test_identities_look_different(synthetic: Path) -> None:
    # Mean colour of each identity's crops: different people, different clothes.
    crops = read_split(synthetic, "train")
    means = {
        pid: np.mean([decode_resized(c.path).mean((0, 1)) for c in crops if c.person_id == pid], axis=0)
        for pid in {c.person_id for c in crops}
    }
    values = list(means.values())
    gaps = [np.abs(a - b).max() for i, a in enumerate(values) for b in values[i + 1 :]]
    assert min(gaps) > 1.0


# -------------------------------------------------------------------------------------------- the cache


def test_cache_is_one_npz_in_the_cache_dir_and_is_reused(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = tmp_path / "cache"
    before = snapshot(synthetic)
    written: list[Path] = []
    savez = np.savez

    def recording_savez(file: str | Path, *args: object, **kwargs: object) -> None:
        written.append(Path(file))
        savez(file, *args, **kwargs)

    monkeypatch.setattr(cache_module.np, "savez", recording_savez)
    first = load_split(synthetic, "train", SIZE, cache_dir)
    # Even the temporary file lives in the cache dir, never beside the data.
    assert written and all(path.parent == cache_dir for path in written)
    files = list(cache_dir.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    assert snapshot(synthetic) == before  # nothing written beside the data

    def no_decoding(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(cache_module, "decode_resized", no_decoding)
    second = load_split(synthetic, "train", SIZE, cache_dir)
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.person_ids, first.person_ids)
    np.testing.assert_array_equal(second.cameras, first.cameras)
    assert list(cache_dir.iterdir()) == files
    assert snapshot(synthetic) == before


def test_cache_is_per_split_and_size(synthetic: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    query = load_split(synthetic, "query", SIZE, cache_dir)
    small = load_split(synthetic, "query", (32, 16), cache_dir)
    gallery = load_split(synthetic, "gallery", SIZE, cache_dir)
    assert len(list(cache_dir.glob("*.npz"))) == 3
    assert query.images.shape == (TEST_IDS * CAMERAS, 64, 32, 3)
    assert small.images.shape == (TEST_IDS * CAMERAS, 32, 16, 3)
    assert len(gallery) == TEST_IDS * CAMERAS * (PER_CAMERA - 1)


def test_changed_file_list_is_decoded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_synthetic_market(
        tmp_path / "data", train_identities=2, test_identities=1, cameras=2, per_camera=1
    )
    cache_dir = tmp_path / "cache"
    assert len(load_split(root, "train", SIZE, cache_dir)) == 4
    extra = root / "bounding_box_train" / "0002_c1s1_000099_01.jpg"
    extra.write_bytes((root / "bounding_box_train" / "0001_c1s1_000001_01.jpg").read_bytes())
    calls = []
    original = cache_module.decode_resized
    monkeypatch.setattr(cache_module, "decode_resized", lambda *a, **k: calls.append(a) or original(*a, **k))
    assert len(load_split(root, "train", SIZE, cache_dir)) == 5
    assert len(calls) == 5
    assert len(list(cache_dir.glob("*.npz"))) == 2


def test_cached_arrays_are_the_serving_preprocessing(synthetic: Path, tmp_path: Path) -> None:
    crops = read_split(synthetic, "gallery")
    cache_dir = tmp_path / "cache"
    load_split(synthetic, "gallery", SIZE, cache_dir)
    cached = load_split(synthetic, "gallery", SIZE, cache_dir)  # read back from the .npz
    assert cached.images.dtype == np.uint8 and cached.images.shape == (len(crops), *SIZE, 3)
    for i, crop in enumerate(crops):
        np.testing.assert_array_equal(cached.images[i], decode_resized(crop.path, SIZE))
        np.testing.assert_array_equal(cached.floats(i), preprocess(crop.path, SIZE))
        # And what the service would get from the uploaded bytes.
        np.testing.assert_array_equal(cached.floats(i), preprocess(crop.path.read_bytes(), SIZE))
    np.testing.assert_array_equal(cached.person_ids, [c.person_id for c in crops])
    np.testing.assert_array_equal(cached.cameras, [c.camera for c in crops])
    floats = cached.floats()
    assert floats.dtype == np.float32 and floats.shape == (len(crops), 3, *SIZE)


# --------------------------------------------------------------------------------------------- splitting


def labelled_set(people: int, cameras: int, per_camera: int) -> ImageSet:
    pids = np.repeat(np.arange(1, people + 1), cameras * per_camera)
    cams = np.tile(np.repeat(np.arange(1, cameras + 1), per_camera), people)
    images = np.arange(len(pids), dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 1, 3), np.uint8)
    return ImageSet(images, pids, cams)


def test_hold_out_identities_splits_whole_identities() -> None:
    data = labelled_set(people=10, cameras=3, per_camera=2)
    train, validation = hold_out_identities(data, count=3, seed=0)
    train_ids, held_ids = set(train.person_ids.tolist()), set(validation.person_ids.tolist())
    assert len(held_ids) == 3 and len(train_ids) == 7
    assert not train_ids & held_ids
    assert train_ids | held_ids == set(range(1, 11))
    assert len(train) + len(validation) == len(data)
    assert len(validation) == 3 * 3 * 2  # every crop of a held-out person goes with it
    # Images travel with their labels.
    for part in (train, validation):
        original = part.images[:, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(data.person_ids[original], part.person_ids)
        np.testing.assert_array_equal(data.cameras[original], part.cameras)


def test_hold_out_identities_is_seeded() -> None:
    data = labelled_set(people=20, cameras=2, per_camera=1)
    first = hold_out_identities(data, count=5, seed=7)[1].person_ids
    np.testing.assert_array_equal(hold_out_identities(data, count=5, seed=7)[1].person_ids, first)
    held = {
        tuple(sorted(set(hold_out_identities(data, 5, seed)[1].person_ids.tolist()))) for seed in range(6)
    }
    assert len(held) > 1


def test_hold_out_identities_refuses_all_identities() -> None:
    data = labelled_set(people=4, cameras=1, per_camera=1)
    with pytest.raises(ValueError, match="4"):
        hold_out_identities(data, count=4, seed=0)


def test_query_gallery_split_one_query_per_person_and_camera() -> None:
    data = labelled_set(people=6, cameras=3, per_camera=4)
    query, gallery = query_gallery_split(data, seed=0)
    assert query.dtype == bool and gallery.dtype == bool
    np.testing.assert_array_equal(gallery, ~query)
    pairs = Counter(zip(data.person_ids[query].tolist(), data.cameras[query].tolist(), strict=True))
    assert set(pairs.values()) == {1}
    assert len(pairs) == 6 * 3
    assert gallery.sum() == 6 * 3 * 3


def test_query_gallery_split_single_crop_pairs_become_queries() -> None:
    data = ImageSet(np.zeros((5, 2, 1, 3), np.uint8), np.array([1, 1, 1, 2, 2]), np.array([1, 2, 2, 1, 1]))
    query, _ = query_gallery_split(data, seed=4)
    assert query[0]  # the only crop of person 1 by camera 1
    assert query[1:3].sum() == 1 and query[3:5].sum() == 1


def test_query_gallery_split_is_seeded() -> None:
    data = labelled_set(people=10, cameras=2, per_camera=5)
    first, _ = query_gallery_split(data, seed=1)
    np.testing.assert_array_equal(query_gallery_split(data, seed=1)[0], first)
    assert not np.array_equal(query_gallery_split(data, seed=2)[0], first)  # 5**-20 odds of a clash
