"""The gallery store contract every backend honours; routes, re-ranking and the gallery tools see only this.

A backend writes and reads entries and answers one question about codes: the squared Euclidean distances of
the k nearest *unit-length* codes (`_nearest`). The comparison rule itself (core.similarity: unit length,
then the distance) is applied here, once, so no backend re-implements it. docs/GALLERY_STORE.md states what
each backend guarantees.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from genreid.service.core.similarity import unit_length

MAX_LABEL = 256  # characters of a person id, camera or track id


class GalleryError(RuntimeError):
    """The gallery cannot be used as asked: held by another process, made by another model, unreachable."""


class StoreUnavailable(GalleryError):
    """The gallery's engine failed or could not be reached during a call; nothing of the call was applied."""


class StorageFull(StoreUnavailable):
    """The gallery's disk (or its database's size limit) is full: the write was refused, reads go on."""


class InvalidEntry(ValueError):
    """What a write was given breaks the contract (a blank label, a naive time, a bad code): refused, nothing
    written; the HTTP layer answers 422 with the message."""


class UnknownEntries(KeyError):
    """Entry ids the gallery does not hold (`ids` lists them)."""

    def __init__(self, ids: Sequence[int]):
        super().__init__(f"no gallery entr{'y' if len(ids) == 1 else 'ies'} {', '.join(map(str, ids))}")
        self.ids = list(ids)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    """One enrolled crop: entry ids are per image, person ids are labels that can change (relabel, merge)."""

    entry_id: int
    person_id: str
    camera: str | None = None
    seen_at: datetime | None = None  # timezone-aware, UTC
    track_id: str | None = None
    has_crop: bool = False
    enrolled_at: datetime | None = None  # when the store took it (UTC): what retention counts from


@dataclass(frozen=True)
class NewEntry:
    """What enrolment stores for one crop, besides its code."""

    person_id: str
    camera: str | None = None
    seen_at: datetime | None = None
    track_id: str | None = None
    crop: bytes | None = None  # the small stored image (genreid.service.core.imaging.stored_crop)
    enrolled_at: datetime | None = None  # None: now; an imported entry keeps its own, so a move resets no retention


@dataclass(frozen=True)
class Match:
    entry: Entry
    distance: float  # between unit-length codes, in [0, 2] (genreid.service.core.similarity)


@dataclass(frozen=True)
class EntryFilter:
    """Which entries a search or a listing considers; an empty filter admits every entry. Filtered searches are
    exact: the k nearest among the admitted entries, never a post-filtered top-k that could come back short."""

    cameras: frozenset[str] | None = None  # only these cameras (an entry without a camera is never in a set)
    exclude_cameras: frozenset[str] = frozenset()  # leave these out (the cross-camera search)
    seen_after: datetime | None = None  # inclusive; entries without seen_at are left out by either bound
    seen_before: datetime | None = None  # inclusive
    person_id: str | None = None  # listings only
    exclude_ids: frozenset[int] = frozenset()  # e.g. the stored entry a query starts from

    @property
    def is_empty(self) -> bool:
        return self == NO_FILTER

    @property
    def only_excludes_ids(self) -> bool:
        """Whether the filter leaves out some ids and nothing else (or nothing at all)."""
        return replace(self, exclude_ids=frozenset()).is_empty

    def admits(self, entry: Entry) -> bool:
        """The reference semantics, for backends and tests that check one entry at a time."""
        if entry.entry_id in self.exclude_ids:
            return False
        if self.cameras is not None and entry.camera not in self.cameras:
            return False
        if entry.camera is not None and entry.camera in self.exclude_cameras:
            return False
        if self.person_id is not None and entry.person_id != self.person_id:
            return False
        if self.seen_after is not None or self.seen_before is not None:
            if entry.seen_at is None:
                return False
            if self.seen_after is not None and entry.seen_at < self.seen_after:
                return False
            if self.seen_before is not None and entry.seen_at > self.seen_before:
                return False
        return True


NO_FILTER = EntryFilter()


# Distances reach a radius from float32 searches and float64 products alike: an entry counts as reached within
# this much more than its radius, so rounding never hides an entry at the edge (more is harmless: the merge keeps
# the nearest).
RADIUS_SLACK = 1e-5


@dataclass(frozen=True)
class Neighbourhood:
    """An entry's kept nearest others (service/store/neighbourhoods.py): ids and code distances, nearest first,
    equal distances by id."""

    ids: tuple[int, ...]
    distances: tuple[float, ...]

    def radius(self, size: int) -> float:
        """How near a new entry must come to join: the farthest kept one's distance, or infinity while fewer than
        `size` are kept."""
        return self.distances[-1] if len(self.ids) >= size else math.inf

    def with_(self, joining: Iterable[tuple[int, float]], size: int) -> Neighbourhood:
        """This neighbourhood with `joining` (id, distance) pairs merged in, the nearest `size` kept; an entry kept
        already stays with its kept distance (the same distance, measured from the other end, can differ in its
        last bits)."""
        merged = dict(zip(self.ids, self.distances, strict=True))
        for entry_id, distance in joining:
            merged.setdefault(entry_id, distance)
        return nearest_kept(merged.items(), size)


def nearest_kept(pairs: Iterable[tuple[int, float]], size: int) -> Neighbourhood:
    """The `size` nearest of (id, distance) pairs, as a neighbourhood."""
    nearest = sorted(pairs, key=lambda pair: (pair[1], pair[0]))[:size]
    return Neighbourhood(tuple(i for i, _ in nearest), tuple(d for _, d in nearest))


@dataclass(frozen=True)
class EntryPage:
    total: int  # entries the filter admits, over all pages
    entries: list[Entry] = field(default_factory=list)


def utc(moment: datetime | None) -> datetime | None:
    """A timezone-aware moment in UTC; naive times are refused, since a camera's local time is ambiguous."""
    if moment is None:
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidEntry(f"{moment.isoformat()} has no UTC offset (write e.g. 2026-12-02T14:55:00Z)")
    return moment.astimezone(timezone.utc)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch: how backends store and compare seen_at."""
    return round(moment.timestamp() * 1_000_000)


def from_micros(micros: int | None) -> datetime | None:
    if micros is None:
        return None
    return datetime.fromtimestamp(micros / 1_000_000, tz=timezone.utc)


def check_code_space(*, recorded: str | None, model_id: str | None, where: str) -> None:
    """Codes of two models are not comparable: a gallery that recorded one model's id refuses any other."""
    if recorded is not None and recorded != model_id:
        raise GalleryError(
            f"{where} holds codes of model {recorded}, but this server's model is {model_id or 'unidentified'}: "
            "serve the model that made it, or re-embed its crops into a new gallery")


def check_label(value: str | None, what: str, *, optional: bool) -> None:
    if value is None:
        if not optional:
            raise InvalidEntry(f"{what} is missing")
        return
    if not value.strip() or len(value) > MAX_LABEL:
        raise InvalidEntry(f"{what} {value[:40]!r} must have 1-{MAX_LABEL} characters, not all blank")


class GalleryStore(ABC):
    """A durable, thread-safe gallery of identity codes.

    Contract (tests/service/store/test_conformance.py pins it for every backend): a write is all or nothing and
    is visible to every later call once it returns; unknown ids are reported, never raised past the route as
    500s; search is exact top-k by the distance between unit-length codes, best first, ties in entry-id order
    not guaranteed.
    """

    backend: str  # the factory's key (service/store/factory.py)

    def __init__(self, *, code_dim: int, clock: Callable[[], datetime] | None = None):
        """`clock`: the current UTC time, stamped on new entries as `enrolled_at` (tests pass a fake one)."""
        self.code_dim = code_dim
        self.clock = clock or (lambda: datetime.now(timezone.utc))

    # --- writes -------------------------------------------------------------------------------------------
    def add(self, entries: Sequence[NewEntry], codes: np.ndarray) -> list[Entry]:
        """Store every entry with its code, all in one transaction: afterwards all are visible or none."""
        codes = np.ascontiguousarray(codes, dtype=np.float32)
        if codes.shape != (len(entries), self.code_dim):
            raise InvalidEntry(f"{len(entries)} entries but codes of shape {codes.shape}; want (N, {self.code_dim})")
        if not np.isfinite(codes).all():
            raise InvalidEntry("codes must be finite")
        entries = [self._checked(entry) for entry in entries]
        if not entries:
            return []
        return self._insert(entries, codes, unit_length(codes))

    @staticmethod
    def _checked(entry: NewEntry) -> NewEntry:
        check_label(entry.person_id, "person_id", optional=False)
        check_label(entry.camera, "camera", optional=True)
        check_label(entry.track_id, "track_id", optional=True)
        return replace(entry, seen_at=utc(entry.seen_at), enrolled_at=utc(entry.enrolled_at))

    @abstractmethod
    def _insert(self, entries: list[NewEntry], codes: np.ndarray, unit_codes: np.ndarray) -> list[Entry]:
        """Store checked entries, their codes as given (the generator's condition) and unit-length copies (what
        `_nearest` ranks); ids are new, positive and below 2**53."""

    def relabel(self, entry_id: int, *, person_id: str) -> Entry:
        """Give one entry another person id; UnknownEntries when there is no such entry."""
        check_label(person_id, "person_id", optional=False)
        return self._relabel(entry_id, person_id)

    @abstractmethod
    def _relabel(self, entry_id: int, person_id: str) -> Entry: ...

    def merge(self, person_id: str, *, into: str) -> list[int]:
        """Move every entry of `person_id` to `into`, in one transaction; the ids moved ([] for an unknown one)."""
        check_label(into, "into", optional=False)
        if person_id == into:
            raise InvalidEntry(f"cannot merge person {person_id!r} into itself")
        return self._merge(person_id, into)

    @abstractmethod
    def _merge(self, person_id: str, into: str) -> list[int]: ...

    @abstractmethod
    def remove_entries(self, entry_ids: Sequence[int]) -> list[int]:
        """Remove the known ones of `entry_ids` (crops included) in one transaction; the ids removed."""

    @abstractmethod
    def remove_person(self, person_id: str) -> list[int]:
        """Remove every entry of a person; the ids removed ([] when the person is unknown)."""

    @abstractmethod
    def remove_enrolled_before(self, cutoff: datetime) -> list[int]:
        """Remove every entry enrolled before `cutoff` (retention); the ids removed."""

    # --- reads --------------------------------------------------------------------------------------------
    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """(entries, distinct persons)."""

    @abstractmethod
    def get(self, entry_ids: Sequence[int]) -> list[Entry]:
        """The known entries among `entry_ids`, in the order asked."""

    @abstractmethod
    def codes(self, entry_ids: Sequence[int]) -> np.ndarray:
        """(N, code_dim) stored codes, as enrolled, in the order asked; UnknownEntries if any id is unknown."""

    def known_unit_codes(self, entry_ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Unit-length codes (what the index searches) by id, leaving out entries removed since the caller found
        them (another request or replica may delete them in between)."""
        try:
            return dict(zip(entry_ids, unit_length(self.codes(entry_ids)), strict=True)) if entry_ids else {}
        except UnknownEntries as gone:
            removed = set(gone.ids)
            return self.known_unit_codes([i for i in entry_ids if i not in removed])

    @contextmanager
    def reading_together(self) -> Iterator[None]:
        """Reads inside the block, on this thread, see at least what its first read saw, and no later read waits
        to see more: a remote engine waits for its clock once per block instead of once per read (Milvus: a Strong
        read waits about two time ticks). A store in this process reads its latest state anyway."""
        yield

    @abstractmethod
    def crop(self, entry_id: int) -> bytes | None:
        """The stored crop (WebP), or None for an unknown entry or one stored without its crop."""

    @abstractmethod
    def list_entries(self, entry_filter: EntryFilter = NO_FILTER, *, offset: int = 0, limit: int = 50
                     ) -> EntryPage:
        """Admitted entries in entry-id order, `limit` of them from `offset`, and how many are admitted."""

    def search(self, queries: np.ndarray, k: int, entry_filter: EntryFilter = NO_FILTER) -> list[list[Match]]:
        """For each of the (Q, code_dim) query codes, the k nearest admitted entries, best first (fewer only when
        fewer are admitted), with their distances between unit-length codes."""
        found = self._nearest(self._unit_queries(queries, k), k, entry_filter)
        return [[Match(entry, math.sqrt(max(squared, 0.0))) for entry, squared in row] for row in found]

    def nearest_ids(self, queries: np.ndarray, k: int, entry_filter: EntryFilter = NO_FILTER
                    ) -> list[list[tuple[int, float]]]:
        """`search` without the entries: per query, (entry id, distance) of the k nearest admitted entries, best
        first. For callers that need only a neighbourhood: re-ranking searches about a thousand neighbours per
        query, and reading their entries took a sixth of its time (docs/BENCHMARKS.md, "Re-ranking")."""
        found = self._nearest_ids(self._unit_queries(queries, k), k, entry_filter)
        return [[(entry_id, math.sqrt(max(squared, 0.0))) for entry_id, squared in row] for row in found]

    # --- kept neighbourhoods (service/store/neighbourhoods.py) ----------------------------------------------
    neighbourhood_size: int = 0  # nearest others each entry keeps, maintained on every write; 0: none kept

    def neighbourhoods(self, entry_ids: Sequence[int], size: int) -> dict[int, list[int]] | None:
        """Each known entry's `size` nearest other entries, as kept; None when the store keeps fewer than `size`
        (re-ranking then searches them)."""
        if not 0 < size <= self.neighbourhood_size:
            return None
        return {entry_id: list(hood.ids[:size]) for entry_id, hood in self._kept(entry_ids).items()}

    def _kept(self, entry_ids: Sequence[int]) -> dict[int, Neighbourhood]:
        """The kept neighbourhoods of the known ones of `entry_ids`."""
        raise NotImplementedError(f"the {self.backend} backend keeps no neighbourhoods")

    def _reached_by(self, unit_codes: np.ndarray, size: int, *, leaving: Sequence[int]) -> list[dict[int, float]]:
        """Per code, {entry id: distance} of every entry, other than `leaving`, whose kept neighbourhood the code
        enters (distance <= Neighbourhood.radius(size))."""
        raise NotImplementedError(f"the {self.backend} backend keeps no neighbourhoods")

    def _wider_than(self, distance: float) -> dict[int, float]:
        """{entry id: kept radius} of the entries whose radius is at least `distance` (a search-only backend's
        `_reached_by`: neighbourhoods.reached_by_search)."""
        raise NotImplementedError(f"the {self.backend} backend keeps no neighbourhoods")

    def _keep(self, lists: dict[int, Neighbourhood], *, size: int) -> None:
        """Store these neighbourhoods (replacing the entries' old ones), kept at `size`."""
        raise NotImplementedError(f"the {self.backend} backend keeps no neighbourhoods")

    def rebuild_neighbourhoods(self, size: int, progress: Callable[[int], None] = lambda done: None) -> None:
        """Search every entry's `size` nearest others anew and keep them from now on (0: keep none); `progress`
        gets the number of entries done at each step."""
        raise NotImplementedError(f"the {self.backend} backend keeps no neighbourhoods")

    def _unit_queries(self, queries: np.ndarray, k: int) -> np.ndarray:
        """The searches' shared checks: (Q, code_dim) float32 queries at unit length, and k at least 1."""
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        return unit_length(np.asarray(queries, dtype=np.float32).reshape(-1, self.code_dim))

    @abstractmethod
    def _nearest(self, unit_queries: np.ndarray, k: int, entry_filter: EntryFilter
                 ) -> list[list[tuple[Entry, float]]]:
        """Per query, up to k (entry, squared Euclidean distance between unit-length codes), nearest first."""

    def _nearest_ids(self, unit_queries: np.ndarray, k: int, entry_filter: EntryFilter
                     ) -> list[list[tuple[int, float]]]:
        """`_nearest` with entry ids for entries; a backend that finds ids before it reads entries overrides it."""
        return [[(entry.entry_id, squared) for entry, squared in row]
                for row in self._nearest(unit_queries, k, entry_filter)]

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the store runs on, for the start-up log and /health: never a credential."""

    @abstractmethod
    def close(self) -> None: ...
