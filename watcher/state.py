"""Per-trigger state in Redis: what the watcher already decided, so nothing is decided twice.

One hash per trigger version, ``key("trigger", trigger_id)``, with the fields the workers
and the CLI read too: state, reason, rule, path, sha, target, blob, updated_at. A trigger
with any state is done as far as the watcher is concerned: pending and rejected versions
never change (new content is a new trigger id), and accepted ones are on the queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import redis
from redis.typing import EncodableT, FieldT

from monkeytown_deploy.keys import key
from triggers import TriggerId
from watcher.decide import Decision

# Reading thousands of states at start-up in one round trip per chunk keeps it well under
# a second; a single giant pipeline would hold a large reply in memory for no gain.
_CHUNK = 2000


class TriggerStore:
    """Reads and writes the state hashes of triggers."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def states(self, ids: Sequence[TriggerId]) -> dict[TriggerId, str | None]:
        """The recorded state of each trigger id (None for one never seen)."""
        found: dict[TriggerId, str | None] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            pipe = self.client.pipeline(transaction=False)
            for identity in chunk:
                pipe.hget(key("trigger", identity), "state")
            for identity, value in zip(chunk, pipe.execute(), strict=True):
                found[identity] = value.decode() if isinstance(value, bytes) else value
        return found

    def record(self, decisions: Iterable[Decision], commit: str) -> None:
        """Write the state of each decision in one round trip."""
        now = f"{time.time():.6f}"
        pipe = self.client.pipeline(transaction=False)
        for decision in decisions:
            pipe.hset(key("trigger", decision.trigger_id), mapping=_fields(decision, commit, now))
        pipe.execute()

    def state(self, identity: TriggerId) -> dict[str, str]:
        raw: dict[bytes, bytes] = self.client.hgetall(key("trigger", identity))  # type: ignore[assignment]
        return {name.decode(): value.decode() for name, value in raw.items()}


def _fields(decision: Decision, commit: str, now: str) -> dict[FieldT, EncodableT]:
    return {
        "state": decision.outcome.value,
        "rule": decision.rule,
        "reason": decision.reason,
        "path": decision.path,
        "blob": decision.blob,
        "sha": decision.sha or (decision.trigger.sha if decision.trigger else ""),
        "target": decision.target,
        "commit": commit,
        "updated_at": now,
    }
