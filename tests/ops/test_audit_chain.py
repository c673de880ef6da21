"""The audit log's hash chain: what it catches, and that many writers keep it whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from monkeytown_deploy import audit
from monkeytown_deploy.audit import AuditLog, AuditWriteError
from monkeytown_deploy.cli import main
from monkeytown_deploy.config import Settings
from tests.ops.conftest import read_lines, records, write_lines


def test_untouched_log_is_intact(written_log: Path) -> None:
    """A log written only by the writer verifies, with every record counted."""
    report = audit.verify(written_log)
    assert report.intact
    assert (report.records, report.last_seq) == (10, 10)


def test_edited_record_is_named(written_log: Path) -> None:
    """Changing a value inside one record breaks that record's own hash."""
    lines = read_lines(written_log)
    lines[4] = lines[4].replace('"canary_weight": 40', '"canary_weight": 4')
    write_lines(written_log, lines)
    broken = audit.verify(written_log).broken
    assert broken is not None
    assert (broken.kind, broken.line, broken.seq) == ("edited", 5, 5)


def test_edited_and_rehashed_record_breaks_the_next_link(written_log: Path) -> None:
    """An edit whose hash was recomputed is caught by the following record's prev."""
    lines = read_lines(written_log)
    record = json.loads(lines[4])
    record["outcome"] = "passed"
    record["hash"] = audit.record_hash(record)
    lines[4] = json.dumps(record) + "\n"
    write_lines(written_log, lines)
    broken = audit.verify(written_log).broken
    assert broken is not None
    assert (broken.kind, broken.line, broken.seq) == ("unlinked", 6, 6)


def test_deleted_record_is_named(written_log: Path) -> None:
    """Removing a line reports the missing sequence number and where it was."""
    lines = read_lines(written_log)
    del lines[4]
    write_lines(written_log, lines)
    broken = audit.verify(written_log).broken
    assert broken is not None
    assert (broken.kind, broken.line, broken.seq) == ("deleted", 5, 6)
    assert "seq 5 missing between line 4 and line 5" in broken.detail


def test_deleted_first_record_is_named(written_log: Path) -> None:
    """Removing the head of the log is not mistaken for a rotated file."""
    write_lines(written_log, read_lines(written_log)[1:])
    broken = audit.verify(written_log).broken
    assert broken is not None
    assert (broken.kind, broken.line) == ("deleted", 1)


def test_reordered_records_are_named(written_log: Path) -> None:
    """Swapping two lines reports a reorder, not a deletion."""
    lines = read_lines(written_log)
    lines[3], lines[4] = lines[4], lines[3]
    write_lines(written_log, lines)
    broken = audit.verify(written_log).broken
    assert broken is not None
    assert (broken.kind, broken.line, broken.seq) == ("reordered", 4, 5)
    assert "seq 4 was expected here but is at line 5" in broken.detail


def test_truncated_record_is_named(written_log: Path) -> None:
    """Cutting the file inside its last record reports a truncation after the last good seq."""
    data = written_log.read_bytes()
    written_log.write_bytes(data[: len(data) - 40])
    report = audit.verify(written_log)
    assert report.broken is not None
    assert (report.broken.kind, report.broken.line) == ("truncated", 10)
    assert report.last_seq == 9


def test_writer_refuses_to_extend_a_truncated_log(written_log: Path) -> None:
    """The writer will not chain onto a damaged tail: the action it announces must wait."""
    data = written_log.read_bytes()
    written_log.write_bytes(data[:-40])
    with pytest.raises(AuditWriteError, match="ends in an incomplete record"):
        AuditLog(written_log, actor="watcher@test").record("trigger.seen")


def test_rotation_continues_the_chain(written_log: Path) -> None:
    """A rotated-out file and its successor verify as one chain, and each alone."""
    archived = audit.rotate(written_log, actor="user:ops")
    AuditLog(written_log, actor="watcher@test").record("trigger.seen")
    reports = audit.verify_files([archived, written_log])
    assert [report.intact for report in reports] == [True, True]
    assert reports[-1].last_seq == 12
    assert audit.verify(written_log).intact
    assert [record["event"] for record in records(written_log)] == [audit.ROTATED, "trigger.seen"]


def test_rotation_recovers_from_a_truncated_log(written_log: Path) -> None:
    """Rotating a damaged log names the damage and lets writing resume."""
    written_log.write_bytes(written_log.read_bytes()[:-40])
    audit.rotate(written_log, actor="user:ops")
    AuditLog(written_log, actor="watcher@test").record("trigger.seen")
    first = records(written_log)[0]
    assert first["seq"] == 10 and "truncated" in str(first["problem"])
    assert audit.verify(written_log).intact


def test_verify_command_exit_codes(written_log: Path, runner: CliRunner) -> None:
    """`audit verify` exits 0 on an intact log and 1 naming the first broken record."""
    intact = runner.invoke(main, ["audit", "verify", str(written_log)])
    assert intact.exit_code == 0, intact.output
    assert "10 records intact" in intact.output

    lines = read_lines(written_log)
    del lines[6]
    write_lines(written_log, lines)
    broken = runner.invoke(main, ["audit", "verify", str(written_log)])
    assert broken.exit_code == 1
    assert f"BROKEN {written_log}:7 (seq 8): deleted: seq 7 missing" in broken.output


_WRITER = """
import sys
from pathlib import Path
from monkeytown_deploy.audit import AuditLog
log = AuditLog(Path(sys.argv[1]), actor=f"worker@{sys.argv[2]}")
for number in range(int(sys.argv[3])):
    log.record("analysis.sample", environment="production", writer=sys.argv[2], n=number,
               note="x" * 300)
"""


@pytest.mark.slow
def test_concurrent_writers_keep_lines_whole_and_chain_intact(audit_path: Path) -> None:
    """Four processes writing 1,000 events each leave 4,000 whole lines and an intact chain."""
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(audit_path), f"w{index}", "1000"],
            cwd=Path(__file__).parents[2],
        )
        for index in range(4)
    ]
    assert [writer.wait(timeout=240) for writer in writers] == [0, 0, 0, 0]

    lines = audit_path.read_text().splitlines()
    assert len(lines) == 4000
    parsed = [json.loads(line) for line in lines]
    assert [record["seq"] for record in parsed] == list(range(1, 4001))
    for index in range(4):
        assert sum(record["writer"] == f"w{index}" for record in parsed) == 1000
    assert audit.verify(audit_path).intact


def test_the_stream_mirror_keeps_the_configured_number_of_records(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """With audit_stream_max 1000, 3,000 records leave the newest ~1,000 in Redis, all in the file."""
    settings = Settings(state_dir=tmp_path, audit_stream_max=1000)
    log = AuditLog.configured(settings, actor="test", stream=redis_client)
    for batch in range(30):
        log.record_many([("test.event", {"n": batch * 100 + n}) for n in range(100)])

    assert len(read_lines(settings.audit_path)) == 3000
    kept = redis_client.xlen(audit.STREAM)
    assert 1000 <= kept < 1200  # approximate trimming drops whole nodes of 100 entries
    [(_, newest)] = redis_client.xrevrange(audit.STREAM, count=1)
    assert json.loads(newest[b"record"])["n"] == 2999
