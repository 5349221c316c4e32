"""What only the Milvus backend has: its index specification and a location that never shows credentials."""

from __future__ import annotations

import pytest

pytest.importorskip("pymilvus", reason="needs the milvus extra (pip install -e '.[milvus]')")

from service.store import GalleryError  # noqa: E402
from service.store.milvus import IndexSpec, MilvusStore, literal  # noqa: E402


def test_index_spec_splits_build_and_search_parameters():
    spec = IndexSpec.parse("hnsw:M=16, efConstruction=200,ef=64")
    assert (spec.kind, spec.build, spec.search) == ("HNSW", {"M": 16, "efConstruction": 200}, {"ef": 64})
    assert IndexSpec.parse("FLAT") == IndexSpec()
    for bad in ("DISKANN", "HNSW:M=many", "IVF_FLAT:nlist"):
        with pytest.raises(ValueError):
            IndexSpec.parse(bad)


def test_literals_escape_what_would_end_or_bend_them():
    assert literal('a"b\\c\nd\te') == '"a\\"b\\\\c\\nd\\te"'


def test_the_location_shown_never_carries_credentials():
    with pytest.raises(GalleryError) as refused:
        MilvusStore("http://admin:s3cret@127.0.0.1:9", collection="g", code_dim=4, model_id=None, timeout=2)
    assert "s3cret" not in str(refused.value) and "admin" not in str(refused.value)
    assert "http://127.0.0.1:9 collection g" in str(refused.value)


def test_a_milvus_lite_file_in_a_new_directory_is_created(tmp_path):
    store = MilvusStore(str(tmp_path / "new" / "dirs" / "g.db"), collection="g", code_dim=4, model_id=None)
    try:
        assert store.counts() == (0, 0)
    finally:
        store.close()
