"""All ONNX Runtime sessions of a process share one intra-op pool (genreid.service.encoders.open_session)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import build_models

SCRIPT = """
import sys
import numpy as np
from genreid.service.encoders import Encoders

first = Encoders(sys.argv[1], device="cpu", threads=1)
second = Encoders(sys.argv[1], device="cpu", threads=2)
images = np.random.default_rng(0).random((3, 3, *first.resolution), dtype=np.float32)
assert np.array_equal(first.identity(images), second.identity(images))
assert first.noise(images).shape == images.shape
print("ok")
"""


def test_sessions_share_one_pool_sized_by_the_first_user(tmp_path: Path) -> None:
    models = build_models(tmp_path / "models")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(models)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    # The second size cannot be applied (ONNX Runtime allows one pool per process): said, not silently dropped.
    assert "already has threads=1; threads=2 is ignored" in done.stderr
