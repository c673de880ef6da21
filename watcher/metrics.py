"""The watcher's Prometheus metrics, in a registry of its own.

Each :class:`WatcherMetrics` owns a registry, so two watchers in one process (tests do
this) never collide on metric names, and ``/metrics`` shows exactly one watcher.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency goals are tens of milliseconds; a poll-based tool is minutes. Cover both.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180)
_RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class WatcherMetrics:
    """Counters, histograms and gauges of one watcher process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.triggers = Counter(
            "monkeytown_watcher_triggers_total",
            "Trigger versions by outcome (seen, accepted, pending, rejected) and rule.",
            ["outcome", "rule"],
            registry=self.registry,
        )
        self.enqueued = Counter(
            "monkeytown_watcher_enqueued_total",
            "Jobs put on the deployments queue (duplicate: already there).",
            ["result"],
            registry=self.registry,
        )
        self.event_to_enqueue = Histogram(
            "monkeytown_watcher_event_to_enqueue_seconds",
            "From the file-system event that woke the watcher to the job on the queue.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_to_enqueue = Histogram(
            "monkeytown_watcher_commit_to_enqueue_seconds",
            "From the branch ref update (or commit time) to the job on the queue.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.reconcile = Histogram(
            "monkeytown_watcher_reconcile_seconds",
            "Duration of one reconcile pass over the trigger folder.",
            ["reason"],
            buckets=_RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "monkeytown_watcher_reconcile_errors_total",
            "Reconcile passes that failed (git or Redis unusable); retried on the next signal.",
            registry=self.registry,
        )
        self.leader = Gauge(
            "monkeytown_watcher_lease_leader",
            "1 while this watcher holds the watcher lease and enqueues, else 0.",
            registry=self.registry,
        )
        self.webhooks = Counter(
            "monkeytown_watcher_webhook_requests_total",
            "Push webhook requests by HTTP status answered.",
            ["status"],
            registry=self.registry,
        )
        self.fetches = Counter(
            "monkeytown_watcher_fetches_total",
            "git fetch + fast-forward attempts by result.",
            ["result"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))
