"""`open_gallery(settings, ...)`: the one place that turns settings into a store, keyed by backend, the way
fast-reid builds a meta-architecture from its config; routes and tools never name a backend."""

from __future__ import annotations

from collections.abc import Callable

from genreid.service.settings import Settings
from genreid.service.store.base import GalleryError, GalleryStore

# backend name -> opener(settings, code_dim, model_id, neighbourhood_size)
Opener = Callable[[Settings, int, "str | None", int], GalleryStore]


def _embedded(settings: Settings, code_dim: int, model_id: str | None, neighbourhood_size: int) -> GalleryStore:
    from genreid.service.store.embedded import EmbeddedStore
    from genreid.service.store.faiss_index import gpu_search_copy

    return EmbeddedStore(settings.data, code_dim=code_dim, model_id=model_id,
                         search_copy=gpu_search_copy(settings.device), search_threads=settings.search_threads,
                         power_safe=settings.power_safe, neighbourhood_size=neighbourhood_size)


def _milvus(settings: Settings, code_dim: int, model_id: str | None, neighbourhood_size: int) -> GalleryStore:
    try:
        from genreid.service.store.milvus import IndexSpec, MilvusStore
    except ImportError as err:
        raise GalleryError(f"--gallery-uri needs the milvus extra (pip install -e '.[milvus]'): {err}") from None
    assert settings.gallery_uri is not None
    token = None if settings.gallery_token is None else settings.gallery_token.get_secret_value()
    try:
        index = IndexSpec.parse(settings.gallery_index)
    except ValueError as err:
        raise GalleryError(str(err)) from None
    return MilvusStore(settings.gallery_uri, collection=settings.gallery_collection, code_dim=code_dim,
                       model_id=model_id, token=token, index=index, neighbourhood_size=neighbourhood_size)


BACKENDS: dict[str, Opener] = {"embedded": _embedded, "milvus": _milvus}


def backend_name(settings: Settings) -> str:
    """A gallery URI names a Milvus gallery; without one the gallery is embedded under --data."""
    return "embedded" if settings.gallery_uri is None else "milvus"


def open_gallery(settings: Settings, *, code_dim: int, model_id: str | None, neighbourhood_size: int
                 ) -> GalleryStore:
    """The store the settings name, opened for a model with `code_dim`-d codes and the code space `model_id`
    (GalleryError when it holds another model's codes or cannot be opened); a new gallery keeps each entry's
    `neighbourhood_size` nearest others (genreid.service.core.reranking.neighbours_kept)."""
    return BACKENDS[backend_name(settings)](settings, code_dim, model_id, neighbourhood_size)
