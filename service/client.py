"""A typed Python client of the HTTP API, so scripts call methods and get dataclasses instead of building multipart
requests and reading JSON by hand.

    from genreid.service.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as genreid:
        genreid.enrol([Path("a.jpg"), Path("b.jpg")], person_ids=["0002", "0002"], cameras=["1", "3"])
        best = genreid.query(Path("q.jpg"), k=5, include_noise=False).matches[0]

One client holds one keep-alive connection pool: reuse it rather than making one per call. Every failure (an error
answer or no answer at all) raises GenreidError.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeAlias
from urllib.parse import quote

import httpx
import numpy as np

from genreid.service.observability import REQUEST_ID_HEADER

API_KEY_HEADER = "X-API-Key"

Crop: TypeAlias = Path | bytes | BinaryIO
"""An image the server decodes (any format PIL reads): a file path, its bytes, or a binary file open for reading."""


class GenreidError(Exception):
    """A request that failed: `status` is the HTTP status (None when no answer came back), `message` the server's
    own sentence (its JSON `detail`), `request_id` the id its log lines carry for this request."""

    def __init__(self, status: int | None, message: str, request_id: str | None = None):
        self.status = status
        self.message = message
        self.request_id = request_id
        where = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{status if status is not None else 'no answer'}: {message}{where}")


@dataclass(frozen=True)
class Entry:
    """One gallery entry: a stored identity code and what is known about its crop."""

    entry_id: int
    person_id: str
    camera: str | None
    seen_at: datetime | None
    track_id: str | None
    has_crop: bool
    enrolled_at: datetime | None


@dataclass(frozen=True)
class Match:
    """A gallery entry in a ranked answer. `distance` is the code distance (0 to 2); `within_match_threshold` says
    whether that distance is under the model's match threshold (None without one), whatever orders the answer;
    `same_person` is its deprecated name; `rerank_distance` orders a re-ranked answer."""

    entry_id: int
    person_id: str
    camera: str | None
    seen_at: datetime | None
    track_id: str | None
    has_crop: bool
    distance: float
    within_match_threshold: bool | None
    same_person: bool | None  # deprecated: within_match_threshold
    rerank_distance: float | None


@dataclass(frozen=True, eq=False)  # eq=False: == on numpy fields is elementwise, not a truth value
class QueryResult:
    """The matches of one query (best first, by `ranked_by`: "distance", or "rerank_distance" when re-ranked), the
    query's identity code and, for a crop asked with include_noise, its generator noise, a (3, H, W) float32 array."""

    matches: tuple[Match, ...]
    ranked_by: Literal["distance", "rerank_distance"]
    identity: np.ndarray
    noise: np.ndarray | None


@dataclass(frozen=True)
class EntryPage:
    """One page of a listing; `total` counts the entries the filter admits over all pages."""

    total: int
    offset: int
    limit: int
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class GalleryCounts:
    entries: int
    persons: int


class Client:
    """The genreid service at `url`; `api_key` is sent as X-API-Key on every request."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        headers = {} if api_key is None else {API_KEY_HEADER: api_key}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------ gallery

    def health(self) -> dict[str, Any]:
        """What the server runs (models, providers, gallery backend, index size, ...): a dict, since its fields
        describe the deployment rather than any one request."""
        return self._call("GET", "/health").json()

    def counts(self) -> GalleryCounts:
        body = self._call("GET", "/gallery").json()
        return GalleryCounts(entries=body["entries"], persons=body["persons"])

    def enrol(self, crops: Sequence[Crop], *, person_ids: Sequence[str], cameras: Sequence[str | None] | None = None,
              seen_at: Sequence[datetime | None] | None = None, track_ids: Sequence[str | None] | None = None
              ) -> list[Entry]:
        """Store each crop under the person id at the same position (and, optionally, its camera, when it was seen
        and its tracker id, None for unknown); the server checks every crop before it stores any."""
        data: dict[str, list[str]] = {"person_id": list(person_ids)}
        for name, values in (("camera", cameras), ("seen_at", seen_at), ("track_id", track_ids)):
            if values is not None:
                data[name] = ["" if v is None else v.isoformat() if isinstance(v, datetime) else v for v in values]
        files = [("files", _upload(crop)) for crop in crops]
        body = self._call("POST", "/gallery", files=files, data=data).json()
        return [_entry(e) for e in body["entries"]]

    def entries(self, *, person_id: str | None = None, cameras: Sequence[str] | None = None,
                exclude_cameras: Sequence[str] | None = None, seen_after: datetime | None = None,
                seen_before: datetime | None = None, offset: int = 0, limit: int = 100) -> EntryPage:
        """A page of entries in entry-id order, filtered like a query (plus by person id)."""
        params = {"offset": offset, "limit": limit, **_filters(cameras, exclude_cameras, seen_after, seen_before)}
        if person_id is not None:
            params["person_id"] = person_id
        body = self._call("GET", "/gallery/entries", params=params).json()
        return EntryPage(total=body["total"], offset=body["offset"], limit=body["limit"],
                         entries=tuple(_entry(e) for e in body["entries"]))

    def entry(self, entry_id: int) -> Entry:
        return _entry(self._call("GET", f"/gallery/entries/{entry_id}").json())

    def entry_crop(self, entry_id: int) -> bytes:
        """The entry's stored crop (WebP); 404 when the server keeps codes only."""
        return self._call("GET", f"/gallery/entries/{entry_id}/crop").content

    def relabel(self, entry_id: int, *, person_id: str) -> Entry:
        """Give one entry another person id (fix a label)."""
        return _entry(self._call("PATCH", f"/gallery/entries/{entry_id}", json={"person_id": person_id}).json())

    def merge(self, person_id: str, *, into: str) -> list[int]:
        """Move every entry of `person_id` to the person `into`; returns the ids of the entries moved."""
        body = self._call("POST", f"/gallery/persons/{_segment(person_id)}/merge", json={"into": into}).json()
        return body["entry_ids"]

    def delete_entry(self, entry_id: int) -> list[int]:
        """Remove one entry (and its crop); returns the removed ids."""
        return self._call("DELETE", f"/gallery/entries/{entry_id}").json()["entry_ids"]

    def delete_person(self, person_id: str) -> list[int]:
        """Remove every entry of a person; returns the removed ids."""
        return self._call("DELETE", f"/gallery/persons/{_segment(person_id)}").json()["entry_ids"]

    # ------------------------------------------------------------ search

    def query(self, crop: Crop, *, k: int = 10, rerank: bool | None = None, include_noise: bool = False,
              cameras: Sequence[str] | None = None, exclude_cameras: Sequence[str] | None = None,
              seen_after: datetime | None = None, seen_before: datetime | None = None) -> QueryResult:
        """Rank the gallery for a crop, best first. `rerank` None leaves it to the server's default;
        `exclude_cameras` makes a cross-camera search. The noise array (12 KiB of base64 at 128x64) is off unless
        asked for."""
        params = {"k": k, "include_noise": include_noise,
                  **_rerank(rerank), **_filters(cameras, exclude_cameras, seen_after, seen_before)}
        return _result(self._call("POST", "/query", params=params, files={"file": _upload(crop)}).json())

    def query_entry(self, entry_id: int, *, k: int = 10, rerank: bool | None = None,
                    cameras: Sequence[str] | None = None, exclude_cameras: Sequence[str] | None = None,
                    seen_after: datetime | None = None, seen_before: datetime | None = None) -> QueryResult:
        """Rank the gallery for a stored entry's code (the entry itself left out): no upload, and no noise."""
        params = {"k": k, **_rerank(rerank), **_filters(cameras, exclude_cameras, seen_after, seen_before)}
        return _result(self._call("POST", "/query", params=params, data={"entry_id": str(entry_id)}).json())

    def query_batch(self, crops: Sequence[Crop], *, k: int = 10, rerank: bool | None = None,
                    cameras: Sequence[str] | None = None, exclude_cameras: Sequence[str] | None = None,
                    seen_after: datetime | None = None, seen_before: datetime | None = None) -> list[QueryResult]:
        """Rank the gallery for many crops in one request (one batched inversion): one result per crop, in order."""
        params = {"k": k, **_rerank(rerank), **_filters(cameras, exclude_cameras, seen_after, seen_before)}
        files = [("files", _upload(crop)) for crop in crops]
        body = self._call("POST", "/query/batch", params=params, files=files).json()
        return [_result(r) for r in body["results"]]

    def transfer(self, *, identity: Crop | int, pose: Crop, scale: int | None = None) -> bytes:
        """A PNG of the person in `identity` (a crop, or an int: a gallery entry's stored code) in the pose,
        background and light of `pose`; `scale` upscales it for viewing."""
        files = {"pose": _upload(pose)}
        data: dict[str, str] = {}
        if isinstance(identity, int):
            data["identity_entry_id"] = str(identity)
        else:
            files["identity"] = _upload(identity)
        params = {} if scale is None else {"scale": scale}
        return self._call("POST", "/transfer", params=params, files=files, data=data).content

    # ------------------------------------------------------------ plumbing

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a transport failure or a non-2xx answer becomes GenreidError."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise GenreidError(None, f"no answer from {self.url} ({method} {path}): {type(err).__name__}: {err}"
                               ) from err
        if not response.is_success:
            raise GenreidError(response.status_code, _message(response), response.headers.get(REQUEST_ID_HEADER))
        return response


def _message(response: httpx.Response) -> str:
    """The server's sentence: its JSON `detail`, else the body as text (a proxy's error page), else the reason."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if detail is not None:
        return detail if isinstance(detail, str) else str(detail)
    return response.text.strip()[:500] or response.reason_phrase


def _upload(crop: Crop) -> tuple[str, bytes | BinaryIO]:
    """A multipart file: (file name, content); the server reads the image whatever its name says."""
    if isinstance(crop, Path):
        return crop.name, crop.read_bytes()
    if isinstance(crop, (bytes, bytearray, memoryview)):
        return "crop", bytes(crop)
    if hasattr(crop, "read"):
        name = getattr(crop, "name", None)
        return (Path(name).name if isinstance(name, str) else "crop"), crop
    raise TypeError(f"a crop is a pathlib.Path, bytes or a binary file object, not {type(crop).__name__}")


def _segment(person_id: str) -> str:
    """A person id as one path segment: "/" percent-encoded (the server reads it back), and dots too, so an id
    such as ".." is not collapsed away as a relative path."""
    return quote(person_id, safe="").replace(".", "%2E")


def _filters(cameras: Sequence[str] | None, exclude_cameras: Sequence[str] | None, seen_after: datetime | None,
             seen_before: datetime | None) -> dict[str, Any]:
    """The entry filter's query parameters, only those given (the server's default is "no filter")."""
    params: dict[str, Any] = {}
    if cameras is not None:
        params["camera"] = list(cameras)
    if exclude_cameras is not None:
        params["exclude_camera"] = list(exclude_cameras)
    if seen_after is not None:
        params["seen_after"] = seen_after.isoformat()
    if seen_before is not None:
        params["seen_before"] = seen_before.isoformat()
    return params


def _rerank(rerank: bool | None) -> dict[str, bool]:
    return {} if rerank is None else {"rerank": rerank}


def _moment(value: str | None) -> datetime | None:
    # The server writes UTC as "Z", which datetime.fromisoformat reads only from Python 3.11 on.
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _entry(body: dict[str, Any]) -> Entry:
    return Entry(entry_id=body["entry_id"], person_id=body["person_id"], camera=body["camera"],
                 seen_at=_moment(body["seen_at"]), track_id=body["track_id"], has_crop=body["has_crop"],
                 enrolled_at=_moment(body["enrolled_at"]))


def _match(body: dict[str, Any]) -> Match:
    return Match(entry_id=body["entry_id"], person_id=body["person_id"], camera=body["camera"],
                 seen_at=_moment(body["seen_at"]), track_id=body["track_id"], has_crop=body["has_crop"],
                 distance=body["distance"], within_match_threshold=body["within_match_threshold"],
                 same_person=body["same_person"], rerank_distance=body["rerank_distance"])


def _result(body: dict[str, Any]) -> QueryResult:
    noise = body.get("noise")
    array = None if noise is None else (
        np.frombuffer(base64.b64decode(noise["data"]), "<f4").reshape(noise["shape"]))
    return QueryResult(matches=tuple(_match(m) for m in body["matches"]), ranked_by=body["ranked_by"],
                       identity=np.asarray(body["identity"], np.float32), noise=array)
