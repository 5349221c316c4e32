"""`genreid gallery export | import | reembed`: move a gallery between backends and between models.

The file format (FORMAT, version FORMAT_VERSION) is a zip archive of four members:

  manifest.json   format, format_version, model_id, code_dim, count, crops, source_backend, created_at
  entries.jsonl   one JSON object per entry, in entry-id order: entry_id (the source's), person_id, camera,
                  seen_at and enrolled_at (ISO 8601, UTC, to the microsecond), track_id, crop ([offset, length] in
                  crops.bin or null)
  codes.npy       (count, code_dim) little-endian float32, row i the code of line i, exactly as stored
  crops.bin       the stored crops (WebP) back to back, uncompressed

Why this shape: a zip is one file any language opens, every member carries a CRC-32 (a damaged file is refused,
not half-imported), and its directory sits at the end, so a truncated copy does not open at all. Codes are an .npy
member so they keep their exact bits (no decimal text) and numpy or any .npy reader loads them; crops, already
compressed, go into one stored (uncompressed) member with offsets instead of one member per crop, which keeps a
gallery of millions of crops from becoming millions of directory records. Crops are streamed straight into the
archive and the small members spooled beside it, so memory stays flat at any gallery size; the archive is written
under a temporary name and renamed when complete, so the final name never holds a partial file.

Importing is idempotent: an entry of the file that the gallery already holds is skipped, so importing a file twice,
or again after an import cut short, adds each entry once. An entry is recognised by its origin key (`origin_key`):
a hash of its code's exact bits, camera, seen_at, track_id and enrolled_at. Those are what export and import keep
bit for bit and what no later operation changes (person ids do change: relabel, merge), so the key needs no field of
its own in any backend, holds for files written before it existed, and follows an entry through any number of
moves (embedded -> file -> Milvus -> file -> ...). Why not the exporting gallery's id and entry id: neither the
galleries nor the files carry a gallery id, and an id pair would need a column in every backend; why the code's
bits identify an entry: they are the model's output for that crop, so two entries share them only when one crop was
enrolled twice, and then enrolled_at, to the microsecond, still tells them apart.
"""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from tqdm import tqdm

from genreid.service.audit import AuditLog, AuditRecord
from genreid.service.core.imaging import ImageError, preprocess
from genreid.service.core.model_json import ModelError, ModelMetadata
from genreid.service.core.reranking import neighbours_kept
from genreid.service.encoders import Encoders
from genreid.service.settings import Settings
from genreid.service.store import Entry, GalleryError, GalleryStore, NewEntry, UnknownEntries, open_gallery
from genreid.service.store.factory import backend_name
from genreid.service.store.snapshot import Batch, EmbeddedSnapshot

log = logging.getLogger(__name__)

FORMAT = "genreid-gallery"
FORMAT_VERSION = 1
MANIFEST, ENTRIES, CODES, CROPS = "manifest.json", "entries.jsonl", "codes.npy", "crops.bin"
BATCH = 256  # entries per store write (each one transaction) and per read from a source
LIST_PAGE = 4096  # entries per listing of a store read through its interface
CODE_DTYPE = np.dtype("<f4")
NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class GalleryFileError(ValueError):
    """The file is not a gallery file this version reads; the message names the file and the fault."""


@dataclass(frozen=True)
class Manifest:
    model_id: str | None  # the code space of every code in the file (None: a gallery older than model ids)
    code_dim: int | None  # None only for an empty gallery
    count: int
    crops: int  # entries with a stored crop
    source_backend: str
    created_at: str  # ISO 8601, UTC
    format: str = FORMAT
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Copied:
    """What an import or re-embedding added: source entry id -> new entry id, the source ids left out and why, and
    for an import the entry each skipped one is already in the gallery as (source entry id -> entry id)."""

    id_map: dict[int, int]
    skipped: list[int] = field(default_factory=list)
    reason: str = ""
    existing: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The CLI's answer: {"added": N, "skipped": M} and, when M > 0, why."""
        out: dict[str, Any] = {"added": len(self.id_map), "skipped": len(self.skipped)}
        if self.skipped:
            out["reason"] = self.reason
        return out


ALREADY_HELD = ("already in the gallery (an entry with the same origin key: the same code bits, camera, seen_at, "
                "track_id and enrolled_at), imported before")
WITHOUT_CROP = "stored without a crop to re-embed (--skip-missing-crops)"


class Source(Protocol):
    """A gallery read in entry-id order: an embedded snapshot or a store read through its interface."""

    backend: str
    count: int
    code_dim: int | None
    model_id: str | None

    def entries(self) -> Iterator[Entry]: ...

    def batches(self, size: int) -> Iterator[Batch]: ...


class StoreSource:
    """A gallery read through the GalleryStore interface (Milvus). Not a snapshot: an engine shared by replicas
    has no read transaction, so entries written meanwhile may be missed, and entries removed meanwhile can shift
    the pages (`batches` warns when the count changed while it read)."""

    def __init__(self, store: GalleryStore, *, model_id: str | None):
        self.store = store
        self.backend = store.backend
        self.code_dim: int | None = store.code_dim
        self.model_id = model_id
        self.count = store.counts()[0]

    def _pages(self) -> Iterator[list[Entry]]:
        """LIST_PAGE entries per listing: a listing may cost O(gallery) (Milvus sorts every id), so few of them."""
        offset = 0
        while page := self.store.list_entries(offset=offset, limit=LIST_PAGE).entries:
            yield page
            offset += len(page)

    def entries(self) -> Iterator[Entry]:
        for page in self._pages():
            yield from page

    def batches(self, size: int) -> Iterator[Batch]:
        for page in self._pages():
            for start in range(0, len(page), size):
                batch = self._batch(page[start : start + size])
                if batch.entries:
                    yield batch
        now = self.store.counts()[0]
        if now != self.count:
            log.warning("the gallery changed while it was read (%d entries, now %d): re-run for an exact copy",
                        self.count, now)

    def _batch(self, entries: list[Entry]) -> Batch:
        try:
            codes = self.store.codes([entry.entry_id for entry in entries])
        except UnknownEntries as gone:  # removed since they were listed
            removed = set(gone.ids)
            entries = [entry for entry in entries if entry.entry_id not in removed]
            codes = self.store.codes([entry.entry_id for entry in entries])
        return Batch(entries, codes, [self.store.crop(e.entry_id) if e.has_crop else None for e in entries])


@contextmanager
def opened_source(gallery: Settings) -> Iterator[Source]:
    """The gallery `gallery` names, for reading: an embedded one as a read-only snapshot (its server may keep
    running), any other through its store, opened for `gallery.models`' code space (the model that serves it)."""
    if backend_name(gallery) == "embedded":
        with EmbeddedSnapshot(gallery.data) as snapshot:
            yield snapshot
        return
    metadata = ModelMetadata.load(gallery.models)
    store = open_gallery(gallery, code_dim=metadata.code_dim, model_id=metadata.model_id,
                         neighbourhood_size=neighbours_kept(metadata))
    try:
        yield StoreSource(store, model_id=metadata.model_id)
    finally:
        store.close()


@contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed to it once the block succeeds (and synced first): whoever opens
    `path` finds the previous file or the complete new one, never a partial one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield partial
        with partial.open("rb+") as written:
            os.fsync(written.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_id_map(path: Path, copied: Copied) -> None:
    """{"source entry id": entry id, ...} as JSON: the new id of each added entry, and the id in the gallery of
    each entry an import skipped as already there."""
    mapped = {**copied.existing, **copied.id_map}
    with written_atomically(path) as partial:
        partial.write_text(json.dumps({str(old): new for old, new in sorted(mapped.items())}) + "\n")


def origin_key(entry: Entry, code: np.ndarray, *, enrolment: bool = True) -> str:
    """The entry's origin key (see the module's doc): sha256 of its code's float32 bits and of its camera,
    seen_at, track_id and (with `enrolment`) enrolled_at."""
    digest = hashlib.sha256(np.ascontiguousarray(code, CODE_DTYPE).tobytes())
    labels = [entry.camera, _iso(entry.seen_at), entry.track_id, _iso(entry.enrolled_at) if enrolment else None]
    digest.update(json.dumps(labels).encode())
    return digest.hexdigest()


class HeldEntries:
    """The origin keys of what a gallery holds, read once through its store (entries and codes, no crops), for an
    import to skip what is there already. Each held entry answers for one file entry: a file holding an entry
    twice adds the second copy once. An entry of a file without enrolled_at (older exports) is matched on the
    rest of the key."""

    def __init__(self, store: GalleryStore):
        self._full: dict[str, list[int]] = {}
        self._partial: dict[str, list[int]] = {}
        offset = 0
        while page := store.list_entries(offset=offset, limit=LIST_PAGE).entries:
            codes = store.codes([entry.entry_id for entry in page])
            for entry, code in zip(page, codes, strict=True):
                self._full.setdefault(origin_key(entry, code), []).append(entry.entry_id)
                self._partial.setdefault(origin_key(entry, code, enrolment=False), []).append(entry.entry_id)
            offset += len(page)

    def take(self, entry: Entry, code: np.ndarray) -> int | None:
        """The held entry that `entry` (of a file) already is, now spoken for, or None."""
        full = entry.enrolled_at is not None
        found = (self._full if full else self._partial).get(origin_key(entry, code, enrolment=full))
        return found.pop(0) if found else None


# --- the file ---------------------------------------------------------------------------------------------
def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _entry_line(entry: Entry, crop: tuple[int, int] | None) -> bytes:
    return json.dumps({"entry_id": entry.entry_id, "person_id": entry.person_id, "camera": entry.camera,
                       "seen_at": _iso(entry.seen_at), "track_id": entry.track_id, "crop": crop,
                       "enrolled_at": _iso(entry.enrolled_at)}).encode() + b"\n"


def _write_file(archive: zipfile.ZipFile, source: Source, progress: tqdm) -> Manifest:
    """Crops stream into the archive; entries and codes are spooled and added after them."""
    count = crop_count = 0
    with tempfile.TemporaryFile() as entries, tempfile.TemporaryFile() as codes:
        with archive.open(_member(CROPS), "w", force_zip64=True) as crops:
            offset = 0
            for batch in source.batches(BATCH):
                for entry, crop in zip(batch.entries, batch.crops, strict=True):
                    place = None if crop is None else (offset, len(crop))
                    if crop is not None:
                        crops.write(crop)
                        offset += len(crop)
                        crop_count += 1
                    entries.write(_entry_line(entry, place))
                codes.write(batch.codes.astype(CODE_DTYPE, copy=False).tobytes())
                count += len(batch.entries)
                progress.update(len(batch.entries))
        code_dim = source.code_dim
        with archive.open(_member(CODES), "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": CODE_DTYPE.str, "fortran_order": False, "shape": (count, code_dim or 0)})
            codes.seek(0)
            shutil.copyfileobj(codes, member)
        entries.seek(0)
        with archive.open(_member(ENTRIES, zipfile.ZIP_DEFLATED), "w", force_zip64=True) as member:
            shutil.copyfileobj(entries, member)
    manifest = Manifest(model_id=source.model_id, code_dim=code_dim, count=count, crops=crop_count,
                        source_backend=source.backend,
                        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    archive.writestr(_member(MANIFEST), json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def _member(name: str, compress_type: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    """A member dated now (zipfile dates streamed members 1980)."""
    info = zipfile.ZipInfo(name, date_time=datetime.now(timezone.utc).timetuple()[:6])
    info.compress_type = compress_type
    return info


class GalleryFile:
    """A gallery file opened for reading; the manifest and the members' shapes are checked at open, every byte's
    CRC and every entry by `verify()`."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise GalleryFileError(f"{path}: no such file") from None
        except (zipfile.BadZipFile, OSError) as err:
            raise GalleryFileError(f"{path}: not a genreid gallery file ({err})") from None
        try:
            self.manifest = self._manifest()
            with self._zip.open(CODES) as codes:
                self._codes_header(codes)
        except BaseException:
            self._zip.close()
            raise

    def _fault(self, what: str) -> GalleryFileError:
        return GalleryFileError(f"{self.path}: {what}")

    def _manifest(self) -> Manifest:
        missing = {MANIFEST, ENTRIES, CODES, CROPS} - set(self._zip.namelist())
        if missing:
            raise self._fault(f"not a genreid gallery file (no {', '.join(sorted(missing))})")
        try:
            raw = json.loads(self._zip.read(MANIFEST))
        except ValueError as err:
            raise self._fault(f"unreadable manifest ({err})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise self._fault("not a genreid gallery file (its manifest names another format)")
        version = raw.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise self._fault(f"format version {version} is not one this genreid reads (up to {FORMAT_VERSION}): "
                              "upgrade genreid")
        try:
            manifest = Manifest(**raw)
        except TypeError as err:
            raise self._fault(f"unreadable manifest ({err})") from None
        return manifest

    def _codes_header(self, member: IO[bytes]) -> None:
        """Position `member` at the first code, having checked it holds (count, code_dim) float32."""
        try:
            version = np.lib.format.read_magic(member)
            shape, fortran, dtype = NPY_HEADERS[version](member)
        except (ValueError, KeyError) as err:
            raise self._fault(f"{CODES} is not an .npy array ({err})") from None
        want = (self.manifest.count, self.manifest.code_dim or 0)
        if shape != want or fortran or dtype != CODE_DTYPE:
            raise self._fault(f"{CODES} holds {dtype} {shape}; the manifest promises float32 {want}")

    def _entries(self) -> Iterator[tuple[Entry, tuple[int, int] | None]]:
        with self._zip.open(ENTRIES) as member:
            for number, line in enumerate(io.TextIOWrapper(member, encoding="utf-8"), 1):
                try:
                    yield _parsed(json.loads(line))
                except (ValueError, TypeError, KeyError) as err:
                    raise self._fault(f"{ENTRIES} line {number}: {err}") from None

    def verify(self) -> None:
        """Read the whole file once (CRCs, every entry and its labels, crops in order), before anything is
        written from it: a damaged or hand-edited file is refused whole rather than imported in part."""
        bad = self._zip.testzip()
        if bad is not None:
            raise self._fault(f"{bad} is damaged (CRC mismatch)")
        count, offset = 0, 0
        for entry, crop in self._entries():
            try:
                GalleryStore._checked(NewEntry(entry.person_id, entry.camera, entry.seen_at, entry.track_id))
            except ValueError as err:
                raise self._fault(f"entry {entry.entry_id}: {err}") from None
            if crop is not None:
                if crop[0] != offset:
                    raise self._fault(f"entry {entry.entry_id}: crop at {crop[0]}, expected {offset}")
                offset += crop[1]
            count += 1
        stored = self._zip.getinfo(CROPS).file_size
        if count != self.manifest.count or offset != stored:
            raise self._fault(f"{count} entries and {offset} crop bytes, but the manifest promises "
                              f"{self.manifest.count} entries and {CROPS} holds {stored} bytes")

    def batches(self, size: int) -> Iterator[Batch]:
        row_bytes = (self.manifest.code_dim or 0) * CODE_DTYPE.itemsize
        with self._zip.open(CODES) as codes, self._zip.open(CROPS) as crops:
            self._codes_header(codes)
            entries = self._entries()
            while chunk := list(islice(entries, size)):
                blob = codes.read(row_bytes * len(chunk))
                if len(blob) != row_bytes * len(chunk):
                    raise self._fault(f"{CODES} ends before entry {chunk[0][0].entry_id}")
                yield Batch([entry for entry, _ in chunk],
                            np.frombuffer(blob, CODE_DTYPE).reshape(len(chunk), -1).astype(np.float32),
                            [None if crop is None else crops.read(crop[1]) for _, crop in chunk])

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> GalleryFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _parsed(raw: dict[str, Any]) -> tuple[Entry, tuple[int, int] | None]:
    crop = None if raw["crop"] is None else (int(raw["crop"][0]), int(raw["crop"][1]))
    if not isinstance(raw["entry_id"], int) or not isinstance(raw["person_id"], str) or not all(
            isinstance(raw[key], str | None) for key in ("camera", "track_id")):
        raise ValueError("entry_id must be an integer, person_id a string, camera and track_id strings or null")
    return Entry(raw["entry_id"], raw["person_id"], raw["camera"], _moment(raw["seen_at"]), raw["track_id"],
                 crop is not None, _moment(raw.get("enrolled_at"))), crop


# --- the tools --------------------------------------------------------------------------------------------
def export_gallery(*, gallery: Settings, to: Path) -> Manifest:
    """Write every entry of the gallery `gallery` names (codes, labels, metadata, crops) to the file `to`.

    An embedded gallery is read as one consistent snapshot beside its running server; another backend through
    its store, for the code space of `gallery.models` (see StoreSource for what that read guarantees)."""
    with opened_source(gallery) as source, written_atomically(to) as partial:
        with zipfile.ZipFile(partial, "w", allowZip64=True) as archive, \
                tqdm(total=source.count, unit="entry", desc="export") as progress:
            return _write_file(archive, source, progress)


def rebuild_neighbourhoods(*, gallery: Settings, size: int | None = None) -> dict[str, int]:
    """Search every entry's nearest others anew and keep `size` of them per entry from now on (default: what
    the gallery's model re-ranks with): after a gallery made before neighbourhoods were kept, or a new model's
    re-ranking parameters need more. An embedded gallery only while no server holds it."""
    metadata = ModelMetadata.load(gallery.models)
    wanted = neighbours_kept(metadata) if size is None else size
    store = open_gallery(gallery, code_dim=metadata.code_dim, model_id=metadata.model_id, neighbourhood_size=wanted)
    try:
        entries = store.counts()[0]
        with tqdm(total=entries, unit="entry", desc="neighbourhoods") as progress:
            store.rebuild_neighbourhoods(wanted, progress.update)
    finally:
        store.close()
    return {"entries": entries, "kept_per_entry": wanted}


def _new(entry: Entry, crop: bytes | None) -> NewEntry:
    return NewEntry(entry.person_id, entry.camera, entry.seen_at, entry.track_id, crop, entry.enrolled_at)


def _add(store: GalleryStore, audit: AuditLog, action: str, entries: list[Entry], codes: np.ndarray,
         crops: list[bytes | None], copied: Copied, total: int) -> None:
    """One all-or-nothing write, audited as `action` by the user at the command line; a failure says how far the
    copy got (everything before it is stored)."""
    try:
        added = store.add([_new(entry, crop) for entry, crop in zip(entries, crops, strict=True)], codes)
    except (GalleryError, ValueError) as err:
        raise GalleryError(f"{err} (after {len(copied.id_map)} of {total} entries were added, up to source "
                           f"entry {max(copied.id_map, default='none')}; this batch was not)") from None
    audit.record(AuditRecord(actor=f"cli:{getpass.getuser()}", action=action, route=None,
                             entry_ids=[e.entry_id for e in added], person_ids=sorted({e.person_id for e in added})))
    copied.id_map.update((old.entry_id, new.entry_id) for old, new in zip(entries, added, strict=True))


def _check_models(models: Path, *, model_id: str | None, code_dim: int | None, what: str) -> None:
    metadata = ModelMetadata.load(models)
    if metadata.model_id != model_id or code_dim not in (None, metadata.code_dim):
        raise GalleryError(f"{what} holds codes of model {model_id} ({code_dim}-d), but {models} is model "
                           f"{metadata.model_id} ({metadata.code_dim}-d): codes of two models do not compare; "
                           "use `genreid gallery reembed` to move to another model")


def _neighbours_kept(models: Path, model_id: str | None) -> int:
    """What a new gallery of `model_id` keeps per entry: that model's need when `models` is it, else none."""
    try:
        metadata = ModelMetadata.load(models)
    except ModelError:
        return 0
    return neighbours_kept(metadata) if metadata.model_id == model_id else 0


def import_gallery(*, source: Path, gallery: Settings, models: Path | None = None, batch_size: int = BATCH) -> Copied:
    """Add every entry of the file `source` that the gallery `gallery` names does not hold yet (new entry ids,
    from that store), `batch_size` per all-or-nothing write; the ones it holds (by origin key: HeldEntries) are
    `skipped`, so a second import of one file adds nothing. The target is opened for the file's code space, so a
    gallery of another model refuses before anything is written; `models`, when given, must be that model too (the
    one that will serve the target). Two imports of one file into one gallery at the same time can both add it."""
    with GalleryFile(source) as file:
        file.verify()
        manifest = file.manifest
        if models is not None:
            _check_models(models, model_id=manifest.model_id, code_dim=manifest.code_dim, what=str(source))
        copied = Copied({}, reason=ALREADY_HELD)
        if manifest.code_dim is None:  # an empty gallery: nothing to add, and no code size to open a store with
            return copied
        store = open_gallery(gallery, code_dim=manifest.code_dim, model_id=manifest.model_id,
                             neighbourhood_size=_neighbours_kept(models or gallery.models, manifest.model_id))
        try:
            held = HeldEntries(store)
            audit = AuditLog(gallery.audit_path, power_safe=gallery.power_safe)
        except BaseException:
            store.close()
            raise
        try:
            with tqdm(total=manifest.count, unit="entry", desc="import") as progress:
                for batch in file.batches(batch_size):
                    new = []
                    for row, entry in enumerate(batch.entries):
                        there = held.take(entry, batch.codes[row])
                        if there is None:
                            new.append(row)
                        else:
                            copied.skipped.append(entry.entry_id)
                            copied.existing[entry.entry_id] = there
                    if new:
                        _add(store, audit, "import", [batch.entries[row] for row in new], batch.codes[new],
                             [batch.crops[row] for row in new], copied, manifest.count)
                    progress.update(len(batch.entries))
            flush = getattr(store, "flush", None)  # Milvus: seal what was added and index it, as a gallery settles
            if copied.id_map and flush is not None:
                flush()
        finally:
            store.close()
            audit.close()
        if copied.skipped:
            log.info("%d of %d entries of %s were skipped: %s", len(copied.skipped), manifest.count, source,
                     ALREADY_HELD)
        return copied


def _same_gallery(one: Settings, other: Settings) -> bool:
    if backend_name(one) != backend_name(other):
        return False
    if backend_name(one) == "embedded":
        return one.data.resolve() == other.data.resolve()
    return (one.gallery_uri, one.gallery_collection) == (other.gallery_uri, other.gallery_collection)


def _without_crops(source: Source, *, skip: bool) -> list[int]:
    """Ids of entries stored without a crop; refused, naming a few, unless they are to be skipped."""
    missing = [entry.entry_id for entry in source.entries() if not entry.has_crop]
    if missing and not skip:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise GalleryError(f"{len(missing)} of {source.count} entries have no stored crop to re-embed (ids {shown}); "
                           "nothing was written: leave them out with --skip-missing-crops")
    return missing


def embed_crops(encoders: Encoders, crops: list[bytes], entry_ids: list[int], *, max_pixels: int) -> np.ndarray:
    """Identity codes of stored crops, decoded and resized to Inv-Id's input as the service does an upload."""
    images = np.empty((len(crops), 3, *encoders.identity_resolution), np.float32)
    for i, (crop, entry_id) in enumerate(zip(crops, entry_ids, strict=True)):
        try:
            images[i] = preprocess(crop, encoders.identity_resolution, max_pixels)
        except ImageError as err:
            raise ImageError(f"entry {entry_id}'s stored crop: {err}") from None
    return encoders.identity(images)


def reembed_gallery(*, source: Settings, target: Settings, skip_missing_crops: bool = False,
                    batch_size: int = BATCH) -> Copied:
    """Embed every stored crop of the gallery `source` names with the model `target.models` into the new, empty
    gallery `target` names, keeping labels, metadata and crops (how a deployment moves to a new model: the old
    gallery keeps serving meanwhile, an embedded one too). The model and the new gallery are opened exactly as
    `genreid serve` will open them on `target`. Entries without a crop are refused before anything is opened or
    written, or left out (`skipped`) with `skip_missing_crops`."""
    from genreid.service.app import open_services  # the server's own loading of models and store (FastAPI: serve extra)

    if _same_gallery(source, target):
        raise GalleryError("the source and target are the same gallery: re-embed into a new one")
    with opened_source(source) as read:
        copied = Copied({}, _without_crops(read, skip=skip_missing_crops), reason=WITHOUT_CROP)
        services = open_services(target)
        store = services.gallery
        try:
            held = store.counts()[0]
            if held:
                raise GalleryError(f"the target gallery already holds {held} entries: re-embed into an empty one")
            total = read.count - len(copied.skipped)
            with tqdm(total=total, unit="entry", desc="reembed") as progress:
                for batch in read.batches(batch_size):
                    kept = [(entry, crop) for entry, crop in zip(batch.entries, batch.crops, strict=True)
                            if crop is not None]
                    if kept:
                        entries, crops = [entry for entry, _ in kept], [crop for _, crop in kept]
                        codes = embed_crops(services.encoders, crops, [entry.entry_id for entry in entries],
                                            max_pixels=target.max_pixels)
                        _add(store, services.audit, "reembed", entries, codes, crops, copied, total)
                    progress.update(len(kept))
        finally:
            services.close()
    return copied
