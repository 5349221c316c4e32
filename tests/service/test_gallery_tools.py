"""`genreid gallery export | import | reembed` (service/gallery_tools.py): a consistent export beside a store that
holds its lock, round trips that keep entries, codes, crops and rankings, imports that add each entry once however
often they run (on the embedded store, milvus-lite and Milvus itself), model checks, re-embedding, and a CLI that
answers in one line (a milvus-lite file another process holds, no engine tracebacks)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from genreid.service.cli import main
from genreid.service.core.imaging import decode_rgb, resized, stored_crop, stored_crop_size, to_chw_float
from genreid.service.core.reranking import neighbours_kept
from genreid.service.encoders import Encoders
from genreid.service.gallery_tools import (
    ALREADY_HELD,
    ENTRIES,
    Copied,
    GalleryFile,
    GalleryFileError,
    embed_crops,
    export_gallery,
    import_gallery,
    reembed_gallery,
)
from genreid.service.settings import Settings
from genreid.service.store import Entry, GalleryError, GalleryStore, NewEntry, open_gallery
from genreid.service.store.snapshot import Batch, EmbeddedSnapshot

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
ENTRY_COUNT = 12
WITHOUT_CROP = (5,)  # positions of the entries enrolled without a crop


def _milvus_missing() -> str | None:
    for module in ("pymilvus", "milvus_lite", "genreid.service.store.milvus"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not importable (the Milvus round trip needs the milvus extra and the Milvus store)"
    return None


TARGETS = ["embedded", pytest.param("milvus-lite", marks=pytest.mark.skipif(
    _milvus_missing() is not None, reason=str(_milvus_missing())))]


@pytest.fixture(scope="module")
def models_a(build_tiny_models: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_models(tmp_path_factory.mktemp("models-a"), seed=0, model_id="tiny-a")


@pytest.fixture(scope="module")
def models_b(build_tiny_models: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_models(tmp_path_factory.mktemp("models-b"), seed=1, model_id="tiny-b")


def settings(models: Path, *, data: Path | None = None, uri: str | None = None, collection: str = "genreid"
             ) -> Settings:
    """A gallery's settings; a milvus-lite one (a .db path) keeps its audit log beside its file, never in the cwd."""
    values = {"data": data} if uri is None else {"gallery_uri": uri, "gallery_collection": collection,
                                                  "data": Path(uri).with_suffix(".data")}
    return Settings(models=models, device="cpu", threads=1, **values)


def opened(gallery: Settings) -> GalleryStore:
    metadata = Encoders(gallery.models, device="cpu", threads=1).metadata
    return open_gallery(gallery, code_dim=metadata.code_dim, model_id=metadata.model_id,
                        neighbourhood_size=neighbours_kept(metadata))


def enrol(store: GalleryStore, models: Path, crop: Callable[..., bytes]) -> list[Entry]:
    """ENTRY_COUNT crops of four persons, embedded as the service does, with varied metadata (some entries without
    camera, time, track or crop)."""
    encoders = Encoders(models, device="cpu", threads=1)
    crop_size = stored_crop_size(encoders.resolution, encoders.identity_resolution)
    images, new = [], []
    for i in range(ENTRY_COUNT):
        image = decode_rgb(crop(i // 3, i % 3 + 1))
        images.append(to_chw_float(resized(image, encoders.identity_resolution)))
        seen = START + timedelta(minutes=i, microseconds=7 * i) if i % 4 else None
        new.append(NewEntry(f"p{i // 3}", ["c1", "c2", None][i % 3], seen, f"t{i}" if i % 2 else None,
                            None if i in WITHOUT_CROP else stored_crop(image, crop_size)))
    return store.add(new, encoders.identity(np.stack(images)))


@pytest.fixture
def source(models_a: Path, crop: Callable[..., bytes], tmp_path: Path) -> Iterator[tuple[Settings, GalleryStore]]:
    """An embedded gallery of model tiny-a, held open (and locked) as a running server holds it."""
    gallery = settings(models_a, data=tmp_path / "source")
    store = opened(gallery)
    enrol(store, models_a, crop)
    yield gallery, store
    store.close()


def read_all(path: Path) -> Batch:
    with GalleryFile(path) as file:
        file.verify()
        batches = list(file.batches(5))
    return Batch([e for b in batches for e in b.entries], np.concatenate([b.codes for b in batches]),
                 [c for b in batches for c in b.crops])


def labels(entry: Entry) -> tuple:
    return entry.person_id, entry.camera, entry.seen_at, entry.track_id, entry.has_crop


def test_export_beside_a_store_holding_its_lock_equals_what_it_lists(source, tmp_path: Path):
    gallery, store = source
    manifest = export_gallery(gallery=gallery, to=tmp_path / "gallery.zip")
    assert (manifest.model_id, manifest.code_dim, manifest.count, manifest.crops, manifest.source_backend) == (
        "tiny-a", 32, ENTRY_COUNT, ENTRY_COUNT - len(WITHOUT_CROP), "embedded")
    listed = store.list_entries(limit=1000).entries
    exported = read_all(tmp_path / "gallery.zip")
    assert exported.entries == listed
    ids = [entry.entry_id for entry in listed]
    assert exported.codes.dtype == np.float32
    assert exported.codes.tobytes() == store.codes(ids).tobytes()  # bit-exact
    assert exported.crops == [store.crop(i) for i in ids]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery.zip", "source"]  # no temporary left behind


def test_a_snapshot_does_not_see_writes_made_after_it_started(source, models_a: Path, crop):
    gallery, store = source
    with EmbeddedSnapshot(gallery.data) as snapshot:
        enrol(store, models_a, crop)
        assert len(list(snapshot.entries())) == snapshot.count == ENTRY_COUNT
        assert sum(len(batch.entries) for batch in snapshot.batches(7)) == ENTRY_COUNT
    assert store.counts()[0] == 2 * ENTRY_COUNT


@pytest.mark.parametrize("target", TARGETS)
def test_round_trip_keeps_entries_codes_crops_and_rankings(source, target: str, models_a: Path, tmp_path: Path):
    gallery, store = source
    export_gallery(gallery=gallery, to=tmp_path / "first.zip")
    moved = (settings(models_a, data=tmp_path / "target") if target == "embedded"
             else settings(models_a, uri=str(tmp_path / "g.db")))
    id_map = import_gallery(source=tmp_path / "first.zip", gallery=moved).id_map
    manifest = export_gallery(gallery=moved, to=tmp_path / "second.zip")
    assert (manifest.model_id, manifest.count, manifest.source_backend) == (
        "tiny-a", ENTRY_COUNT, "embedded" if target == "embedded" else "milvus")

    first, second = read_all(tmp_path / "first.zip"), read_all(tmp_path / "second.zip")
    assert [id_map[e.entry_id] for e in first.entries] == [e.entry_id for e in second.entries]
    assert [labels(e) for e in first.entries] == [labels(e) for e in second.entries]
    assert [e.enrolled_at for e in first.entries] == [e.enrolled_at for e in second.entries]  # retention kept
    audited = [json.loads(line) for line in moved.audit_path.read_text().splitlines()]
    assert {r["action"] for r in audited} == {"import"} and all(r["actor"].startswith("cli:") for r in audited)
    assert sorted(i for r in audited for i in r["entry_ids"]) == sorted(id_map.values())
    assert first.codes.tobytes() == second.codes.tobytes()
    assert first.crops == second.crops

    copy = opened(moved)
    try:
        queries = first.codes[::3] + np.float32(0.01)
        for before, after in zip(store.search(queries, 6), copy.search(queries, 6), strict=True):
            assert [id_map[m.entry.entry_id] for m in before] == [m.entry.entry_id for m in after]
            np.testing.assert_allclose([m.distance for m in before], [m.distance for m in after], atol=1e-5)
    finally:
        copy.close()


def test_import_into_a_gallery_of_another_model_is_refused_with_nothing_written(source, models_b: Path,
                                                                                 tmp_path: Path):
    gallery, _ = source
    export_gallery(gallery=gallery, to=tmp_path / "a.zip")
    other = settings(models_b, data=tmp_path / "other")
    store = opened(other)
    store.add([NewEntry("b0")], np.ones((1, 32), np.float32))
    store.close()
    with pytest.raises(GalleryError, match="holds codes of model tiny-b"):
        import_gallery(source=tmp_path / "a.zip", gallery=other)
    fresh = settings(models_b, data=tmp_path / "fresh")
    with pytest.raises(GalleryError, match="codes of model tiny-a .* is model tiny-b"):
        import_gallery(source=tmp_path / "a.zip", gallery=fresh, models=models_b)
    assert not fresh.data.exists()
    store = opened(other)
    assert store.counts() == (1, 1)
    store.close()


def test_a_damaged_file_is_refused_before_anything_is_written(source, tmp_path: Path):
    gallery, _ = source
    export_gallery(gallery=gallery, to=tmp_path / "a.zip")
    whole = (tmp_path / "a.zip").read_bytes()
    (tmp_path / "cut.zip").write_bytes(whole[: len(whole) // 2])
    target = settings(gallery.models, data=tmp_path / "target")
    with pytest.raises(GalleryFileError, match="not a genreid gallery file"):
        import_gallery(source=tmp_path / "cut.zip", gallery=target)
    with zipfile.ZipFile(tmp_path / "a.zip") as whole, zipfile.ZipFile(tmp_path / "edited.zip", "w") as edited:
        for name in whole.namelist():
            data = whole.read(name)
            edited.writestr(name, data.replace(b'"person_id": "p3"', b'"person_id": " "') if name == ENTRIES
                            else data)
    with pytest.raises(GalleryFileError, match=r"entry \d+: person_id ' ' must have"):
        import_gallery(source=tmp_path / "edited.zip", gallery=target)
    assert not target.data.exists()


def check_reembedded(old: list[Entry], crops: list[bytes | None], copied: Copied, new: Settings) -> None:
    """Entries with a crop were copied (labels, metadata, crop) with the new model's codes of their stored crop;
    the others were skipped."""
    assert copied.skipped == [entry.entry_id for entry, crop in zip(old, crops, strict=True) if crop is None]
    kept = [(entry, crop) for entry, crop in zip(old, crops, strict=True) if crop is not None]
    store = opened(new)
    try:
        new_ids = [copied.id_map[entry.entry_id] for entry, _ in kept]
        assert [labels(e) for e in store.get(new_ids)] == [labels(e) for e, _ in kept]
        assert [store.crop(i) for i in new_ids] == [crop for _, crop in kept]
        encoders = Encoders(new.models, device="cpu", threads=1)
        direct = encoders.identity(np.stack([to_chw_float(resized(decode_rgb(crop), encoders.identity_resolution))
                                             for _, crop in kept]))
        np.testing.assert_array_equal(store.codes(new_ids), direct)
        np.testing.assert_array_equal(
            embed_crops(encoders, [crop for _, crop in kept], new_ids, max_pixels=new.max_pixels), direct)
    finally:
        store.close()


@pytest.mark.parametrize("target", TARGETS)
def test_reembed_gives_the_new_models_codes_of_the_stored_crops(source, target: str, models_b: Path,
                                                                tmp_path: Path):
    gallery, store = source  # the old gallery stays open, as its server keeps serving
    new = (settings(models_b, data=tmp_path / "new") if target == "embedded"
           else settings(models_b, uri=str(tmp_path / "g.db")))
    copied = reembed_gallery(source=gallery, target=new, skip_missing_crops=True)
    old = store.list_entries(limit=1000).entries
    check_reembedded(old, [store.crop(entry.entry_id) for entry in old], copied, new)
    with pytest.raises(GalleryError, match=f"already holds {ENTRY_COUNT - len(WITHOUT_CROP)} entries"):
        reembed_gallery(source=gallery, target=new, skip_missing_crops=True)


@pytest.mark.skipif(_milvus_missing() is not None, reason=str(_milvus_missing()))
def test_model_upgrade_on_milvus_reembeds_into_a_second_collection(source, models_a: Path, models_b: Path,
                                                                   tmp_path: Path):
    """The upgrade path of docs/GALLERY_STORE.md: the old collection keeps its codes, the new one gets the new
    model's; replicas move over by pointing at the new collection, and back by pointing at the old one."""
    gallery, _ = source
    export_gallery(gallery=gallery, to=tmp_path / "a.zip")
    uri = str(tmp_path / "g.db")
    old = settings(models_a, uri=uri, collection="gallery_a")
    import_gallery(source=tmp_path / "a.zip", gallery=old)
    new = settings(models_b, uri=uri, collection="gallery_b")
    copied = reembed_gallery(source=old, target=new, skip_missing_crops=True)
    before = read_all(tmp_path / "a.zip")
    exported = export_gallery(gallery=old, to=tmp_path / "old-after.zip")
    assert exported.model_id == "tiny-a" and read_all(tmp_path / "old-after.zip").codes.tobytes() == \
        before.codes.tobytes()
    store = opened(old)
    try:
        listed = store.list_entries(limit=1000).entries
        crops = [store.crop(entry.entry_id) for entry in listed]
    finally:
        store.close()
    check_reembedded(listed, crops, copied, new)


def test_reembed_refuses_entries_without_a_crop_before_writing(source, models_b: Path, tmp_path: Path):
    gallery, store = source
    new = settings(models_b, data=tmp_path / "new")
    missing = store.list_entries(limit=1000).entries[WITHOUT_CROP[0]].entry_id
    with pytest.raises(GalleryError, match=rf"1 of {ENTRY_COUNT} entries have no stored crop .*\(ids {missing}\)"):
        reembed_gallery(source=gallery, target=new)
    assert not new.data.exists()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The CLI's error: one line, the last on stderr (after any progress bar), and no traceback."""
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_cli_exports_imports_and_refuses_with_one_line_and_exit_code_2(
        source, models_b: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    gallery, _ = source
    file = tmp_path / "a.zip"
    code, out, _ = run_cli(["gallery", "export", "--to", str(file), "--data", str(gallery.data)], capsys)
    assert code == 0 and json.loads(out)["count"] == ENTRY_COUNT

    code, _, err = run_cli(["gallery", "import", str(tmp_path / "missing.zip"), "--data", str(tmp_path / "t")],
                           capsys)
    assert code == 2
    assert error_line(err) == f"genreid gallery import: {tmp_path / 'missing.zip'}: no such file"

    other = tmp_path / "other"
    store = opened(settings(models_b, data=other))
    store.add([NewEntry("b0")], np.ones((1, 32), np.float32))
    store.close()
    code, _, err = run_cli(["gallery", "import", str(file), "--data", str(other)], capsys)
    assert code == 2
    assert error_line(err).startswith(f"genreid gallery import: {other}") and "model tiny-b" in error_line(err)

    code, out, _ = run_cli(["gallery", "import", str(file), "--data", str(tmp_path / "t"), "--id-map",
                            str(tmp_path / "ids.json")], capsys)
    assert code == 0 and json.loads(out) == {"added": ENTRY_COUNT, "skipped": 0}
    assert len(json.loads((tmp_path / "ids.json").read_text())) == ENTRY_COUNT

    code, _, err = run_cli(["gallery", "reembed", "--models", str(models_b), "--from-data", str(gallery.data),
                            "--to-data", str(tmp_path / "new")], capsys)
    assert code == 2 and "--skip-missing-crops" in error_line(err)


@pytest.fixture
def target(request: pytest.FixtureRequest, models_a: Path, tmp_path: Path) -> Iterator[Settings]:
    """An empty gallery of model tiny-a on the backend `request.param` names: embedded, milvus-lite (a .db file in
    this process) or Milvus itself (a collection of this test's own on the session's engine, dropped after)."""
    if request.param == "embedded":
        yield settings(models_a, data=tmp_path / "target")
        return
    if _milvus_missing() is not None:
        pytest.skip(str(_milvus_missing()))
    if request.param == "milvus-lite":
        yield settings(models_a, uri=str(tmp_path / "g.db"))
        return
    engine = request.getfixturevalue("milvus_engine_server")
    with engine.collections_dropped_after():
        yield Settings(models=models_a, device="cpu", threads=1, gallery_uri=engine.uri,
                       gallery_collection=f"tools_{abs(hash(str(tmp_path))):x}", data=tmp_path / "target-data")


@pytest.mark.parametrize("target", ["embedded", "milvus-lite", "milvus"], indirect=True)
def test_a_repeated_import_adds_each_entry_once(source, target: Settings, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]):
    """The second import of a file adds nothing and says why, even after a relabel in the gallery; an import cut
    short and run again adds the rest; a file holding an entry twice adds it twice, and again nothing more."""
    gallery, _ = source
    file = tmp_path / "a.zip"
    export_gallery(gallery=gallery, to=file)
    first = import_gallery(source=file, gallery=target, batch_size=5)
    assert (len(first.id_map), first.skipped) == (ENTRY_COUNT, [])
    store = opened(target)
    try:
        moved = store.list_entries(limit=1000).entries
        store.relabel(moved[0].entry_id, person_id="renamed")  # labels change; the origin key does not
        store.remove_entries([moved[-1].entry_id])  # as if the first import had stopped one entry short
    finally:
        store.close()

    args = ["gallery", "import", str(file), "--id-map", str(tmp_path / "ids.json")]
    location = (["--data", str(target.data)] if target.gallery_uri is None
                else ["--gallery-uri", target.gallery_uri, "--gallery-collection", target.gallery_collection])
    code, out, _ = run_cli(args + location, capsys)
    assert code == 0
    assert json.loads(out) == {"added": 1, "skipped": ENTRY_COUNT - 1, "reason": ALREADY_HELD}
    ids = json.loads((tmp_path / "ids.json").read_text())  # every file entry, added or found
    exported = read_all(file).entries
    assert sorted(map(int, ids)) == sorted(e.entry_id for e in exported)
    assert {ids[str(e.entry_id)] for e in exported[:-1]} == {first.id_map[e.entry_id] for e in exported[:-1]}

    again = import_gallery(source=file, gallery=target)
    assert (again.id_map, len(again.skipped), again.summary()["added"]) == ({}, ENTRY_COUNT, 0)
    store = opened(target)
    try:
        assert store.counts()[0] == ENTRY_COUNT
        held = store.list_entries(limit=1000).entries
        by_id = {e.entry_id: e for e in held}
        assert [labels(by_id[ids[str(e.entry_id)]])[1:] for e in exported] == [labels(e)[1:] for e in exported]
        codes = read_all(file).codes
        found = store.search(codes, 2)
        assert [row[0].entry.entry_id for row in found] == [ids[str(e.entry_id)] for e in exported]
        assert all(row[1].distance > 1e-3 for row in found)  # every match once: no twin at distance 0
    finally:
        store.close()


def test_an_entry_enrolled_before_is_skipped_whatever_its_person_and_crop(source, models_a: Path, tmp_path: Path):
    """The origin key is the code's bits, camera, seen_at, track_id and enrolled_at: an entry enrolled on its own
    with those (another person id, no crop) is the file's entry already."""
    gallery, _ = source
    export_gallery(gallery=gallery, to=tmp_path / "a.zip")
    batch = read_all(tmp_path / "a.zip")
    entry = batch.entries[1]
    target = settings(models_a, data=tmp_path / "target")
    store = opened(target)
    try:
        [held] = store.add([NewEntry("someone else", entry.camera, entry.seen_at, entry.track_id, None,
                                     entry.enrolled_at)], batch.codes[1:2])
    finally:
        store.close()
    copied = import_gallery(source=tmp_path / "a.zip", gallery=target)
    assert copied.skipped == [entry.entry_id] and copied.existing == {entry.entry_id: held.entry_id}
    assert len(copied.id_map) == ENTRY_COUNT - 1 and entry.entry_id not in copied.id_map


@pytest.mark.skipif(_milvus_missing() is not None, reason=str(_milvus_missing()))
def test_cli_on_a_milvus_lite_file_answers_without_engine_tracebacks(source, models_a: Path, tmp_path: Path):
    """Importing into a new milvus-lite file logs no engine traceback (milvus-lite has no AllocTimestamp, which
    waiting for an index build asked it for); exporting it while another process holds it fails in one line."""
    gallery, _ = source
    export_gallery(gallery=gallery, to=tmp_path / "a.zip")
    db = tmp_path / "g.db"
    environment = {**os.environ, "GENREID_MODELS": str(models_a), "GENREID_DEVICE": "cpu",
                   "GENREID_DATA": str(tmp_path / "cli-data")}
    cli = [sys.executable, "-m", "genreid.service.cli", "gallery"]
    done = subprocess.run([*cli, "import", str(tmp_path / "a.zip"), "--gallery-uri", str(db)], capture_output=True,
                          text=True, env=environment, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"added": ENTRY_COUNT, "skipped": 0}
    for noise in ("Traceback", "NotImplementedError", "AllocTimestamp", "Method not implemented"):
        assert noise not in done.stderr, done.stderr

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom genreid.service.store.milvus import MilvusStore\n"
         "MilvusStore(sys.argv[1], collection='genreid', code_dim=32, model_id='tiny-a')\nprint('held', flush=True)\n"
         "time.sleep(300)", str(db)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        done = subprocess.run([*cli, "export", "--to", str(tmp_path / "b.zip"), "--gallery-uri", str(db)],
                              capture_output=True, text=True, env=environment, cwd=ROOT, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"genreid gallery export: Milvus gallery {db}: the gallery is in use by another process (milvus-lite opens "
        "a .db in one process only: stop that server, or reach the gallery through it)"]
    assert not (tmp_path / "b.zip").exists()


def test_cli_rebuilds_the_kept_neighbourhoods_of_a_gallery_made_without_them(
        source, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    gallery, store = source
    assert store.neighbourhood_size == 0  # tiny-a carries no re-ranking parameters
    ids = [entry.entry_id for entry in store.list_entries(limit=ENTRY_COUNT).entries]
    store.close()
    with pytest.raises(SystemExit) as refused:
        main(["gallery", "neighbourhoods", "--data", str(gallery.data), "--size", "x"])
    assert refused.value.code == 2 and "'x' is not a whole number" in error_line(capsys.readouterr().err)
    code, out, _ = run_cli(["gallery", "neighbourhoods", "--data", str(gallery.data), "--models", str(gallery.models),
                            "--size", "3"], capsys)
    assert code == 0 and json.loads(out) == {"entries": ENTRY_COUNT, "kept_per_entry": 3}
    rebuilt = opened(gallery)
    try:
        assert rebuilt.neighbourhood_size == 3
        unit = rebuilt.codes(ids) / np.linalg.norm(rebuilt.codes(ids), axis=1, keepdims=True)
        nearest = np.argsort(np.linalg.norm(unit[:, None] - unit[None], axis=2) + np.diag([np.inf] * len(ids)),
                             axis=1, kind="stable")[:, :3]
        assert rebuilt.neighbourhoods(ids, 3) == {i: [ids[j] for j in row] for i, row in zip(ids, nearest, strict=True)}
    finally:
        rebuilt.close()
