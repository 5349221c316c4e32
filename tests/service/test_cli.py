"""The `genreid` command as a new user meets it: what --help says, --version, switches for on/off settings, and
the start-up line of `genreid serve` (its URL, no import noise)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path


def genreid(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "genreid.service.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_says_what_genreid_and_each_command_do() -> None:
    result = genreid("--help")
    assert result.returncode == 0
    assert "Person re-identification" in result.stdout
    for command in ("serve", "evaluate", "gallery", "train", "export", "card", "join-inv-ids"):
        assert f"    {command}" in result.stdout, command
    assert "run the retrieval service" in result.stdout and "train extra" in result.stdout


def test_version_answers() -> None:
    result = genreid("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"genreid {version('genreid')}"


def test_serve_help_shows_real_defaults_switches_and_choices() -> None:
    result = genreid("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "PydanticUndefined" not in text
    assert "[--rerank | --no-rerank]" in text and "[--store-crops | --no-store-crops]" in text
    assert "--device {auto,cpu,cuda}" in text and "--log-format {text,json}" in text
    assert "default off" in text and "default on" in text  # power_safe, rerank


def test_serve_prints_its_url_and_no_import_noise(start_genreid, reranking_models: Path) -> None:
    server = start_genreid("--models", str(reranking_models), "--no-rerank", env={"GENREID_LOG_LEVEL": "info"})
    assert server.client.get("/health").json()["rerank"]["default"] is False  # the switch turned it off
    log = server.log.read_text()
    assert f"serving on http://127.0.0.1:{server.port}/" in log
    assert "faiss.loader" not in log and "Could not load library" not in log


def test_a_switch_takes_no_value() -> None:
    result = genreid("serve", "--store-crops", "false", "--port", "1")
    assert result.returncode == 2 and "unrecognized arguments: false" in result.stderr
