"""The Milvus store: a gallery that several replicas share, on a Milvus server or cluster or on milvus-lite.

What each guarantee rests on (docs/GALLERY_STORE.md has the long form):
- Every collection is Strong-consistency and every call asks for Strong: a read sees every write acknowledged
  before it, from any replica. Nothing is cached per process except this process's block of entry ids. On Milvus
  a Strong read waits for the engine's time tick to pass its timestamp (about two ticks of `proxy.timeTickInterval`,
  200 ms by default): docs/GALLERY_STORE.md#consistency-on-milvus says what to set. Reads that go together
  (`reading_together`: re-ranking's, a write's neighbourhood update) share one timestamp from the engine's oracle
  as their guarantee instead: as strong as a Strong read at the block's start, and only the first waits.
- Entry ids: each process claims a random block of 2**21 ids in the aux collection (a claim holds only if no other
  claim of that block is visible after it is written, which Strong reads make safe), so ids are unique across
  replicas and below 2**53 (exact in JavaScript).
- A batch is all or nothing as others see it: its rows carry the batch id, and a `pending` marker for that batch is
  written before them and deleted (one row, atomic) after the last; every read leaves out rows of pending batches.
  When the engine fails mid-batch the rows written so far are deleted, or, if the engine is gone, stay invisible
  until a later sweep removes batches pending for longer than STALE_SECONDS.
- The crop is a field of its entry's row: written and deleted with it. Deleted rows are invisible at once;
  Milvus frees their space at compaction.
- Person counts come from one row per person in the aux collection (upserts are idempotent); a person whose last
  entry is removed while another replica enrols them again can be left uncounted until they are enrolled again.
- Kept neighbourhoods (service/store/neighbourhoods.py) live in `<collection>_kept`, one row per entry, their size in
  a property of the entries' collection (read per write without a Strong wait). They are written after the entries'
  change is visible, so every search they come from sees it, then settled: rewritten from fresh searches until they
  agree, which makes concurrent writers converge. A repair marker row names the entries of a write until then; the
  sweep repairs what a writer that died left marked.

The schema has no nullable field, so Milvus 2.3 to 2.6 and milvus-lite all take it (nullable fields arrived in
Milvus 2.5): an absent camera or track id is stored as NO_LABEL (""; a label is never blank), an absent seen_at as
NO_TIME (below any time a datetime holds), an absent crop as "" (has_crop says which). Collections written by
earlier versions of this store, with nullable fields (milvus-lite), still open: reads map null and the sentinels
alike to None, and the one filter where they differ (excluded cameras) says `is null` for them.

Engine differences the store adapts to, read from the engine's version when it opens: relabel and merge use
partial upserts where the engine has them (Milvus 2.6, milvus-lite 3), else upsert whole rows read just before;
listings page by primary key on Milvus (its queries return the smallest keys first, and offset + limit may not
pass 16,384), by offset on milvus-lite (whose rows come in no set order).
"""

from __future__ import annotations

import base64
import logging
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from genreid.service.core.similarity import unit_length
from genreid.service.store.base import (
    MAX_LABEL,
    NO_FILTER,
    Entry,
    EntryFilter,
    EntryPage,
    GalleryError,
    GalleryStore,
    InvalidEntry,
    Neighbourhood,
    NewEntry,
    StoreUnavailable,
    UnknownEntries,
    check_code_space,
    from_micros,
    to_micros,
    utc,
)
from genreid.service.store.milvus_lite import engine_lock, is_in_process
from genreid.service.store.neighbourhoods import (
    BATCH,
    nearest_others,
    reached_by_search,
    rebuild,
    updates_after_insert,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

BLOCK_BITS = 21  # ids per claimed block: 2**21; blocks are drawn from [1, 2**32), so ids stay below 2**53
STALE_SECONDS = 120.0  # a batch pending this long was abandoned by a failed write
SWEEP_SECONDS = 60.0  # how often writes look for abandoned batches
CHUNK = 256  # rows per insert request, far below Milvus's message size limit
MAX_CROP_CHARS = 65_535  # Milvus VARCHAR limit; stored crops are ~2 KB (base64 ~3 KB)
MODEL_PROPERTY = "genreid.model_id"
ENTRY_FIELDS = ["entry_id", "person_id", "camera", "seen_at", "track_id", "has_crop", "enrolled_at"]
ROW_FIELDS = [*ENTRY_FIELDS, "crop", "batch", "code", "unit"]  # a whole row, for engines without partial upserts
PAGE = 16_384  # rows per query when a read needs every matching id (Milvus: offset + limit <= 16,384)
NO_LABEL = ""  # camera or track_id absent (labels are never blank)
NO_TIME = -(2**62)  # seen_at absent: microseconds before any datetime (year 1 is -6.2e16)
NO_CROP = ""  # has_crop is false
INDEX_WAIT_SECONDS = 600.0  # flush(): how long to wait for the index to cover the sealed rows
READ_THREADS = 8  # pending-batch reads run beside searches (_nearest); a search waits for its own
# pymilvus pings every 10 s even on an idle channel. A gRPC server with default settings (milvus-lite's) answers a
# third ping without calls with GOAWAY "too_many_pings", about 30 s into any idle spell; a call racing that GOAWAY
# failed (a 503, or a store that would not open). Pings only during calls; every call has a timeout instead.
GRPC_OPTIONS: dict[str, Any] = {"grpc.keepalive_permit_without_calls": False}
KEPT_CAPACITY = 4_096  # ids per kept row (Milvus's most for an ARRAY field): a neighbourhood, or a marker's entries
NOT_FULL = 4.0  # the radius stored for a neighbourhood of fewer than its size: Milvus stores no infinity, and
# distances between unit-length codes are at most 2
SIZE_PROPERTY = "genreid.neighbourhood_size"  # the kept size: a collection property, read without a Strong wait
SETTLE_ROUNDS = 4  # fresh searches a writer compares its neighbourhoods with, at most (concurrent writers: more)
SETTLE_BATCH = 4_096  # entries per settling search (Milvus answers at most 16,384 queries in one)
RETRIES = 4  # recomputations when an entry a computation read is removed under it by another writer


def literal(text: str) -> str:
    """A string literal of Milvus's filter language (C-style escapes)."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return f'"{escaped}"'


def literals(texts: Sequence[str]) -> str:
    return "[" + ", ".join(literal(t) for t in sorted(texts)) + "]"


def _both(one: str, other: str) -> str:
    """Two filters that must both hold ("" holds for every row)."""
    return " and ".join(f"({clause})" for clause in (one, other) if clause)


def _ints(values: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


@dataclass(frozen=True)
class IndexSpec:
    """The vector index: FLAT (exact), HNSW or IVF_FLAT, written as e.g. `HNSW:M=16,efConstruction=200,ef=64`;
    `ef` (HNSW) and `nprobe` (IVF) are search parameters, the rest build parameters. Recall and latency of
    each are measured in docs/BENCHMARKS.md."""

    kind: str = "FLAT"
    build: dict[str, int] = field(default_factory=dict)
    search: dict[str, int] = field(default_factory=dict)

    KINDS = ("FLAT", "HNSW", "IVF_FLAT")
    SEARCH_KEYS = ("ef", "nprobe")

    @classmethod
    def parse(cls, text: str) -> IndexSpec:
        kind, _, params = text.partition(":")
        kind = kind.strip().upper()
        if kind not in cls.KINDS:
            raise ValueError(f"gallery index {kind!r}: choose one of {', '.join(cls.KINDS)}")
        build, search = {}, {}
        for item in filter(None, (p.strip() for p in params.split(","))):
            key, _, value = item.partition("=")
            if not value.strip().isdigit():
                raise ValueError(f"gallery index parameter {item!r}: write NAME=INTEGER")
            (search if key.strip() in cls.SEARCH_KEYS else build)[key.strip()] = int(value)
        return cls(kind, build, search)


@dataclass(frozen=True)
class EngineTraits:
    """What the engine behind a URI does differently, from its version string (`get_server_version`)."""

    version: str
    partial_upserts: bool  # upsert(partial_update=True): Milvus 2.6 and milvus-lite 3
    sorted_queries: bool  # a query with a limit returns the smallest primary keys first (Milvus, not milvus-lite)
    timestamps: bool  # hands out timestamps (AllocTimestamp: Milvus; milvus-lite logs a traceback and returns none)

    @classmethod
    def of(cls, version: str) -> EngineTraits:
        if version.startswith("milvus_lite"):
            return cls(version, partial_upserts=True, sorted_queries=False, timestamps=False)
        numbers = re.match(r"v?(\d+)\.(\d+)", version)
        release = (int(numbers[1]), int(numbers[2])) if numbers else (0, 0)
        return cls(version, partial_upserts=release >= (2, 6), sorted_queries=True, timestamps=True)


class _EngineNoise(logging.Filter):
    """milvus-lite logs a traceback when it cannot open its data directory, before pymilvus raises a bare "Open
    local milvus failed": keep the cause for the store's own one-line error, and drop the traceback."""

    def __init__(self, caught: list[BaseException]):
        super().__init__()
        self.caught = caught

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            self.caught.append(record.exc_info[1])
        return False


class MilvusStore(GalleryStore):
    """One Milvus collection of entries plus `<collection>_meta` for id blocks and persons, `<collection>_pending`
    for pending batches and `<collection>_kept` for kept neighbourhoods."""

    backend = "milvus"

    def __init__(self, uri: str, *, collection: str, code_dim: int, model_id: str | None,
                 token: str | None = None, index: IndexSpec | None = None, timeout: float = 10.0,
                 neighbourhood_size: int = 0, clock: Callable[[], datetime] | None = None):
        """`timeout` bounds every engine call, so an unreachable engine is an error, never a hang.
        `neighbourhood_size`: how many nearest others a new gallery keeps per entry (an existing one keeps what it
        recorded: `_kept_size`)."""
        super().__init__(code_dim=code_dim, clock=clock)
        self.uri = uri
        self.collection = collection
        self.meta = f"{collection}_meta"  # one row per person, and the claimed id blocks
        self.pending_batches = f"{collection}_pending"  # kept apart and tiny: every read scans it
        self.kept = f"{collection}_kept"  # kept neighbourhoods (entry_id > 0) and repair markers (entry_id < 0)
        self.model_id = model_id
        self.index = index or IndexSpec()
        self.timeout = timeout
        self._owner = uuid.uuid4().hex
        self._token = token or ""
        self._lock = threading.Lock()  # guards this process's id block
        self._connecting = threading.Lock()
        # milvus-lite in this process loses concurrent writes after a restart: its calls go one at a time
        self._serial: AbstractContextManager[Any] = engine_lock(uri) if is_in_process(uri) else nullcontext()
        self._broken = False
        self._block: int | None = None
        self._next = 0
        self._last_sweep = 0.0
        self._nullable = False  # a collection of an earlier version of this store (nullable fields)
        self._reads = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="milvus-pending")  # see _nearest
        self._together = threading.local()  # the timestamp reading_together carries, per thread
        try:
            if is_in_process(uri):  # milvus-lite in this process wants its directory's parent to exist
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
            with self._serial:
                self._client = self._connect()
                self.engine = EngineTraits.of(self._client.get_server_version(timeout=self.timeout))
                self._open_collections()
            # outside the engine lock: a repair searches, and a search reads pending batches on another thread
            self.neighbourhood_size = self._kept_size(neighbourhood_size)
            self._sweep()
        except GalleryError:
            raise
        except MilvusException as err:
            raise GalleryError(f"Milvus gallery {self._where()}: {err.message}") from None
        except Exception as err:  # noqa: BLE001 - connection failures come as several grpc/OS types
            raise GalleryError(f"Milvus gallery {self._where()} unreachable: {err}") from None

    def _where(self) -> str:
        """The URI without credentials, and the collection."""
        parts = urlsplit(self.uri)
        if parts.scheme and parts.netloc:
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        else:
            shown = self.uri
        return f"{shown} collection {self.collection}"

    # --- set-up -------------------------------------------------------------------------------------------
    def _open_collections(self) -> None:
        """Create what is missing (collection, then its index without waiting for a build: nothing to build yet),
        then load all four at once and wait: the engine loads them in parallel, about 2.5 s on Milvus 2.3 for a
        new gallery, and at once when another replica already did. A gallery made before neighbourhoods were kept
        gets its `_kept` collection here."""
        client = self._client
        if not client.has_collection(self.collection, timeout=self.timeout):
            self._create_entries()
        for name in (self.meta, self.pending_batches):
            if not client.has_collection(name, timeout=self.timeout):
                self._create_meta(name)
        if not client.has_collection(self.kept, timeout=self.timeout):
            self._create_kept()
        info = client.describe_collection(self.collection, timeout=self.timeout)
        dims = [f.get("params", {}).get("dim") for f in info["fields"] if f["name"] == "unit"]
        if dims != [self.code_dim]:
            raise GalleryError(f"Milvus gallery {self._where()} holds codes of another size than this model's "
                               f"{self.code_dim}-d ({dims})")
        recorded = (info.get("properties") or {}).get(MODEL_PROPERTY)
        check_code_space(recorded=recorded, model_id=self.model_id, where=f"Milvus gallery {self._where()}")
        if recorded is None and self.model_id is not None:
            client.alter_collection_properties(self.collection, properties={MODEL_PROPERTY: self.model_id},
                                               timeout=self.timeout)
        self._nullable = any(f.get("nullable") for f in info["fields"])
        for name, vector, index in ((self.collection, "unit", self.index), (self.meta, "v", IndexSpec()),
                                    (self.pending_batches, "v", IndexSpec()), (self.kept, "v", IndexSpec())):
            self._ensure_index(name, vector, index)
        self._load()

    def _load(self) -> None:
        """Load the collections (a no-op for loaded ones), all requests first, then wait for each."""
        for name in self._collections:
            self._client.load_collection(name, timeout=self.timeout, _async=True)
        for name in self._collections:
            self._client.load_collection(name, timeout=self.timeout)

    def _index_params(self, vector: str, index: IndexSpec) -> Any:
        params = self._client.prepare_index_params()
        params.add_index(field_name=vector, index_type=index.kind, metric_type="L2", params=index.build,
                         index_name=vector)
        return params

    def _ensure_index(self, name: str, vector: str, index: IndexSpec) -> None:
        """The vector index, declared without waiting for a build. (Waiting asks milvus-lite for AllocTimestamp,
        which it does not have: its gRPC server logged a NotImplementedError traceback per collection.) A replica
        that finds the collection made by another may get there before its index: it declares it itself."""
        if self._client.list_indexes(name, timeout=self.timeout):
            return
        try:
            self._client.create_index(name, self._index_params(vector, index), timeout=self.timeout, sync=False)
        except MilvusException:
            if not self._client.list_indexes(name, timeout=self.timeout):  # else another replica declared it
                raise

    def _create(self, name: str, schema: Any, **kwargs: Any) -> None:
        try:
            self._client.create_collection(name, schema=schema, consistency_level="Strong", timeout=self.timeout,
                                           **kwargs)
        except MilvusException:
            if not self._client.has_collection(name, timeout=self.timeout):  # else another replica made it
                raise

    def _create_entries(self) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("entry_id", DataType.INT64, is_primary=True)
        schema.add_field("person_id", DataType.VARCHAR, max_length=MAX_LABEL * 4)  # bytes: 4 per character
        for name in ("camera", "track_id"):  # NO_LABEL when absent
            schema.add_field(name, DataType.VARCHAR, max_length=MAX_LABEL * 4)
        schema.add_field("seen_at", DataType.INT64)  # NO_TIME when absent
        schema.add_field("enrolled_at", DataType.INT64)
        schema.add_field("has_crop", DataType.BOOL)
        schema.add_field("crop", DataType.VARCHAR, max_length=MAX_CROP_CHARS)  # NO_CROP when absent
        schema.add_field("batch", DataType.INT64)
        schema.add_field("code", DataType.ARRAY, element_type=DataType.FLOAT, max_capacity=self.code_dim)
        schema.add_field("unit", DataType.FLOAT_VECTOR, dim=self.code_dim)
        properties = {} if self.model_id is None else {MODEL_PROPERTY: self.model_id}
        self._create(self.collection, schema, properties=properties)

    @property
    def _collections(self) -> tuple[str, ...]:
        return self.collection, self.meta, self.pending_batches, self.kept

    def _create_meta(self, name: str) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=MAX_LABEL * 4 + 16)
        schema.add_field("kind", DataType.VARCHAR, max_length=16)
        schema.add_field("value", DataType.INT64)
        schema.add_field("at", DataType.INT64)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field in every collection
        self._create(name, schema)

    def _create_kept(self) -> None:
        """A row per entry: its kept ids and distances, nearest first, and the radius `_wider_than` filters on
        (NOT_FULL for infinity). A repair marker has a negative key, the entries of its write in `ids` and when it
        was written in `at`."""
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("entry_id", DataType.INT64, is_primary=True)
        schema.add_field("radius", DataType.DOUBLE)
        schema.add_field("ids", DataType.ARRAY, element_type=DataType.INT64, max_capacity=KEPT_CAPACITY)
        schema.add_field("distances", DataType.ARRAY, element_type=DataType.FLOAT, max_capacity=KEPT_CAPACITY)
        schema.add_field("at", DataType.INT64)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
        self._create(self.kept, schema)

    # --- engine calls ---------------------------------------------------------------------------------------
    def _connect(self) -> MilvusClient:
        """A connection of this store's own: pymilvus shares one per URI otherwise, and a shared channel that
        failed to recover while the engine was down stays closed. No keepalive pings while idle (GRPC_OPTIONS).
        In-process milvus-lite whose directory another process holds fails in one line, not a traceback."""
        if not is_in_process(self.uri):
            return MilvusClient(uri=self.uri, token=self._token, timeout=self.timeout, dedicated=True,
                                grpc_options=GRPC_OPTIONS)
        caught: list[BaseException] = []
        engine_log = logging.getLogger("milvus_lite.server_manager")
        keep = _EngineNoise(caught)
        engine_log.addFilter(keep)
        try:
            return MilvusClient(uri=self.uri, token=self._token, timeout=self.timeout, dedicated=True,
                                grpc_options=GRPC_OPTIONS)
        except Exception:
            if any(type(cause).__name__ == "DataDirLockedError" for cause in caught):
                raise GalleryError(f"Milvus gallery {self.uri}: the gallery is in use by another process "
                                   "(milvus-lite opens a .db in one process only: stop that server, or reach the "
                                   "gallery through it)") from None
            if caught:
                raise GalleryError(f"Milvus gallery {self.uri}: milvus-lite cannot open it: {caught[0]}") from None
            raise
        finally:
            engine_log.removeFilter(keep)

    def _live_client(self) -> MilvusClient:
        """The client, reconnected first when the last call failed (the engine may have restarted: it then
        reloads what was loaded by itself, and a load request waits for that)."""
        with self._connecting:
            if self._broken:
                try:
                    self._client.close()
                except Exception:  # noqa: BLE001 - the old channel is being dropped either way
                    pass
                self._client = self._connect()
                self._load()
                self._broken = False
            return self._client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One engine call with the timeout; any failure becomes StoreUnavailable (a 503) and the next call starts
        on a fresh connection, so the store recovers by itself once the engine is back."""
        return self._on_engine(lambda client: getattr(client, method)(*args, timeout=self.timeout, **kwargs))

    def _on_engine(self, call: Callable[[MilvusClient], T]) -> T:
        try:
            with self._serial:
                return call(self._live_client())
        except MilvusException as err:
            self._broken = True
            raise StoreUnavailable(f"Milvus gallery {self._where()}: {err.message}") from None
        except Exception as err:  # noqa: BLE001 - grpc and socket errors of an engine that went away
            self._broken = True
            raise StoreUnavailable(f"Milvus gallery {self._where()} unreachable: {err}") from None

    def _query(self, name: str, expr: str, fields: list[str], **kwargs: Any) -> list[dict[str, Any]]:
        return list(self._call("query", name, filter=expr, output_fields=fields, **self._level(), **kwargs))

    # --- consistency: Strong, or one timestamp for a block of reads (reading_together) ---------------------------
    @contextmanager
    def reading_together(self) -> Iterator[None]:
        """The block asks the engine's timestamp oracle for a timestamp first, and every read in it asks to see at
        least that (its guarantee timestamp): all that was acknowledged before the block, as a Strong read at that
        moment would. The first read waits for the query nodes' clock to pass it; the rest, past it already, do not
        wait again. An engine without the oracle (milvus-lite) keeps every read Strong."""
        if getattr(self._together, "ts", None) is not None:  # nested: the outer block carries
            yield
            return
        self._together.ts = self._oracle_timestamp()
        try:
            yield
        finally:
            self._together.ts = None

    def _oracle_timestamp(self) -> int:
        """A fresh timestamp from the engine's oracle; 0 (every read stays Strong) for an engine without one."""
        if not self.engine.timestamps:
            return 0
        # pymilvus (pinned in pyproject.toml) has the call on its connection only; it answers 0 where unimplemented
        return self._on_engine(lambda client: client._get_connection().alloc_timestamp(timeout=self.timeout)) or 0

    def _level(self) -> dict[str, Any]:
        ts = getattr(self._together, "ts", None)
        return ({"consistency_level": "Customized", "guarantee_timestamp": ts} if ts
                else {"consistency_level": "Strong"})

    def _carrying(self, read: Callable[[], T]) -> Callable[[], T]:
        """`read`, to run on another thread with this thread's carried timestamp."""
        ts = getattr(self._together, "ts", None)

        def run() -> T:
            self._together.ts = ts
            try:
                return read()
            finally:
                self._together.ts = None
        return run

    def _meta_row(self, key: str, kind: str, value: int) -> dict[str, Any]:
        return {"key": key, "kind": kind, "value": value, "at": time.time_ns() // 1000, "v": [0.0, 0.0]}

    def _delete_meta(self, keys: Sequence[str], collection: str | None = None) -> None:
        """By primary key where the keys are plain (a filter delete first queries what matches, and under load
        milvus-lite's query missed a marker written just before, leaving an acknowledged batch pending); by a
        filter of our own literals where they hold a person id (pymilvus does not escape string ids)."""
        if all(key.replace(":", "").isalnum() for key in keys):
            self._call("delete", collection or self.meta, ids=list(keys))
        else:
            self._call("delete", collection or self.meta, filter=f"key in {literals(keys)}")

    def _pending(self) -> list[int]:
        return [row["value"] for row in self._query(self.pending_batches, "value > 0", ["value"])]

    def _sweep_if_due(self) -> None:
        if time.monotonic() - self._last_sweep > SWEEP_SECONDS:
            self._sweep()

    def _sweep(self) -> None:
        """Delete the rows of batches abandoned by failed writes, and repair the kept neighbourhoods that writes
        left marked (both pending or marked for over STALE_SECONDS)."""
        self._last_sweep = time.monotonic()
        cutoff = time.time_ns() // 1000 - int(STALE_SECONDS * 1e6)
        stale = [row["value"] for row in self._query(self.pending_batches, f"at < {cutoff}", ["value"])]
        if stale:
            log.warning("removing %d abandoned batch(es) from %s", len(stale), self._where())
            self._call("delete", self.collection, filter=f"batch in {_ints(stale)}")
            self._delete_meta([f"pending:{b}" for b in stale], self.pending_batches)
        markers = self._query(self.kept, f"entry_id < 0 and at < {cutoff}", ["entry_id", "ids"])
        if markers:
            log.warning("repairing the kept neighbourhoods of %d interrupted write(s) in %s", len(markers),
                        self._where())
            try:
                self._repair(markers)
            except StoreUnavailable as err:  # the markers stay for the next sweep; writes go on meanwhile
                log.warning("%s; the next sweep repairs them", err)

    def _claim_block(self) -> int:
        for _ in range(8):
            block = secrets.randbelow(2**32 - 1) + 1
            self._call("insert", self.meta, [self._meta_row(f"block:{block}:{self._owner}", "block",
                                                                         block)])
            claims = self._query(self.meta, f'kind == "block" and value == {block}', ["key"])
            if {row["key"] for row in claims} == {f"block:{block}:{self._owner}"}:
                return block
            self._delete_meta([f"block:{block}:{self._owner}"])
        raise StoreUnavailable(f"Milvus gallery {self._where()}: could not claim a block of entry ids")

    def _new_ids(self, count: int) -> list[int]:
        ids = []
        with self._lock:
            while len(ids) < count:
                if self._block is None or self._next >= 2**BLOCK_BITS:
                    self._block, self._next = self._claim_block(), 0
                take = min(count - len(ids), 2**BLOCK_BITS - self._next)
                start = (self._block << BLOCK_BITS) + self._next
                ids += range(start, start + take)
                self._next += take
        return ids

    # --- writes -------------------------------------------------------------------------------------------
    def _insert_rows(self, rows: list[dict[str, Any]]) -> None:
        """One insert request (the tests make the engine fail here after some rows)."""
        self._call("insert", self.collection, rows)

    def _insert(self, entries: list[NewEntry], codes: np.ndarray, unit_codes: np.ndarray) -> list[Entry]:
        crops = [None if e.crop is None else base64.b64encode(e.crop).decode("ascii") for e in entries]
        if any(c is not None and len(c) > MAX_CROP_CHARS for c in crops):
            raise InvalidEntry(f"a stored crop is over {MAX_CROP_CHARS * 3 // 4} bytes")
        self._sweep_if_due()
        ids = self._new_ids(len(entries))
        now = self.clock()
        enrolled = [e.enrolled_at or now for e in entries]
        batch = ids[0]
        marker = f"pending:{batch}"
        self._call("insert", self.pending_batches, [self._meta_row(marker, "pending", batch)])
        rows = [{"entry_id": i, "person_id": e.person_id, "camera": e.camera or NO_LABEL,
                 "seen_at": NO_TIME if e.seen_at is None else to_micros(e.seen_at), "track_id": e.track_id or NO_LABEL,
                 "enrolled_at": to_micros(when), "has_crop": crop is not None, "crop": crop or NO_CROP,
                 "batch": batch, "code": code.tolist(), "unit": unit.tolist()}
                for i, e, crop, code, unit, when in zip(ids, entries, crops, codes, unit_codes, enrolled, strict=True)]
        try:
            for start in range(0, len(rows), CHUNK):
                self._insert_rows(rows[start : start + CHUNK])
        except Exception:
            try:  # undo now if the engine still answers; else the sweep does it, and reads skip them meanwhile
                self._call("delete", self.collection, filter=f"batch == {batch}")
                self._delete_meta([marker], self.pending_batches)
            except StoreUnavailable:
                pass
            raise
        self._call("upsert", self.meta, [self._meta_row(f"person:{p}", "person", 0)
                                                    for p in sorted({e.person_id for e in entries})])
        self.neighbourhood_size = size = self._recorded_size() or 0
        repairs = self._mark(ids) if size else []
        self._delete_meta([marker], self.pending_batches)  # the batch becomes visible, all at once
        if size:
            self._upkeep(repairs, size, settle=lambda: self._kept_after_insert(ids, unit_codes, size))
        return [Entry(i, e.person_id, e.camera, e.seen_at, e.track_id, e.crop is not None, when)
                for i, e, when in zip(ids, entries, enrolled, strict=True)]

    def _set_person(self, ids: Sequence[int], person_id: str) -> None:
        """Give these entries `person_id`, CHUNK rows per upsert (each row atomic). Without partial upserts
        (Milvus before 2.6) each row is read whole and written back whole: a row removed by another replica in
        between is skipped when the read misses it, and can come back when the removal falls between the read and
        the write (partial upserts never bring a row back)."""
        for start in range(0, len(ids), CHUNK):
            chunk = [int(i) for i in ids[start : start + CHUNK]]
            if self.engine.partial_upserts:
                self._call("upsert", self.collection, [{"entry_id": i, "person_id": person_id} for i in chunk],
                           partial_update=True)
                continue
            rows = self._rows(chunk, ROW_FIELDS)
            if rows:
                self._call("upsert", self.collection, [{**rows[i], "person_id": person_id} for i in chunk
                                                       if i in rows])

    def _relabel(self, entry_id: int, person_id: str) -> Entry:
        found = self.get([entry_id])
        if not found:
            raise UnknownEntries([entry_id])
        self._call("upsert", self.meta, [self._meta_row(f"person:{person_id}", "person", 0)])
        self._set_person([entry_id], person_id)
        self._forget_if_empty([found[0].person_id])
        return self.get([entry_id])[0]

    def _merge(self, person_id: str, into: str) -> list[int]:
        """Entry by entry (each upsert is atomic; repeating a merge that failed half-way finishes it)."""
        ids = self._ids(f"person_id == {literal(person_id)}")
        if ids:
            self._call("upsert", self.meta, [self._meta_row(f"person:{into}", "person", 0)])
            self._set_person(ids, into)
            self._forget_if_empty([person_id])
        return ids

    def remove_entries(self, entry_ids: Sequence[int]) -> list[int]:
        found = self.get(list(dict.fromkeys(int(i) for i in entry_ids)))
        return self._remove([e.entry_id for e in found], {e.person_id for e in found})

    def remove_person(self, person_id: str) -> list[int]:
        return self._remove(self._ids(f"person_id == {literal(person_id)}"), {person_id})

    def remove_enrolled_before(self, cutoff: datetime) -> list[int]:
        found = self.get(self._ids(f"enrolled_at < {to_micros(utc(cutoff))}"))
        return self._remove([e.entry_id for e in found], {e.person_id for e in found})

    def _remove(self, ids: list[int], persons: set[str]) -> list[int]:
        """The entries' kept rows go before the entries (no row outlives its entry); the neighbourhoods holding them
        are looked up once they are gone, so one that another writer gave them meanwhile is settled too."""
        if not ids:
            return ids
        self._sweep_if_due()
        self.neighbourhood_size = size = self._recorded_size() or 0
        repairs = []
        if size:
            repairs = self._mark(ids)
            self._delete_keys(self.kept, ids)
        self._delete_keys(self.collection, ids)
        self._forget_if_empty(persons)
        if size:
            self._upkeep(repairs, size, settle=lambda: self._holding(ids))
        return ids

    def _delete_keys(self, name: str, keys: Sequence[int]) -> None:
        for start in range(0, len(keys), PAGE):
            self._call("delete", name, filter=f"entry_id in {_ints(keys[start : start + PAGE])}")

    def _forget_if_empty(self, persons: Sequence[str] | set[str]) -> None:
        gone = [p for p in persons if not self._query(self.collection, f"person_id == {literal(p)}",
                                                      ["entry_id"], limit=1)]
        if gone:
            self._delete_meta([f"person:{p}" for p in gone])

    # --- kept neighbourhoods (service/store/neighbourhoods.py) ----------------------------------------------
    def _recorded_size(self) -> int | None:
        recorded = (self._call("describe_collection", self.collection).get("properties") or {}).get(SIZE_PROPERTY)
        return None if recorded is None else int(recorded)

    def _record_size(self, size: int) -> None:
        if size > KEPT_CAPACITY:
            raise GalleryError(f"Milvus gallery {self._where()} keeps at most {KEPT_CAPACITY} neighbours per entry")
        self._call("alter_collection_properties", self.collection, properties={SIZE_PROPERTY: str(size)})

    def _kept_size(self, wanted: int) -> int:
        """The size the gallery's neighbourhoods are kept at: what it recorded, or `wanted` for a gallery that
        recorded none and holds no entry yet (one made before neighbourhoods were kept keeps none until
        `genreid gallery neighbourhoods` builds them). Every write reads it again: a rebuild to another size
        reaches the other replicas with their next write."""
        size = self._recorded_size()
        if size is None:
            if self._query(self.collection, self._visible(), ["entry_id"], limit=1):
                size = 0
            else:
                size = wanted
                self._record_size(size)
        if size < wanted:
            log.warning("%s keeps %d neighbours per entry, re-ranking needs %d: it searches them until "
                        "`genreid gallery neighbourhoods` rebuilds them", self._where(), size, wanted)
        return size

    @staticmethod
    def _kept_row(key: int, ids: Sequence[int], *, radius: float = 0.0, distances: Sequence[float] = (),
                  at: int = 0) -> dict[str, Any]:
        return {"entry_id": key, "radius": radius, "ids": [int(i) for i in ids],
                "distances": [float(d) for d in distances], "at": at, "v": [0.0, 0.0]}

    def _kept(self, entry_ids: Sequence[int]) -> dict[int, Neighbourhood]:
        keys = [int(i) for i in entry_ids]
        found: dict[int, Neighbourhood] = {}
        for start in range(0, len(keys), PAGE):
            rows = self._query(self.kept, f"entry_id in {_ints(keys[start : start + PAGE])}",
                               ["entry_id", "ids", "distances"])
            found.update((row["entry_id"], Neighbourhood(tuple(row["ids"]), tuple(row["distances"]))) for row in rows)
        return found

    def _wider_than(self, distance: float) -> dict[int, float]:
        """{entry id: radius} of every kept neighbourhood at least `distance` wide: the entries that
        `reached_by_search` checks beyond the codes' nearest."""
        rows = self._every(self.kept, f"entry_id > 0 and radius >= {float(distance):.17f}", ["entry_id", "radius"])
        return {row["entry_id"]: math.inf if row["radius"] >= NOT_FULL else row["radius"] for row in rows}

    def _reached_by(self, unit_codes: np.ndarray, size: int, *, leaving: Sequence[int]) -> list[dict[int, float]]:
        return self._despite_removals(lambda: reached_by_search(self, unit_codes, size, leaving=leaving))

    def _holding(self, entry_ids: Sequence[int]) -> list[int]:
        """The entries whose kept neighbourhoods hold any of these."""
        found: list[int] = []
        for start in range(0, len(entry_ids), PAGE):
            held = f"entry_id > 0 and array_contains_any(ids, {_ints(entry_ids[start : start + PAGE])})"
            found += (row["entry_id"] for row in self._every(self.kept, held, ["entry_id"]))
        return found

    def _despite_removals(self, compute: Callable[[], T]) -> T:
        """`compute`, again while it meets an entry removed under it (by another writer, between reading its kept
        row and its code): that kept row is dropped first. At most RETRIES times."""
        for _ in range(RETRIES):
            try:
                return compute()
            except UnknownEntries as gone:
                self._delete_keys(self.kept, gone.ids)
        raise StoreUnavailable(f"Milvus gallery {self._where()}: entries kept being removed under this write")

    def _keep(self, lists: dict[int, Neighbourhood], *, size: int) -> None:
        rows = [self._kept_row(entry_id, hood.ids, radius=min(hood.radius(size), NOT_FULL), distances=hood.distances)
                for entry_id, hood in lists.items()]
        for start in range(0, len(rows), CHUNK):
            self._call("upsert", self.kept, rows[start : start + CHUNK])

    def _mark(self, entry_ids: Sequence[int]) -> list[int]:
        """Repair markers naming the entries of a write, written before its change becomes visible and dropped
        once their neighbourhoods are settled; their keys (negated fresh entry ids: unique across replicas)."""
        chunks = [entry_ids[start : start + KEPT_CAPACITY] for start in range(0, len(entry_ids), KEPT_CAPACITY)]
        keys = [-i for i in self._new_ids(len(chunks))]
        at = time.time_ns() // 1000
        self._call("insert", self.kept, [self._kept_row(key, chunk, at=at)
                                         for key, chunk in zip(keys, chunks, strict=True)])
        return keys

    def _kept_after_insert(self, ids: list[int], unit_codes: np.ndarray, size: int) -> list[int]:
        """Keep `updates_after_insert` (the batch is visible already), BATCH entries at a time as if each chunk were
        added after the one before (each search leaves the chunk out by an id filter: a short expression); the
        entries it wrote. Each chunk's reads go together (one wait for the engine's clock instead
        of six): what they miss of a concurrent write, `_settle`'s searches find."""
        written: set[int] = set()
        for start in range(0, len(ids), BATCH):
            with self.reading_together():
                updates = updates_after_insert(self, ids[start : start + BATCH], unit_codes[start : start + BATCH],
                                               size)
            self._keep(updates, size=size)
            written.update(updates)
        return sorted(written)

    def _upkeep(self, repairs: list[int], size: int, *, settle: Callable[[], Iterable[int]]) -> None:
        """Settle the kept neighbourhoods a visible change moved (`settle` names them), then drop its repair
        markers. The change stands whatever happens here: a failure is logged, and the markers leave the rest to
        the sweep."""
        try:
            self._settle(settle(), size)
            self._delete_keys(self.kept, repairs)
        except StoreUnavailable as err:
            log.warning("%s; a sweep repairs the kept neighbourhoods of this write", err)

    def _units_of(self, entry_ids: Iterable[int]) -> tuple[list[int], np.ndarray]:
        """The ones of these entries still there, sorted, and their unit-length codes."""
        rows = self._rows(sorted(set(entry_ids)), ["entry_id", "code"])
        ids = sorted(rows)
        codes = np.array([rows[i]["code"] for i in ids], np.float32).reshape(len(ids), self.code_dim)
        return ids, unit_length(codes)

    def _settle(self, entry_ids: Iterable[int], size: int) -> None:
        """Rewrite those of these kept neighbourhoods that a fresh search finds otherwise, until none is (at most
        SETTLE_ROUNDS rounds, each over the ones the last rewrote), and drop the rows of entries gone. Concurrent
        writers' searches can miss each other's entries, and two writers can each rewrite a neighbourhood from what
        they read before the other wrote; as each settles what it wrote after writing it, the last to write a
        neighbourhood leaves it as a search finds it."""
        wanted = sorted(set(entry_ids))
        for _ in range(SETTLE_ROUNDS):
            moved: dict[int, Neighbourhood] = {}
            with self.reading_together():  # one timestamp per round, taken after the round before wrote
                for start in range(0, len(wanted), SETTLE_BATCH):
                    moved |= self._moved(wanted[start : start + SETTLE_BATCH], size)
            if not moved:
                return
            self._keep(moved, size=size)
            wanted = sorted(moved)
        log.warning("%s: %d kept neighbourhoods still moved after %d rounds; the writes moving them settle them",
                    self._where(), len(wanted), SETTLE_ROUNDS)

    def _moved(self, entry_ids: list[int], size: int) -> dict[int, Neighbourhood]:
        """The fresh neighbourhoods of those of these entries whose kept ones differ (the kept ones read beside the
        search: one wait for the engine's clock); the kept rows of entries gone are dropped."""
        ids, units = self._units_of(entry_ids)
        self._delete_keys(self.kept, sorted(set(entry_ids).difference(ids)))
        reading = self._reads.submit(self._carrying(lambda: self._kept(ids)))
        fresh = nearest_others(self, ids, units, size)
        kept = reading.result()
        return {i: hood for i, hood in fresh.items() if i not in kept or kept[i].ids != hood.ids}

    def _repair(self, markers: list[dict[str, Any]]) -> None:
        """Finish what marked writes left undone: the neighbourhoods of their entries still there and of every
        entry one of them reaches, and of every entry holding one of those gone, settled from fresh searches."""
        marked = sorted({int(i) for row in markers for i in row["ids"]})
        size = self.neighbourhood_size
        if size:
            with self.reading_together():
                ids, units = self._units_of(marked)
                gone = sorted(set(marked).difference(ids))
                settle = {*ids, *self._holding(gone)}
                for start in range(0, len(ids), BATCH):  # each search leaves its chunk out by an id filter
                    chunk = slice(start, start + BATCH)
                    settle.update(i for found in self._reached_by(units[chunk], size, leaving=ids[chunk])
                                  for i in found)
            self._delete_keys(self.kept, gone)
            self._settle(settle, size)  # what the block's reads missed of concurrent writes, its searches find
        self._delete_keys(self.kept, [row["entry_id"] for row in markers])

    def rebuild_neighbourhoods(self, size: int, progress: Callable[[int], None] = lambda done: None) -> None:
        """Records the size first, so replicas writing meanwhile keep their entries' neighbourhoods at it (a
        neighbourhood rebuilt from a search that missed a concurrent batch can stay stale: rebuild while writes
        are paused)."""
        self._record_size(size)
        self._call("delete", self.kept, filter="entry_id != 0")  # markers too: every neighbourhood is searched anew
        self.neighbourhood_size = size
        if size:
            rebuild(self, self._ids(""), size, progress, keep=self._keep)

    # --- reads --------------------------------------------------------------------------------------------
    def _visible(self) -> str:
        """Rows of no pending batch ("" while none is pending: no scan of every row)."""
        pending = self._pending()
        return f"batch not in {_ints(pending)}" if pending else ""

    def _expr(self, entry_filter: EntryFilter) -> str:
        """The visible rows the filter admits, in Milvus's language."""
        return _both(self._visible(), self._conditions(entry_filter))

    def _conditions(self, entry_filter: EntryFilter) -> str:
        """The filter in Milvus's language, with the semantics of EntryFilter.admits (absent values are the
        sentinels, or null in a collection of an earlier version)."""
        clauses = []
        if entry_filter.cameras is not None:
            clauses.append(f"camera in {literals(entry_filter.cameras)}" if entry_filter.cameras else "entry_id < 0")
        if entry_filter.exclude_cameras:
            outside = f"camera not in {literals(entry_filter.exclude_cameras)}"
            clauses.append(f"(camera is null or {outside})" if self._nullable else outside)
        if entry_filter.seen_after is not None:
            clauses.append(f"seen_at >= {to_micros(entry_filter.seen_after)}")
        if entry_filter.seen_before is not None:
            clauses.append(f"seen_at > {NO_TIME} and seen_at <= {to_micros(entry_filter.seen_before)}")
        if entry_filter.person_id is not None:
            clauses.append(f"person_id == {literal(entry_filter.person_id)}")
        if entry_filter.exclude_ids:
            clauses.append(f"entry_id not in {_ints(sorted(entry_filter.exclude_ids))}")
        return " and ".join(clauses)  # "" admits everything, and costs milvus-lite no scan of every row

    def _ids(self, condition: str) -> list[int]:
        """Every visible id matching `condition`, sorted."""
        return sorted(row["entry_id"] for row in self._every(self.collection, _both(condition, self._visible()),
                                                             ["entry_id"]))

    def _every(self, name: str, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        """Every row of `name` (keyed by entry_id) matching `expr`: by primary key pages on Milvus (smallest keys
        first; an offset may not pass 16,384 there), by offset on milvus-lite (rows in no set order, no such
        limit)."""
        found: list[dict[str, Any]] = []
        after = expr
        while True:
            if self.engine.sorted_queries:
                rows = self._query(name, after, fields, limit=PAGE)
                if rows:
                    after = _both(expr, f"entry_id > {max(row['entry_id'] for row in rows)}")
            else:
                rows = self._query(name, expr, fields, limit=PAGE, offset=len(found))
            found += rows
            if len(rows) < PAGE:
                return found

    def counts(self) -> tuple[int, int]:
        entries = self._query(self.collection, self._visible(), ["count(*)"])[0]["count(*)"]
        persons = self._query(self.meta, 'kind == "person"', ["count(*)"])[0]["count(*)"]
        return int(entries), int(persons)

    def _rows(self, entry_ids: Sequence[int], fields: list[str]) -> dict[int, dict[str, Any]]:
        """The visible rows of these ids, the pending batches read beside them (as `_hits` does): one wait for the
        engine's clock instead of two."""
        ids = [int(i) for i in entry_ids]
        pending = self._reads.submit(self._carrying(self._pending))
        try:
            rows = [row for start in range(0, len(ids), PAGE)
                    for row in self._query(self.collection, f"entry_id in {_ints(ids[start : start + PAGE])}",
                                           list(dict.fromkeys([*fields, "batch"])))]
        finally:
            hidden = set(pending.result())
        return {row["entry_id"]: row for row in rows if row["batch"] not in hidden}

    @staticmethod
    def _entry(row: dict[str, Any]) -> Entry:
        seen = row.get("seen_at")
        return Entry(row["entry_id"], row["person_id"], row.get("camera") or None,
                     None if seen == NO_TIME else from_micros(seen), row.get("track_id") or None,
                     bool(row["has_crop"]), from_micros(row.get("enrolled_at")))

    def get(self, entry_ids: Sequence[int]) -> list[Entry]:
        found = self._rows(entry_ids, ENTRY_FIELDS)
        return [self._entry(found[int(i)]) for i in entry_ids if int(i) in found]

    def codes(self, entry_ids: Sequence[int]) -> np.ndarray:
        found = self._rows(entry_ids, ["entry_id", "code"])
        unknown = [int(i) for i in entry_ids if int(i) not in found]
        if unknown:
            raise UnknownEntries(unknown)
        return np.array([found[int(i)]["code"] for i in entry_ids], np.float32).reshape(len(entry_ids),
                                                                                        self.code_dim)

    def crop(self, entry_id: int) -> bytes | None:
        row = self._rows([entry_id], ["entry_id", "crop"]).get(int(entry_id))
        return None if row is None or not row["crop"] else base64.b64decode(row["crop"])

    def list_entries(self, entry_filter: EntryFilter = NO_FILTER, *, offset: int = 0, limit: int = 50
                     ) -> EntryPage:
        """Every admitted id is read (and sorted) first: O(admitted) per page."""
        ids = self._ids(self._conditions(entry_filter))  # _ids adds the visibility clause once
        return EntryPage(len(ids), self.get(ids[offset : offset + limit]))

    def _search(self, unit_queries: np.ndarray, k: int, expr: str, fields: list[str]) -> list[list[dict[str, Any]]]:
        return self._call("search", self.collection, data=unit_queries.tolist(), limit=k, filter=expr,
                          output_fields=[*fields, "batch"], anns_field="unit",
                          search_params={"metric_type": "L2", "params": self.index.search}, **self._level())

    def _hits(self, unit_queries: np.ndarray, k: int, entry_filter: EntryFilter, fields: list[str]
              ) -> list[list[dict[str, Any]]]:
        """The search and the pending-batch read run at once, each Strong: one wait for the engine's clock instead
        of two (a Strong read waits about two time ticks on Milvus). Only when a hit belongs to a pending batch
        (a write in flight or abandoned: rare) is the search run again without those batches."""
        if entry_filter.person_id is not None:
            raise ValueError("a search cannot filter by person id")
        conditions = self._conditions(entry_filter)
        pending = self._reads.submit(self._carrying(self._pending))
        try:
            found = self._search(unit_queries, k, conditions, fields)
        finally:
            hidden = set(pending.result())
        if hidden and any(hit["entity"]["batch"] in hidden for row in found for hit in row):
            found = self._search(unit_queries, k, _both(f"batch not in {_ints(sorted(hidden))}", conditions), fields)
        return found

    def _nearest(self, unit_queries: np.ndarray, k: int, entry_filter: EntryFilter
                 ) -> list[list[tuple[Entry, float]]]:
        return [[(self._entry({**hit["entity"], "entry_id": hit["entry_id"]}), float(hit["distance"]))
                 for hit in row] for row in self._hits(unit_queries, k, entry_filter, ENTRY_FIELDS)]

    def _nearest_ids(self, unit_queries: np.ndarray, k: int, entry_filter: EntryFilter
                     ) -> list[list[tuple[int, float]]]:
        """Ids only: the engine sends no labels (neighbourhood upkeep asks for thousands of hits per write; Milvus
        2.3 names a hit's key only when it is asked for)."""
        return [[(hit["entry_id"], float(hit["distance"])) for hit in row]
                for row in self._hits(unit_queries, k, entry_filter, ["entry_id"])]

    def flush(self, wait: float = INDEX_WAIT_SECONDS) -> None:
        """Seal what was written into segments and wait (up to `wait` seconds) until the vector index covers
        them. Milvus seals by itself (segment size or idle time; milvus-lite once 128 MiB are buffered) and builds
        indexes on sealed segments in the background; until then new rows are searched without the index (on
        milvus-lite, in Python). `genreid gallery import` flushes at its end (docs/BENCHMARKS.md#gallery-backends
        has both states)."""
        self._call("flush", self.collection)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            progress = self._call("describe_index", self.collection, self._index_name()) or {}
            if not progress.get("pending_index_rows"):
                return
            time.sleep(0.5)
        log.warning("%s: the index did not cover every sealed row within %.0f s", self._where(), wait)

    def _index_name(self) -> str:
        """The entries' vector index: named after its field, or as the engine named it in an earlier version."""
        names = self._call("list_indexes", self.collection)
        return "unit" if "unit" in names or not names else names[0]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "location": self._where(), "index": self.index.kind,
                "engine": self.engine.version}

    def close(self) -> None:
        """The connection only: the collections stay loaded for the other replicas."""
        self._reads.shutdown(wait=True)
        self._client.close()
        if is_in_process(self.uri):  # milvus-lite in this process: stop its engine and free the data directory
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

