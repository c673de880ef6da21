"""Fixtures for the operator tests: audit logs with known content, a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from monkeytown_deploy.audit import AuditLog


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "audit.jsonl"


@pytest.fixture
def written_log(audit_path: Path) -> Path:
    """A log of ten records written through the real writer."""
    log = AuditLog(audit_path, actor="worker@test").bind(trigger_id="trigger-" + "a" * 32)
    for step in range(10):
        log.record("canary.step", environment="production", canary_weight=step * 10)
    return audit_path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
