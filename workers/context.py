"""What one running job carries around: its settings, audit log, leases, checkpoints, clusters.

Stages receive a :class:`Run` and ask it for the cluster of an environment, to keep the
lease and deadline alive while they wait, and to write the audit records they owe.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from monkeytown_deploy.audit import AuditLog
from monkeytown_deploy.config import Canary, EnvironmentSettings, Settings
from monkeytown_deploy.keys import key
from monkeytown_deploy.metrics import STAGE_SECONDS
from triggers import Environment, Trigger
from workers.errors import PermanentError
from workers.kube import Cluster
from workers.leases import Leases
from workers.notify import Notifier
from workers.progress import Progress

SLEEP_SLICE = 0.25


@dataclass(frozen=True)
class TriggerRequest:
    """The request the watcher enqueues for one approved trigger (see the shared contract)."""

    trigger_id: str
    path: str
    blob: str
    sha: str
    target: Environment
    action: str
    to_revision: int | None
    repo: Path
    branch: str
    commit: str
    committed_at: float
    enqueued_at: float

    @classmethod
    def from_dict(cls, request: dict[str, Any]) -> TriggerRequest:
        missing = [name for name in cls.__dataclass_fields__ if name not in request]
        if missing:
            raise PermanentError(
                f"job request lacks {', '.join(missing)}; it must come from the watcher "
                "(workers.jobs.run_trigger takes the dict the watcher enqueues)"
            )
        return cls(
            trigger_id=str(request["trigger_id"]),
            path=str(request["path"]),
            blob=str(request["blob"]),
            sha=str(request["sha"]),
            target=Environment(request["target"]),
            action=str(request["action"] or "deploy"),
            to_revision=int(request["to_revision"]) if request["to_revision"] else None,
            repo=Path(request["repo"]),
            branch=str(request["branch"]),
            commit=str(request["commit"]),
            committed_at=float(request["committed_at"]),
            enqueued_at=float(request["enqueued_at"]),
        )

    @property
    def order(self) -> tuple[float, float]:
        """Which of two triggers for one target is newer: commit time, then enqueue time."""
        return (self.committed_at, self.enqueued_at)


@dataclass
class Run:
    """One execution of one job."""

    settings: Settings
    client: redis.Redis
    audit: AuditLog
    progress: Progress
    leases: Leases
    notifier: Notifier
    job_id: str
    sha: str = ""
    trigger: Trigger | None = None
    deadline: float = 0.0
    stage: Environment | None = None
    clusters: dict[Environment, Cluster] = field(default_factory=dict)
    rendered: dict[Environment, list[dict[str, Any]]] = field(default_factory=dict)

    def env(self, environment: Environment) -> EnvironmentSettings:
        return self.settings.environment(environment)

    def canary(self) -> Canary:
        """Production's canary, tightened by the trigger's ``### Rollout`` if it has one."""
        rollout = self.trigger.rollout if self.trigger else None
        return self.env(Environment.PRODUCTION).canary.tightened_by(rollout)

    def cluster(self, environment: Environment) -> Cluster:
        if environment not in self.clusters:
            retry = self.settings.api_retry_seconds
            cluster = Cluster.connect(self.env(environment), retry_seconds=retry)
            cluster.on_retry = lambda what, attempt: self._retried(environment, what, attempt)
            self.clusters[environment] = cluster
        return self.clusters[environment]

    def _retried(self, environment: Environment, what: str, attempt: int) -> None:
        self.audit.record("api.retry", environment=environment.value, request=what, attempt=attempt)

    def keepalive(self) -> None:
        """Stop the job when its time is up or a lease was lost; called while waiting."""
        if time.monotonic() > self.deadline:
            raise PermanentError(
                f"job timeout of {self.settings.job_timeout:.0f}s reached during "
                f"{self.stage or 'start-up'} (the last fifth is kept for rolling back); "
                "raise job_timeout if deploys need longer"
            )
        self.leases.guard()

    def sleep(self, seconds: float) -> None:
        """Sleep *seconds*, keeping the lease and deadline checked every slice."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.keepalive()
            time.sleep(min(SLEEP_SLICE, left))

    @contextlib.contextmanager
    def timed(self, event: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Record *event* when the block ends, with its duration; the block may add fields."""
        extra: dict[str, Any] = {}
        started = time.monotonic()
        yield extra
        elapsed = (time.monotonic() - started) * 1000
        self.audit.record(event, duration_ms=round(elapsed, 1), **fields, **extra)

    @contextlib.contextmanager
    def in_stage(self, environment: Environment) -> Iterator[None]:
        """Stage bookkeeping: lease, audit records, metric, job meta."""
        self.stage = environment
        self.progress.update(stage=environment.value)
        self.leases.acquire(environment.value, while_waiting=self.keepalive)
        stage_audit = self.audit
        self.audit = stage_audit.bind(stage=environment.value)
        started = time.monotonic()
        self.audit.record("stage.started", environment=environment.value)
        try:
            yield
        finally:
            self.audit = stage_audit
        elapsed = time.monotonic() - started
        STAGE_SECONDS.labels(environment.value, environment.value).observe(elapsed)
        self.audit.record(
            "stage.completed", environment=environment.value, stage=environment.value,
            outcome="succeeded", duration_ms=round(elapsed * 1000, 1),
        )  # fmt: skip

    def record_environment(self, environment: Environment, revision: int, trigger_id: str) -> None:
        """What *environment* runs now, for ``status`` and for operators."""
        self.client.hset(
            key("env", environment.value),
            mapping={
                "sha": self.sha,
                "trigger_id": trigger_id,
                "job_id": self.job_id,
                "revision": str(revision),
                "updated_at": str(time.time()),
            },
        )

    def close(self) -> None:
        self.leases.close()
        for cluster in self.clusters.values():
            cluster.close()
        self.clusters.clear()
