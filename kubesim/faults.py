"""Fault injection: make matching API requests fail the ways a real cluster's API can.

A fault matches on HTTP method and a regular expression searched in the path, and lasts
for a number of requests (`times`), a number of seconds (`seconds`), or both, whichever
runs out first; with neither it lasts until cleared. Control paths (`/_sim/...`) are never
faulted, so a test can always clear what it set.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FaultKind = Literal["error", "drop", "delay"]

_REASONS = {
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

_ids = itertools.count(1)


@dataclass
class Fault:
    """One injected failure.

    Kinds: `error` answers `status` (500, 429 with Retry-After, 409, ...) as a Status
    object; `drop` resets the connection without a response; `delay` waits `delay`
    seconds before handling the request normally, to make a client time out.
    """

    kind: FaultKind = "error"
    method: str | None = None  # None matches every method
    path: str = ""  # regular expression searched in the URL path
    status: int = 500
    retry_after: int = 1
    delay: float = 0.0
    times: int | None = None
    seconds: float | None = None
    id: int = field(default_factory=lambda: next(_ids))
    hits: int = 0
    created: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.kind not in ("error", "drop", "delay"):
            raise ValueError(f"fault kind must be error, drop or delay, not {self.kind!r}")
        re.compile(self.path)  # Fail when set, not when the first request arrives.

    @property
    def reason(self) -> str:
        return _REASONS.get(self.status, "InternalError")

    def expired(self, now: float) -> bool:
        used_up = self.times is not None and self.hits >= self.times
        timed_out = self.seconds is not None and now - self.created >= self.seconds
        return used_up or timed_out

    def matches(self, method: str, path: str) -> bool:
        method_matches = self.method is None or self.method.upper() == method
        return method_matches and re.search(self.path, path) is not None

    def to_json(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["created"]
        return fields


class FaultSet:
    """The active faults of one API server; the first unexpired match wins."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def active(self) -> list[Fault]:
        now = time.monotonic()
        with self._lock:
            self._faults = [fault for fault in self._faults if not fault.expired(now)]
            return list(self._faults)

    def take(self, method: str, path: str) -> Fault | None:
        """The fault this request triggers, counted as used, or None."""
        now = time.monotonic()
        with self._lock:
            for fault in self._faults:
                if not fault.expired(now) and fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None


def fault_from_json(body: dict[str, Any]) -> Fault:
    """Build a Fault from a control request body, naming any field it does not know."""
    known = {"kind", "method", "path", "status", "retry_after", "delay", "times", "seconds"}
    unknown = set(body) - known
    if unknown:
        raise ValueError(f"unknown fault fields {sorted(unknown)}; known: {sorted(known)}")
    return Fault(**body)
