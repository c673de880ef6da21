"""The audit log: one hash-chained JSON object per line, shared by every process on a host.

Watchers, workers and CLI actions all write through :class:`AuditLog`. A record is built by
structlog processors (timestamp, actor, the standard fields, secret redaction), then
appended under an exclusive file lock with a single ``write``, so lines from concurrent
processes never tear or interleave. Each record carries the hash of the one before it and
its own, which makes an edited, missing, reordered or truncated line detectable.
"""

from __future__ import annotations

import fcntl
import functools
import getpass
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
import structlog

from monkeytown_deploy.keys import key

if TYPE_CHECKING:
    from monkeytown_deploy.config import Settings

GENESIS = "0" * 64
STREAM = key("audit")
STREAM_MAX = 100_000
"""Records the Redis mirror keeps by default (about 70 MiB at some 700 bytes a record)."""
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

# Field names whose string values are never written, whatever they hold.
_SECRET_KEYS = re.compile(
    r"(secret|token|password|passwd|passphrase|authorization|webhook|api_?key|"
    r"credential|private_?key|cookie|session_?key|signing_?key)",
    re.I,
)
# Secrets that turn up inside other text: an exception message, a command line, a URL.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)
_WEBHOOK_URL = re.compile(r"https?://hooks\.[^\s\"']+", re.I)
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&](?:token|access_token|key|api_key|apikey|sig|signature|secret|password)=)"
    r"[^&\s\"']+",
    re.I,
)
_BEARER = re.compile(r"(?P<scheme>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}", re.I)
_KNOWN_TOKENS = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+)"
)
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
)
# Text that none of the patterns above can match: every match of theirs holds one of these.
# Most audited values are ids, SHAs and paths; screening them first skips six regexes.
_MAYBE_SECRET = re.compile(
    r"://|[?&][a-z_]+=|bearer|basic|-----BEGIN|gh[pousr]_|github_pat_|xox[abprs]-|AKIA|eyJ", re.I
)


class AuditWriteError(RuntimeError):
    """The record could not be written; the action it announces must not proceed."""


def record_hash(record: Mapping[str, Any]) -> str:
    """The hash of *record* without its own ``hash`` field, over canonical JSON."""
    body = {name: value for name, value in record.items() if name != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def redact(value: Any, field: str = "") -> Any:
    """*value* with secrets masked.

    Masked: any text under a secret-looking field name (``token``, ``password``,
    ``webhook_url``, ``api_key``...), passwords in URLs, webhook URLs, secret query
    parameters, ``Bearer`` credentials, well-known token shapes and PEM private keys
    anywhere in text. Numbers stay: a lease's fencing ``token`` is not a secret.
    """
    if isinstance(value, Mapping):
        return {name: redact(item, str(name)) for name, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(item, field) for item in value]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        if field and _secret_field(field):
            return "***"
        return _mask_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    # Anything else (a SecretStr, a Path, an exception) is written as text, masked as text.
    return redact(str(value), field)


@functools.lru_cache(maxsize=1024)
def _secret_field(name: str) -> bool:
    return _SECRET_KEYS.search(name) is not None


def _mask_text(text: str) -> str:
    return _mask_all(text) if _MAYBE_SECRET.search(text) else text


def _mask_all(text: str) -> str:
    text = _PRIVATE_KEY.sub("-----PRIVATE KEY ***-----", text)
    text = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)
    text = _WEBHOOK_URL.sub("https://hooks.***", text)
    text = _QUERY_SECRET.sub(r"\g<name>***", text)
    text = _BEARER.sub(r"\g<scheme>***", text)
    return _KNOWN_TOKENS.sub("***", text)


def _standard_fields(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in STANDARD_FIELDS:
        event.setdefault(name, None)
    return event


def _timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["ts"] = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return event


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return {name: redact(value, name) for name, value in event.items()}


_PROCESSORS = (_standard_fields, _timestamp, _redact)


class _ChainedFile:
    """The structlog "logger": appends each finished record to the chain."""

    def __init__(self, path: Path, stream: redis.Redis | None, stream_max: int) -> None:
        self.path = path
        self.stream = stream
        self.stream_max = stream_max

    def msg(self, **event: Any) -> dict[str, Any]:
        intent = bool(event.pop("_intent", False))
        record = self._append(event, fsync=intent)
        self._mirror(record)
        return record

    def _append(self, event: dict[str, Any], *, fsync: bool) -> dict[str, Any]:
        return self.append_many([event], fsync=fsync)[0]

    def append_many(self, events: list[dict[str, Any]], *, fsync: bool) -> list[dict[str, Any]]:
        """Chain *events* onto the log under one lock, in one ``write``."""
        fd = _open_locked(self.path)
        try:
            seq, previous = _last_link(fd, self.path)
            records = []
            for event in events:
                seq += 1
                record = {"seq": seq, **event, "prev": previous}
                record["hash"] = previous = record_hash(record)
                records.append(record)
            _write_lines(fd, self.path, records, fsync=fsync)
            return records
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    def mirror(self, records: list[dict[str, Any]]) -> None:
        if self.stream is None or not records:
            return
        try:
            with self.stream.pipeline(transaction=False) as pipe:
                for record in records:
                    pipe.xadd(
                        STREAM,
                        {"record": json.dumps(record)},
                        maxlen=self.stream_max,
                        approximate=True,
                    )
                pipe.execute()
        except redis.RedisError as exc:
            # The file is the record of truth; the stream is a convenience for other hosts.
            print(f"audit: could not mirror to Redis stream: {exc}", file=sys.stderr)

    def _mirror(self, record: dict[str, Any]) -> None:
        self.mirror([record])

    info = warning = error = msg


def _open_locked(path: Path) -> int:
    """A descriptor of the log at *path*, opened for appending and exclusively locked.

    After taking the lock the descriptor is checked to still be the file at *path*: a
    rotation may have renamed it while this process waited, and appending to the renamed
    file would fork the chain.
    """
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise AuditWriteError(f"cannot open audit log {path}: {exc.strerror}") from exc
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (
            opened.st_ino,
            opened.st_dev,
        ):
            return fd
        os.close(fd)  # rotated under us: open the new file


def _write_lines(fd: int, path: Path, records: list[dict[str, Any]], *, fsync: bool) -> None:
    """Append *records*, a line each, with one ``write``, so no reader sees half of one."""
    line = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    try:
        written = os.write(fd, line)
        if written != len(line):
            os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_END) - written)
            raise AuditWriteError(
                f"short write to audit log {path} ({written} of {len(line)} bytes): "
                "is the disk full?"
            )
        if fsync:
            os.fsync(fd)
    except OSError as exc:
        raise AuditWriteError(
            f"cannot write audit log {path}: {exc.strerror} "
            "(a full disk stops deploys until there is room again)"
        ) from exc


def _last_link(fd: int, path: Path) -> tuple[int, str]:
    """Sequence number and hash of the last record, or the genesis link of an empty log.

    A log whose last line is incomplete or unreadable was damaged after it was written;
    appending to it would chain onto a record nobody can check, so this refuses.
    """
    end = os.lseek(fd, 0, os.SEEK_END)
    if end == 0:
        return 0, GENESIS
    if os.pread(fd, 1, end - 1) != b"\n":
        raise AuditWriteError(
            f"audit log {path} ends in an incomplete record; nothing is appended to a "
            f"damaged log. Run `monkeytown-deploy audit verify {path}`, then "
            f"`monkeytown-deploy audit rotate {path}` to start a new file chained to the "
            "last intact record (docs/operations.md, 'Verify and rotate the audit log')"
        )
    last = _read_last_line(fd, end)
    try:
        record = json.loads(last)
        return int(record["seq"]), str(record["hash"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditWriteError(
            f"the last line of audit log {path} is not an audit record ({exc}); run "
            f"`monkeytown-deploy audit verify {path}` and rotate it"
        ) from exc


def _read_last_line(fd: int, end: int) -> bytes:
    chunk = 4096
    while True:
        start = max(0, end - chunk)
        data = os.pread(fd, end - start, start).rstrip(b"\n")
        if b"\n" in data or start == 0:
            return data.rsplit(b"\n", 1)[-1]
        chunk *= 4


def default_actor() -> str:
    """``user:<name>`` of the person behind a CLI action, seen through ``sudo``."""
    user = os.environ.get("SUDO_USER")
    if not user:
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
        stream_max: int = STREAM_MAX,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """*stream*, when given, mirrors every record, keeping about the last *stream_max*."""
        self._sink = _ChainedFile(Path(path), stream, stream_max)
        self.context = {"actor": actor or default_actor(), **(context or {})}
        self._logger = structlog.wrap_logger(
            self._sink,
            processors=list(_PROCESSORS),
            context_class=dict,
            cache_logger_on_first_use=False,
        )

    @classmethod
    def configured(
        cls, settings: Settings, *, actor: str | None, stream: redis.Redis | None
    ) -> AuditLog:
        """The log *settings* name (``audit_log``, ``audit_stream_max``)."""
        return cls(
            settings.audit_path, actor=actor, stream=stream, stream_max=settings.audit_stream_max
        )

    @property
    def path(self) -> Path:
        return self._sink.path

    def bind(self, **context: Any) -> AuditLog:
        """A log that adds *context* (trigger_id, sha, job_id, ...) to every record."""
        bound = AuditLog.__new__(AuditLog)
        bound._sink, bound._logger = self._sink, self._logger
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

    def record_many(self, events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Append several events at once: one lock, one write, one Redis round trip.

        The records are the same as :meth:`record` would write one by one, in order; a
        reconcile pass that decides hundreds of triggers uses this. Nothing is fsynced:
        batches are for what happened, not for intents.
        """
        prepared = []
        for event, fields in events:
            entry: MutableMapping[str, Any] = {**self.context, **fields, "event": event}
            for processor in _PROCESSORS:
                entry = processor(None, "msg", entry)
            prepared.append(dict(entry))
        records = self._sink.append_many(prepared, fsync=False) if prepared else []
        self._sink.mirror(records)
        return records


# --- Verifying the chain ----------------------------------------------------------------

ROTATED = "audit.rotated"
"""The first record of a file that continues an older, rotated file's chain."""


@dataclass(frozen=True)
class ChainBreak:
    """The first place where a log stops being the log that was written."""

    path: Path
    line: int
    seq: int | None
    kind: str
    """``edited``, ``deleted``, ``reordered``, ``truncated``, ``unlinked`` or ``unreadable``."""
    detail: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" + (f" (seq {self.seq})" if self.seq else "")
        return f"{where}: {self.kind}: {self.detail}"


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify` found: how many records held, and the first break if any."""

    path: Path
    records: int
    last_seq: int
    last_hash: str
    broken: ChainBreak | None

    @property
    def intact(self) -> bool:
        return self.broken is None


@dataclass
class _Link:
    seq: int
    hash: str
    line: int


def verify(path: Path, after: _Link | None = None) -> ChainReport:
    """Check every record of the log at *path* against its hash and its predecessor.

    *after* is where the previous (rotated) file ended, when files are checked in order.
    A file that begins with an ``audit.rotated`` record is accepted on its own, anchored
    to the hash that record names. Removing whole records from the end of the newest
    file leaves a shorter but consistent chain; only a copy (the Redis stream, a backup)
    shows that, see docs/audit.md.
    """
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = lines[:-1]
    tail = lines[-1]
    records, problem = _parse_lines(path, complete)
    if problem is None:
        problem = _check_links(path, records, after)
    end = problem.line if problem else len(complete) + 1
    intact = [(number, record) for number, record in records if number < end]
    last = _Link(after.seq, after.hash, 0) if after else _Link(0, GENESIS, 0)
    if intact:
        number, record = intact[-1]
        last = _Link(int(record["seq"]), str(record["hash"]), number)
    if problem is None and tail:
        problem = ChainBreak(
            path,
            len(complete) + 1,
            None,
            "truncated",
            f"the file ends in the middle of a record ({len(tail)} bytes without a line end); "
            f"the last intact record is seq {last.seq}",
        )
    return ChainReport(path, len(intact), last.seq, last.hash, problem)


def verify_files(paths: list[Path]) -> list[ChainReport]:
    """Verify rotated files oldest first, each anchored where the one before ended."""
    reports: list[ChainReport] = []
    anchor: _Link | None = None
    for path in paths:
        report = verify(path, anchor)
        reports.append(report)
        if not report.intact:
            break
        anchor = _Link(report.last_seq, report.last_hash, 0)
    return reports


def _parse_lines(
    path: Path, lines: list[bytes]
) -> tuple[list[tuple[int, dict[str, Any]]], ChainBreak | None]:
    records: list[tuple[int, dict[str, Any]]] = []
    for number, raw in enumerate(lines, 1):
        try:
            record = json.loads(raw)
        except ValueError:
            return records, ChainBreak(
                path, number, None, "unreadable", "the line is not JSON (edited or corrupted)"
            )
        if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
            return records, ChainBreak(
                path, number, None, "unreadable", "the line is not an audit record with a seq"
            )
        missing = [name for name in ("prev", "hash") if name not in record]
        if missing:
            return records, ChainBreak(
                path, number, None, "unreadable", f"the record lacks {', '.join(missing)}"
            )
        records.append((number, record))
    return records, None


def _check_links(
    path: Path, records: list[tuple[int, dict[str, Any]]], after: _Link | None
) -> ChainBreak | None:
    seqs_at = {int(record["seq"]): number for number, record in records}
    previous = after or _Link(0, GENESIS, 0)
    for index, (number, record) in enumerate(records):
        seq = int(record["seq"])
        if record_hash(record) != record["hash"]:
            return ChainBreak(path, number, seq, "edited", "its content no longer matches its hash")
        if index == 0 and after is None and record.get("event") == ROTATED:
            previous = _Link(seq - 1, str(record["prev"]), 0)
        problem = _check_order(path, number, seq, previous, seqs_at)
        if problem is None and record["prev"] != previous.hash:
            problem = ChainBreak(
                path, number, seq, "unlinked",
                f"its prev {str(record['prev'])[:12]} is not the hash of the record before "
                f"it ({previous.hash[:12]}): that record was edited and re-hashed, or "
                "this one was replaced",
            )  # fmt: skip
        if problem is not None:
            return problem
        previous = _Link(seq, str(record["hash"]), number)
    return None


def _check_order(
    path: Path, number: int, seq: int, previous: _Link, seqs_at: Mapping[int, int]
) -> ChainBreak | None:
    expected = previous.seq + 1
    if seq == expected:
        return None
    if seq < expected:
        return ChainBreak(
            path, number, seq, "reordered",
            f"seq {seq} comes after seq {previous.seq}: records were moved",
        )  # fmt: skip
    if expected in seqs_at and seqs_at[expected] > number:
        return ChainBreak(
            path, number, seq, "reordered",
            f"seq {expected} was expected here but is at line {seqs_at[expected]}: "
            "records were moved",
        )  # fmt: skip
    missing = f"seq {expected}" if seq == expected + 1 else f"seqs {expected}..{seq - 1}"
    if previous.line == 0 and previous.hash == GENESIS:
        where = "at the start of the file (verify it after the file it was rotated from)"
    else:
        where = f"between line {previous.line} and line {number}"
    return ChainBreak(path, number, seq, "deleted", f"{missing} missing {where}")


# --- Reading and following --------------------------------------------------------------


def parse_line(raw: bytes | str) -> dict[str, Any]:
    """One line as a record; a line that is not one becomes an ``audit.unreadable`` event."""
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return {"event": "audit.unreadable", "line": text}
    return record


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record in the file at *path*, oldest first."""
    with Path(path).open("rb") as handle:
        for raw in handle:
            if raw.strip():
                yield parse_line(raw)


class FileFollower:
    """Reads records as they are appended to a log, across rotations.

    :meth:`poll` never blocks, so one loop can follow the log and child processes at once.
    A partial line (a writer mid-``write``) waits for its line end.
    """

    def __init__(self, path: Path, *, from_start: bool = True) -> None:
        self.path = Path(path)
        self.from_start = from_start
        self._handle: Any = None
        self._identity: tuple[int, int] | None = None
        self._pending = b""

    def poll(self) -> list[dict[str, Any]]:
        if self._handle is None and not self._open():
            return []
        chunk = self._handle.read()
        if not chunk:
            if self._replaced():
                self.close()
                self.from_start = True  # a rotated-in file is read from its first line
                return self.poll()
            return []
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        return [parse_line(raw) for raw in lines if raw.strip()]

    def _open(self) -> bool:
        try:
            self._handle = self.path.open("rb")
        except FileNotFoundError:
            self.from_start = True  # whatever a file created from now on holds is new
            return False
        stat = os.fstat(self._handle.fileno())
        self._identity = (stat.st_dev, stat.st_ino)
        if not self.from_start:
            self._handle.seek(0, os.SEEK_END)
        return True

    def _replaced(self) -> bool:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (stat.st_dev, stat.st_ino) != self._identity or stat.st_size < self._handle.tell()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle, self._pending = None, b""


class StreamFollower:
    """Reads records from the Redis stream mirror, where every host's log lands."""

    def __init__(self, client: redis.Redis, *, start: str = "$") -> None:
        self.client = client
        self.last_id = start

    def poll(self, block_ms: int = 0) -> list[dict[str, Any]]:
        """New records, waiting up to *block_ms* for the first one (0: do not wait)."""
        if self.last_id == "$":  # pin "now" once, so no entry slips between two polls
            newest: Any = self.client.xrevrange(STREAM, count=1)
            self.last_id = _text(newest[0][0]) if newest else "0-0"
        answer: Any = self.client.xread({STREAM: self.last_id}, count=500, block=block_ms or None)
        records = []
        for _stream, entries in answer or []:
            for entry_id, fields in entries:
                self.last_id = _text(entry_id)
                raw = fields.get(b"record") or fields.get("record") or b""
                records.append(parse_line(raw))
        return records


def stream_start(since: datetime | None) -> str:
    """The stream id to read from for records written at or after *since* (all if None)."""
    if since is None:
        return "0-0"
    return f"{int(since.timestamp() * 1000)}-0"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def follow(
    follower: FileFollower, stop: Callable[[], bool], poll: float = 0.1
) -> Iterator[dict[str, Any]]:
    """Records from *follower* until *stop* says so, checking for new ones every *poll* s."""
    while not stop():
        records = follower.poll()
        yield from records
        if not records:
            time.sleep(poll)


# --- Rotation ---------------------------------------------------------------------------


def rotate(path: Path, *, actor: str | None = None) -> Path:
    """Move the log aside and start a new file whose first record continues its chain.

    Writers are locked out while this runs and reopen the new file afterwards. A damaged
    old file is rotated too: the new chain continues from its last intact record, and the
    ``audit.rotated`` record says what was wrong, so the break stays on the record.
    """
    path = Path(path)
    fd = _open_locked(path)
    try:
        report = verify(path)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        archived = path.with_name(f"{path.name}.{stamp}")
        os.rename(path, archived)
        first = {
            "seq": report.last_seq + 1,
            "event": ROTATED,
            **dict.fromkeys(STANDARD_FIELDS),
            "actor": actor or default_actor(),
            "ts": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "rotated_to": archived.name,
            "records": report.records,
            "problem": str(report.broken) if report.broken else None,
            "prev": report.last_hash,
        }
        first["hash"] = record_hash(first)
        new_fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            _write_lines(new_fd, path, [first], fsync=True)
        finally:
            os.close(new_fd)
        return archived
    finally:
        os.close(fd)
