"""Prometheus metrics of the workers, safe across forking RQ work-horses.

Each deployment job runs in a forked work-horse, so counters live in prometheus_client's
multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set (``monkeytown-deploy worker``
sets it under the state folder); :func:`collect` merges every process's files.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

DEPLOYMENTS = Counter(
    "monkeytown_deploy_deployments_total",
    "Deployment jobs by environment and outcome (started, succeeded, failed, rolled_back).",
    ["environment", "outcome"],
)
STAGE_SECONDS = Histogram(
    "monkeytown_deploy_stage_seconds",
    "Time a stage took, waits included.",
    ["environment", "stage"],
    buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800),
)
CANARY_WEIGHT = Gauge(
    "monkeytown_deploy_canary_weight",
    "Current canary traffic weight in percent (0 when no canary runs).",
    ["environment"],
    multiprocess_mode="livemax",
)
ANALYSIS_VERDICTS = Counter(
    "monkeytown_deploy_analysis_verdicts_total",
    "Canary analysis samples by verdict (pass, fail, no_data).",
    ["environment", "verdict"],
)
LEASE_WAIT_SECONDS = Histogram(
    "monkeytown_deploy_lease_wait_seconds",
    "Time a job waited for its environment lease.",
    ["environment"],
    buckets=(0.01, 0.1, 1, 5, 30, 60, 300, 900, 3600),
)


def collect() -> bytes:
    """The exposition text of every worker process (multiprocess) or of this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(registry))
    return bytes(generate_latest())
