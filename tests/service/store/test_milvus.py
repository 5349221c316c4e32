"""What only the Milvus backend has: its index specification, a location that never shows credentials, and a
connection that an idle spell does not break."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pymilvus", reason="needs the milvus extra (pip install -e '.[milvus]')")

from genreid.service.store import GalleryError  # noqa: E402
from genreid.service.store.milvus import IndexSpec, MilvusStore, literal  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


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


IDLE_CLIENT = """
import sys, time
import numpy as np
from genreid.service.store import NewEntry
from genreid.service.store.milvus import MilvusStore
store = MilvusStore(sys.argv[1], collection="idle", code_dim=4, model_id=None)
[entry] = store.add([NewEntry(person_id="p")], np.ones((1, 4), np.float32))
time.sleep(40)  # three of pymilvus's 10 s keepalive periods, and then some
[[hit]] = store.search(np.ones((1, 4), np.float32), k=1)
assert hit.entry.entry_id == entry.entry_id
store.close()
"""


def test_an_idle_connection_to_a_milvus_lite_server_is_not_sent_away(start_milvus_server):
    """pymilvus's default keepalive pinged idle channels until milvus-lite's gRPC server answered GOAWAY
    "too_many_pings" (about 30 s idle); a call or a store opening in that moment failed. gRPC logs the GOAWAY only
    at info verbosity, set before it starts: hence a process of its own."""
    engine = start_milvus_server()
    done = subprocess.run([sys.executable, "-c", IDLE_CLIENT, engine.uri], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "GRPC_VERBOSITY": "info"}, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "too_many_pings" not in done.stderr
