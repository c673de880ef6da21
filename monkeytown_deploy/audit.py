"""The audit log: one hash-chained JSON object per line, shared by every process on a host.

Watchers, workers and CLI actions all write through :class:`AuditLog`. A record is built by
structlog processors (timestamp, actor, the standard fields, secret redaction), then
appended under an exclusive file lock with a single ``write``, so lines from concurrent
processes never tear or interleave. Each record carries the hash of the one before it and
its own, which makes an edited, missing, reordered or truncated line detectable.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import structlog

from monkeytown_deploy.keys import key

GENESIS = "0" * 64
STREAM = key("audit")
STANDARD_FIELDS = (
    "trigger_id",
    "sha",
    "environment",
    "stage",
    "outcome",
    "duration_ms",
    "job_id",
    "actor",
)

_SECRET_KEYS = re.compile(r"(secret|token|password|passwd|authorization|webhook)", re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)
_WEBHOOK_URL = re.compile(r"https?://hooks\.[^\s\"']+", re.I)


class AuditWriteError(RuntimeError):
    """The record could not be written; the action it announces must not proceed."""


def record_hash(record: Mapping[str, Any]) -> str:
    """The hash of *record* without its own ``hash`` field, over canonical JSON."""
    body = {name: value for name, value in record.items() if name != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def redact(value: Any, field: str = "") -> Any:
    """*value* with secrets masked: secret-named fields, URL passwords, webhook URLs."""
    if isinstance(value, Mapping):
        return {name: redact(item, str(name)) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item, field) for item in value]
    if isinstance(value, str):
        if field and _SECRET_KEYS.search(field) and field not in ("outcome", "event"):
            return "***"
        masked = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", value)
        return _WEBHOOK_URL.sub("https://hooks.***", masked)
    return value


def _standard_fields(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in STANDARD_FIELDS:
        event.setdefault(name, None)
    return event


def _timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["ts"] = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return event


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return {name: redact(value, name) for name, value in event.items()}


class _ChainedFile:
    """The structlog "logger": appends each finished record to the chain."""

    def __init__(self, path: Path, stream: redis.Redis | None) -> None:
        self.path = path
        self.stream = stream

    def msg(self, **event: Any) -> dict[str, Any]:
        intent = bool(event.pop("_intent", False))
        record = self._append(event, fsync=intent)
        self._mirror(record)
        return record

    def _append(self, event: dict[str, Any], *, fsync: bool) -> dict[str, Any]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise AuditWriteError(f"cannot open audit log {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            seq, previous = _last_link(fd)
            record = {"seq": seq + 1, **event, "prev": previous}
            record["hash"] = record_hash(record)
            line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
            written = os.write(fd, line)
            if written != len(line):
                os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_END) - written)
                raise AuditWriteError(f"short write to audit log {self.path}")
            if fsync:
                os.fsync(fd)
            return record
        except OSError as exc:
            raise AuditWriteError(
                f"cannot write audit log {self.path}: {exc.strerror} "
                "(a full disk stops deploys until there is room again)"
            ) from exc
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    def _mirror(self, record: dict[str, Any]) -> None:
        if self.stream is None:
            return
        try:
            self.stream.xadd(
                STREAM, {"record": json.dumps(record)}, maxlen=1_000_000, approximate=True
            )
        except redis.RedisError as exc:
            # The file is the record of truth; the stream is a convenience for other hosts.
            print(f"audit: could not mirror to Redis stream: {exc}", file=sys.stderr)

    info = warning = error = msg


def _last_link(fd: int) -> tuple[int, str]:
    """Sequence number and hash of the last complete record, or the genesis link."""
    end = os.lseek(fd, 0, os.SEEK_END)
    chunk = 4096
    while end > 0:
        start = max(0, end - chunk)
        data = os.pread(fd, end - start, start)
        lines = data.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or start == 0:
            last = json.loads(lines[-1])
            return int(last["seq"]), str(last["hash"])
        chunk *= 4
    return 0, GENESIS


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"user:{user}"


class AuditLog:
    """Where every component writes what it did. Bind context once, record many events."""

    def __init__(
        self,
        path: Path,
        *,
        actor: str | None = None,
        stream: redis.Redis | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.stream = stream
        self.context = {"actor": actor or default_actor(), **(context or {})}
        self._logger = structlog.wrap_logger(
            _ChainedFile(self.path, stream),
            processors=[_standard_fields, _timestamp, _redact],
            context_class=dict,
            cache_logger_on_first_use=False,
        )

    def bind(self, **context: Any) -> AuditLog:
        """A log that adds *context* (trigger_id, sha, job_id, ...) to every record."""
        bound = AuditLog.__new__(AuditLog)
        bound.path, bound.stream, bound._logger = self.path, self.stream, self._logger
        bound.context = {**self.context, **context}
        return bound

    def record(self, event: str, *, intent: bool = False, **fields: Any) -> dict[str, Any]:
        """Append one event and return the record as written.

        An *intent* (an event announcing an action about to happen) is fsynced before this
        returns, so the action never happens without its record. Raises
        :class:`AuditWriteError` when the record could not be written.
        """
        record: dict[str, Any] = self._logger.msg(
            event, **{**self.context, **fields}, _intent=intent
        )
        return record
