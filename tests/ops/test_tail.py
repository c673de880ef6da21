"""`audit tail`: readable lines, filters, and --follow from the file and the Redis stream."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from monkeytown_deploy.audit import AuditLog
from monkeytown_deploy.cli import main

ROOT = Path(__file__).parents[2]
TRIGGER = "trigger-" + "c" * 32


class Tail:
    """`monkeytown-deploy audit tail` running as its own process, read line by line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from monkeytown_deploy.cli import main; main()", *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.buffer = b""

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds until a printed line contains *text*; fails after *timeout*."""
        assert self.process.stdout is not None
        start = time.monotonic()
        fd = self.process.stdout.fileno()
        while text.encode() not in self.buffer:
            left = timeout - (time.monotonic() - start)
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                pytest.fail(f"tail printed no {text!r} within {timeout} s: {self.buffer!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"tail exited: {self.process.stderr.read()!r}")  # type: ignore[union-attr]
            self.buffer += chunk
        return time.monotonic() - start

    def stop(self) -> None:
        self.process.terminate()
        self.process.communicate(timeout=10)


@pytest.fixture
def tails() -> Iterator[list[Tail]]:
    started: list[Tail] = []
    yield started
    for tail in started:
        tail.stop()


def test_follow_file_prints_a_new_event_within_a_second(
    audit_path: Path, tails: list[Tail]
) -> None:
    """An event appended to the file appears in `audit tail --follow` in under 1 s."""
    log = AuditLog(audit_path, actor="worker@test").bind(trigger_id=TRIGGER)
    log.record("job.started", environment="staging")
    tail = Tail("audit", "tail", "--follow", "--file", str(audit_path))
    tails.append(tail)
    tail.wait_for("job.started", timeout=20)  # the process is up and following

    log.record("rollout.ready", environment="staging", deployment="monkeytown-web")
    assert tail.wait_for("rollout.ready", timeout=1.0) < 1.0
    assert b"deployment=monkeytown-web" in tail.buffer


def test_follow_stream_prints_a_new_event_within_a_second(
    audit_path: Path, redis_url: str, redis_client: redis.Redis, tails: list[Tail]
) -> None:
    """An event mirrored to the Redis stream appears in `tail --follow --redis-url` in < 1 s."""
    log = AuditLog(audit_path, actor="worker@other-host", stream=redis_client)
    log.record("job.started", environment="production", trigger_id=TRIGGER)
    tail = Tail("audit", "tail", "--follow", "--json", "--redis-url", redis_url)
    tails.append(tail)
    tail.wait_for("job.started", timeout=20)

    log.record("canary.step", environment="production", canary_weight=25)
    assert tail.wait_for('"canary.step"', timeout=1.0) < 1.0


def test_follow_survives_rotation(audit_path: Path, tails: list[Tail]) -> None:
    """After `audit rotate`, a follower reads the new file from its first record."""
    log = AuditLog(audit_path, actor="worker@test")
    log.record("job.started")
    tail = Tail("audit", "tail", "-f", "--file", str(audit_path))
    tails.append(tail)
    tail.wait_for("job.started", timeout=20)

    CliRunner().invoke(main, ["audit", "rotate", str(audit_path)])
    log.record("job.succeeded", outcome="succeeded")
    tail.wait_for("audit.rotated", timeout=3)
    tail.wait_for("job.succeeded", timeout=3)


def test_tail_filters_by_trigger_environment_and_time(audit_path: Path) -> None:
    """--trigger, --env and --since keep only the matching records; --json prints them whole."""
    log = AuditLog(audit_path, actor="watcher@test")
    log.record("trigger.accepted", trigger_id=TRIGGER, environment="production")
    log.record("trigger.rejected", trigger_id="trigger-" + "d" * 32, environment="production")
    log.record("stage.started", trigger_id=TRIGGER, environment="development")
    runner = CliRunner()

    def events(*options: str) -> list[str]:
        result = runner.invoke(main, ["audit", "tail", "--json", "--file", str(audit_path),
                                      *options])  # fmt: skip
        assert result.exit_code == 0, result.output
        return [json.loads(line)["event"] for line in result.output.splitlines()]

    assert events("--trigger", TRIGGER[:14]) == ["trigger.accepted", "stage.started"]
    assert events("--env", "production") == ["trigger.accepted", "trigger.rejected"]
    assert events("--since", "1h") == ["trigger.accepted", "trigger.rejected", "stage.started"]
    assert events("--since", "2999-01-01T00:00:00Z") == []
    assert events("-n", "1") == ["stage.started"]


def test_readable_lines_are_plain_when_piped(audit_path: Path) -> None:
    """Without a terminal the readable form carries no colour codes, one line per event."""
    AuditLog(audit_path, actor="user:ops").record(
        "operator.rollback", environment="production", outcome="requested", to_revision=3
    )
    result = CliRunner().invoke(main, ["audit", "tail", "--file", str(audit_path)])
    [line] = result.output.splitlines()
    assert "\x1b[" not in line
    assert "operator.rollback" in line and "production requested" in line
    assert "actor=user:ops" in line and "to_revision=3" in line
