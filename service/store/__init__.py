"""The gallery store: one contract (base.py), its backends, and the factory that picks one from the settings."""

from genreid.service.store.base import (
    Entry,
    EntryFilter,
    EntryPage,
    GalleryError,
    GalleryStore,
    InvalidEntry,
    Match,
    NewEntry,
    StorageFull,
    StoreUnavailable,
    UnknownEntries,
)
from genreid.service.store.factory import open_gallery

__all__ = ["Entry", "EntryFilter", "EntryPage", "GalleryError", "GalleryStore", "InvalidEntry", "Match", "NewEntry",
           "StorageFull", "StoreUnavailable", "UnknownEntries", "open_gallery"]
