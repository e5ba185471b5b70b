"""Settings: read and checked once at start; a bad one stops the app with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from classifier.assets import ROOT
from service.settings import Settings, markdown_table, variables


def run_app(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "app.py", *args],
        cwd=ROOT,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("MAX_BATCH", "two", "a whole number from 1 to 64"),
        ("PORT", "70000", "a whole number from 1 to 65535"),
        ("ADMISSION_TIMEOUT", "-1", "a number above 0"),
        ("ORT_MEMORY_ARENA", "maybe", "1 or 0 (or true/false, yes/no, on/off)"),
    ],
)
def test_a_bad_setting_stops_the_app_with_one_line_and_exit_2(
    variable: str, value: str, allowed: str
) -> None:
    result = run_app(**{variable: value})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {variable}={value!r} is not allowed: {allowed}."]


def test_help_lists_every_setting_with_its_default_and_meaning() -> None:
    result = run_app("--help")
    assert result.returncode == 0
    for name, default, meaning in variables():
        assert f"  {name} (default {default})\n" in result.stdout
        assert " ".join(meaning.split()[:4]) in " ".join(result.stdout.split())
    assert len(variables()) == len(Settings.model_fields)


def test_the_readme_table_is_the_settings_table() -> None:
    """Regenerate it with ``python -m service.settings``."""
    assert markdown_table() in (ROOT / "README.md").read_text()


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH", "4")
    monkeypatch.setenv("ORT_ALLOW_SPINNING", "1")
    monkeypatch.setenv("DECODE_SLOTS", "")  # empty: the default
    settings = Settings()
    assert (settings.max_batch, settings.ort_allow_spinning, settings.decode_slots) == (4, True, 0)
