"""The health and smoke gates a stage must pass before it counts as deployed.

The same checks as the strategy's smoke test: ``/health`` says ``healthy``, ``/ready``
answers 200, ``/api/status`` lists agents. A gate is retried until the environment's
``gate_timeout`` runs out, because pods that just became available may still be warming up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.errors import TemporaryError
from workers.http import get_json

POLL = 0.2


@dataclass(frozen=True)
class Gate:
    name: str
    path: str
    check: Callable[[int, Any], str | None]  # None when passed, else what was wrong


def _healthy(status: int, body: Any) -> str | None:
    state = body.get("status") if isinstance(body, dict) else None
    if status == 200 and state == "healthy":
        return None
    return f'expected 200 {{"status": "healthy"}}, got {status} status={state!r}'


def _ready(status: int, _: Any) -> str | None:
    return None if status == 200 else f"expected 200, got {status}"


def _agents(status: int, body: Any) -> str | None:
    agents = body.get("agents") if isinstance(body, dict) else None
    if status == 200 and isinstance(agents, list | dict) and agents:
        return None
    return f"expected 200 with a non-empty agents list, got {status} agents={agents!r}"


GATES = (
    Gate("health", "/health", _healthy),
    Gate("ready", "/ready", _ready),
    Gate("status", "/api/status", _agents),
)


def check_gate(gate: Gate, base_url: str, timeout: float) -> str | None:
    """Poll *gate* until it passes (None) or *timeout* ends (the last problem seen)."""
    deadline = time.monotonic() + timeout
    url = base_url.rstrip("/") + gate.path
    while True:
        try:
            status, body = get_json(url, timeout=min(5.0, timeout))
            problem = gate.check(status, body)
        except TemporaryError as error:
            problem = str(error)
        if problem is None:
            return None
        if time.monotonic() + POLL > deadline:
            return f"{url}: {problem}"
        time.sleep(POLL)
