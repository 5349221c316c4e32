"""One Settings object: GENREID_* variables, overridden by `genreid serve` flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from genreid.service.server import build_parser
from genreid.service.settings import Settings, default_models


def from_flags(*argv: str) -> Settings:
    return Settings(**vars(build_parser().parse_args(list(argv))))


def test_defaults(monkeypatch: pytest.MonkeyPatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(f"GENREID_{name.upper()}", raising=False)
    settings = from_flags()
    assert settings.models == default_models() and settings.data == Path("genreid-data")
    assert settings.device == "auto" and settings.api_key is None and settings.port == 8000


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GENREID_MAX_FILES", "7")
    monkeypatch.setenv("GENREID_DEVICE", "cpu")
    monkeypatch.setenv("GENREID_API_KEY", "env-key")
    monkeypatch.setenv("GENREID_LOG_LEVEL", "DEBUG")
    settings = from_flags("--max-files", "9", "--data", "/srv/gallery", "--max-upload-bytes", "1000")
    assert settings.max_files == 9 and settings.max_upload_bytes == 1000
    assert settings.data == Path("/srv/gallery")
    assert settings.device == "cpu" and settings.log_level == "debug"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "env-key"
    assert "env-key" not in repr(settings)


def test_an_empty_key_means_no_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GENREID_API_KEY", "")
    assert from_flags().api_key is None


@pytest.mark.parametrize("argv", [["--max-upload-bytes", "0"], ["--port", "http"], ["--threads", "-1"]])
def test_invalid_values_are_refused(argv: list[str]):
    with pytest.raises(ValidationError):
        from_flags(*argv)


@pytest.mark.parametrize("argv", [["--device", "tpu"], ["--log-level", "loud"]])
def test_a_value_outside_a_settings_choices_is_refused_by_the_parser(argv: list[str], capsys):
    """Settings of a few values are flags with choices: argparse refuses the rest, naming them (exit 2)."""
    with pytest.raises(SystemExit) as refused:
        from_flags(*argv)
    assert refused.value.code == 2 and "invalid choice" in capsys.readouterr().err
