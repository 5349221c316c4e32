"""The service stays torch-free, and training commands refuse bad data in one line (the shipped model on real data:
test_shipped_card.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_service_never_imports_torch():
    code = (
        "import sys\n"
        "import genreid.service.app, genreid.service.cli, genreid.service.server, genreid.service.gallery_tools\n"
        "import genreid.service.core.evaluation, genreid.service.core.market\n"
        "from genreid.service.settings import Settings\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_training_commands_fail_in_one_line_on_bad_data(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "genreid.service.cli", "train", "--data", str(tmp_path), "--out", str(tmp_path / "run")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "bounding_box_train/" in result.stderr
