"""One reconcile pass: the tip of the branch, compared with what Redis already knows.

The truth is ``git ls-tree`` of the trigger folder at the tip of the tracked branch; file
events only say *when* to look. Each pass decides the trigger versions Redis has no state
for, enqueues the accepted ones and records every decision. The order makes a crash at any
moment harmless: a job is enqueued (with RQ's unique enqueue under the trigger id) before
its state is written, so a restart that finds no state enqueues again and RQ answers that
the job already exists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import structlog
from rq import Queue

from monkeytown_deploy.audit import AuditLog
from monkeytown_deploy.keys import QUEUE, key
from monkeytown_deploy.queueing import enqueue_triggers
from triggers import TRIGGER_DIR, Environment, TriggerId, trigger_id
from triggers.gitobjects import git, list_tree, read_blobs
from triggers.ids import CommitSha
from watcher.decide import Decision, Judge, Outcome, Policy, Snapshot, readable
from watcher.metrics import WatcherMetrics
from watcher.state import TriggerStore

log = structlog.get_logger("watcher")

# A watcher that was away for more trigger commits than this reads only the newest of
# them (log -N keeps the newest N): a version that lived and died in an older commit is
# not seen. The bound keeps one pass from running for minutes after a long outage.
_MAX_WALK = 1000

# Decisions audited, enqueued and recorded together; a stop request is honoured between
# batches, so a pass over a huge commit still ends promptly on SIGTERM.
_BATCH = 200


@dataclass
class PassReport:
    """What one reconcile pass found and did."""

    commit: str
    seen: int = 0
    new: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    enqueued: list[TriggerId] = field(default_factory=list)
    duplicates: list[TriggerId] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Reconciler:
    """Reconciles one branch of one checkout into the deployments queue."""

    repo: Path
    branch: str
    client: redis.Redis
    audit: AuditLog
    policy_for: Callable[[Environment], Policy]
    metrics: WatcherMetrics = field(default_factory=WatcherMetrics)
    job_timeout: float = 3600.0
    last_commit: str | None = None
    cancelled: Callable[[], bool] = lambda: False

    def __post_init__(self) -> None:
        self.repo = Path(self.repo).resolve()
        self.store = TriggerStore(self.client)
        self._resolved: dict[str, CommitSha] = {}
        self.queue = Queue(QUEUE, connection=self.client)

    def tip(self) -> str:
        """The commit at the tip of the tracked branch right now."""
        return git(self.repo, "rev-parse", "--verify", f"{self.branch}^{{commit}}").decode().strip()

    def reconcile(
        self, reason: str = "timer", woke_at: float | None = None, tip: str | None = None
    ) -> PassReport:
        """Bring the queue and the state up to date with the branch.

        Every commit that changed the trigger folder since the last reconciled one is read,
        oldest first, so a trigger that a later commit already changed or deleted still
        counts: it was committed on the branch. A timer pass also re-reads the tip, which
        repairs anything an earlier pass could not finish.
        """
        started = time.perf_counter()
        tip = tip or self.tip()
        report = PassReport(tip)
        for snapshot in self._unseen(tip, full=reason != "event"):
            self._reconcile_at(snapshot, report, woke_at)
            if self.cancelled():
                break
            # Progress survives a crash mid-walk: the next run starts after this commit.
            self.client.set(self._marker, snapshot.commit)
        else:
            self.client.set(self._marker, tip)
            self.last_commit = tip
        report.seconds = time.perf_counter() - started
        self.metrics.reconcile.labels(reason).observe(report.seconds)
        return report

    @property
    def _marker(self) -> str:
        return key("watcher", "commit", self.branch.replace(":", "_"))

    def _unseen(self, tip: str, *, full: bool) -> list[Snapshot]:
        """Snapshots to read, oldest first.

        The first-parent commits since the last reconciled one that touched the trigger
        folder: each is a state the branch really had. The last of them has the same
        folder as the tip. On the first run, after a force-push that dropped the
        reconciled commit, and on a *full* pass with nothing newer, the tip is read.
        """
        marker = self.client.get(self._marker)
        previous = marker.decode() if isinstance(marker, bytes) else None
        walked: list[Snapshot] = []
        if previous is not None and previous != tip:
            out = git(
                self.repo, "log", "--first-parent", "--reverse", f"-{_MAX_WALK}",
                "--format=%H %ct", f"{previous}..{tip}", "--", TRIGGER_DIR, check=False,
            )  # fmt: skip
            walked = [self._snapshot(*line.split()) for line in out.decode().splitlines()]
        if walked or (previous == tip and not full):
            return walked
        out = git(self.repo, "log", "-1", "--format=%H %ct", tip, "--")
        return [self._snapshot(*out.decode().split())]

    def _reconcile_at(self, snapshot: Snapshot, report: PassReport, woke_at: float | None) -> None:
        entries = list_tree(self.repo, snapshot.commit, TRIGGER_DIR)
        report.seen = len(entries)
        ids = [trigger_id(entry.path, entry.object) for entry in entries]
        known = self.store.states(ids)
        fresh = [entry for entry, identity in zip(entries, ids, strict=True) if not known[identity]]
        report.new += len(fresh)
        if fresh:
            contents = read_blobs(self.repo, readable(fresh))
            judge = Judge(snapshot, self.policy_for, self._resolved)
            decisions = judge.decide_all(fresh, contents)
            self._act(decisions, snapshot, report, woke_at)

    def _snapshot(self, commit: str, committed_at: str) -> Snapshot:
        full = CommitSha(commit)
        return Snapshot(self.repo, self.branch, full, self._landed_at(full, float(committed_at)))

    def _landed_at(self, commit: str, committed_at: float) -> float:
        """When the commit reached the branch: the loose ref's mtime, if it names *commit*.

        The commit time has one-second resolution and may be older than the push that
        brought it; the ref file is rewritten at the moment the branch moves.
        """
        ref = self.repo / ".git" / "refs" / "heads" / self.branch
        try:
            if ref.read_text().strip() == commit:
                return max(committed_at, ref.stat().st_mtime)
        except OSError:
            pass
        return committed_at

    def _act(
        self,
        decisions: list[Decision],
        snapshot: Snapshot,
        report: PassReport,
        woke_at: float | None,
    ) -> None:
        """Audit, enqueue and record the decisions, a batch at a time.

        Each batch is audited (one append for all its decisions) before any of its jobs is
        enqueued, so no job exists without its record; then the enqueue outcomes are
        audited together and the states written in one round trip. Batching the audit
        appends is what makes a 1,000-trigger commit quick.
        """
        for start in range(0, len(decisions), _BATCH):
            if self.cancelled():
                return  # stopping: the rest waits for the next pass
            batch = decisions[start : start + _BATCH]
            self.audit.record_many([self._announce(decision) for decision in batch])
            accepted = [decision for decision in batch if decision.outcome is Outcome.ACCEPTED]
            self.audit.record_many(self._enqueue(accepted, snapshot, report, woke_at))
            for decision in batch:
                report.counts[decision.outcome] = report.counts.get(decision.outcome, 0) + 1
            self.store.record(batch, snapshot.commit)

    def _announce(self, decision: Decision) -> tuple[str, dict[str, Any]]:
        """Count one decision and return its audit event (accepted, pending or rejected)."""
        self.metrics.triggers.labels("seen", "").inc()
        self.metrics.triggers.labels(decision.outcome.value, decision.rule).inc()
        if decision.outcome is Outcome.REJECTED:
            log.warning(
                "trigger.rejected", path=decision.path, rule=decision.rule, reason=decision.reason
            )
        return f"trigger.{decision.outcome.value}", {
            **_identity(decision),
            "outcome": decision.outcome.value,
            "rule": decision.rule,
            "reason": decision.reason,
            "path": decision.path,
            "blob": decision.blob,
        }

    def _enqueue(
        self,
        accepted: list[Decision],
        snapshot: Snapshot,
        report: PassReport,
        woke_at: float | None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """Enqueue the accepted triggers together; returns the audit events saying how."""
        requests = [job_request(decision, snapshot) for decision in accepted]
        jobs = enqueue_triggers(self.queue, requests, timeout=int(self.job_timeout))
        events = []
        for decision, request, job in zip(accepted, requests, jobs, strict=True):
            identity = {**_identity(decision), "job_id": decision.trigger_id, "path": decision.path}
            if job is None:
                report.duplicates.append(decision.trigger_id)
                self.metrics.enqueued.labels("duplicate").inc()
                events.append(("trigger.duplicate", {**identity, "outcome": "duplicate"}))
                continue
            self._observe_latency(request, woke_at)
            report.enqueued.append(decision.trigger_id)
            self.metrics.enqueued.labels("enqueued").inc()
            events.append(("trigger.enqueued", {**identity, "outcome": "enqueued"}))
        return events

    def _observe_latency(self, request: dict[str, Any], woke_at: float | None) -> None:
        now = time.time()
        self.metrics.commit_to_enqueue.observe(max(0.0, now - request["committed_at"]))
        if woke_at is not None:
            self.metrics.event_to_enqueue.observe(max(0.0, now - woke_at))


def _identity(decision: Decision) -> dict[str, Any]:
    return {
        "trigger_id": decision.trigger_id,
        "sha": decision.sha,
        "environment": decision.target or None,
    }


def job_request(decision: Decision, snapshot: Snapshot) -> dict[str, Any]:
    """The request dict ``workers.jobs.run_trigger`` receives (the shared contract)."""
    trigger = decision.trigger
    assert trigger is not None and decision.sha is not None
    return {
        "trigger_id": decision.trigger_id,
        "path": decision.path,
        "blob": decision.blob,
        "sha": decision.sha,
        "target": decision.target,
        "action": trigger.action.type.value,
        "to_revision": trigger.action.to_revision,
        "repo": os.fspath(snapshot.repo),
        "branch": snapshot.branch,
        "commit": snapshot.commit,
        "committed_at": snapshot.committed_at,
        "enqueued_at": time.time(),
    }
