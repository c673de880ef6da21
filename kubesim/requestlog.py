"""The record of every request the simulated API server answered, for tests to count."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class RequestRecord:
    """One API request: what was asked and how it was answered.

    `status` is 0 when an injected fault dropped the connection; `fault` names the
    injected fault's kind, if any.
    """

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    status: int
    started: float  # time.time() when the request arrived
    duration: float
    fault: str | None = None

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    """A thread-safe, append-only list of RequestRecords with a filter for tests."""

    def __init__(self) -> None:
        self._records: list[RequestRecord] = []
        self._lock = threading.Lock()

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def select(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        *,
        writes: bool = False,
        since: float | None = None,
    ) -> list[RequestRecord]:
        """Records in arrival order, filtered by method, path substring, writes-only, time."""
        with self._lock:
            records = list(self._records)
        return [
            record
            for record in records
            if (method is None or record.method == method.upper())
            and (path_contains is None or path_contains in record.path)
            and (not writes or record.is_write)
            and (since is None or record.started >= since)
        ]
