"""Checkpoints: what a job has finished, kept in Redis and mirrored into the RQ job's meta.

A requeued job reads them back and skips what is done. Beside the checkpoint names the
job keeps *changes*: what it is about to change in the cluster and what was there before
(a stable Deployment's previous revision and images), written before the change itself,
so a rollback after a crash knows exactly what to undo.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from monkeytown_deploy.keys import key

KEEP_SECONDS = 30 * 24 * 3600


class Progress:
    """The checkpoint record of one job id."""

    def __init__(self, client: redis.Redis, job_id: str, job: Any = None) -> None:
        self.client = client
        self.job_id = job_id
        self.job = job  # the rq Job, when running under a worker
        self.key = key("job", job_id)
        raw: dict[bytes, bytes] = client.hgetall(self.key)  # type: ignore[assignment]
        stored = {name.decode(): value.decode() for name, value in raw.items()}
        self.checkpoints: list[str] = json.loads(stored.get("checkpoints", "[]"))
        self.changes: dict[str, Any] = json.loads(stored.get("changes", "{}"))
        self.resumed = bool(self.checkpoints)

    def done(self, name: str) -> bool:
        return name in self.checkpoints

    def mark(self, name: str) -> None:
        """Record checkpoint *name* as completed."""
        if name not in self.checkpoints:
            self.checkpoints.append(name)
        self.update(checkpoints=self.checkpoints)

    def remember(self, section: str, name: str, value: Any) -> None:
        """Keep *value* under changes[section][name] unless it is already known.

        The first value wins: after a resume the cluster already shows this job's own
        change, and the state *before* the job is what a rollback needs.
        """
        self.changes.setdefault(section, {}).setdefault(name, value)
        self.update(changes=self.changes)

    def update(self, **fields: Any) -> None:
        """Store *fields* (stage, step, canary_weight, failure_reason, ...) and mirror them."""
        encoded: dict[FieldT, EncodableT] = {n: json.dumps(v) for n, v in fields.items()}
        encoded["updated_at"] = json.dumps(time.time())
        with self.client.pipeline() as pipe:
            pipe.hset(self.key, mapping=encoded)
            pipe.expire(self.key, KEEP_SECONDS)
            pipe.execute()
        if self.job is not None:
            self.job.meta.update(fields)
            self.job.save_meta()
