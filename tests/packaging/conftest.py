"""Fixtures for the packaging tests: a clean configuration environment and the repo's files."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "monkeytown"
VENV_BIN = Path(sys.executable).parent

WriteConfig = Callable[[str], Path]


@pytest.fixture(autouse=True)
def clean_config_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's own MONKEYTOWN_DEPLOY_* variables and state out of every test."""
    for name in list(os.environ):
        if name.startswith("MONKEYTOWN_DEPLOY_") or name == "STATE_DIRECTORY":
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """A function writing TOML text to config.toml and returning its path."""

    def write(text: str) -> Path:
        path = tmp_path / "config.toml"
        path.write_text(text)
        return path

    return write
