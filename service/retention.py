"""Retention: entries (and their crops) enrolled more than N days ago are deleted, by the server every hour
(`retention_days`) or on demand (`genreid gallery prune --older-than-days N`), and each deletion is audited.

Time comes from the store's clock (`GalleryStore.clock`) and the wait between runs from `sleep`, so tests move a
fake clock instead of waiting days.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from functools import partial

from starlette.concurrency import run_in_threadpool

from genreid.service.audit import AuditLog, AuditRecord
from genreid.service.core.model_json import ModelMetadata
from genreid.service.core.reranking import neighbours_kept
from genreid.service.settings import Settings
from genreid.service.store import GalleryError, GalleryStore, open_gallery

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0


def prune(store: GalleryStore, audit: AuditLog, *, older_than_days: int, actor: str) -> list[int]:
    """Remove every entry enrolled more than `older_than_days` before the store's now; the ids removed."""
    cutoff = store.clock() - timedelta(days=older_than_days)
    removed = store.remove_enrolled_before(cutoff)
    if removed:
        audit.record(AuditRecord(actor=actor, action="retention", route=None, entry_ids=removed,
                                 detail={"enrolled_before": cutoff.isoformat()}))
    return removed


async def prune_periodically(prune_once: Callable[[], list[int]], *, every_s: float,
                             sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Prune now, then every `every_s`; a store that is unavailable for one run is tried again at the next."""
    while True:
        try:
            removed = await run_in_threadpool(prune_once)
        except GalleryError as err:
            log.warning("retention: %s; next try in %.0f s", err, every_s)
        else:
            if removed:
                log.info("retention removed %d entries", len(removed))
        await sleep(every_s)


@asynccontextmanager
async def retention(store: GalleryStore, audit: AuditLog, *, days: int | None, every_s: float = PRUNE_EVERY_S
                    ) -> AsyncIterator[None]:
    """The server's pruning task for the lifespan's duration (nothing without `days`); stopped before the store
    closes."""
    if days is None:
        yield
        return
    once = partial(prune, store, audit, older_than_days=days, actor="retention")
    task = asyncio.create_task(prune_periodically(once, every_s=every_s))
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def prune_gallery(gallery: Settings, *, older_than_days: int) -> list[int]:
    """`genreid gallery prune`: the gallery the settings name, opened for its model's code space (an embedded
    one only while no server holds it), audited as `cli:<user>`."""
    metadata = ModelMetadata.load(gallery.models)
    audit = AuditLog(gallery.audit_path, power_safe=gallery.power_safe)
    try:
        store = open_gallery(gallery, code_dim=metadata.code_dim, model_id=metadata.model_id,
                             neighbourhood_size=neighbours_kept(metadata))
        try:
            return prune(store, audit, older_than_days=older_than_days, actor=f"cli:{getpass.getuser()}")
        finally:
            store.close()
    finally:
        audit.close()
