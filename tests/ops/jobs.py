"""Job functions the operator tests put on the real deployments queue."""

from __future__ import annotations

import time
from pathlib import Path

from rq import get_current_job


def fail_first_time(marker: str) -> str:
    """Fail like a deployment whose analysis failed; succeed when re-run."""
    path = Path(marker)
    runs = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(runs))
    if runs == 1:
        job = get_current_job()
        assert job is not None
        job.meta["failure_reason"] = "analysis failed: error_rate 0.05 > 0.01 at canary 25%"
        job.save_meta()
        raise RuntimeError("canary analysis failed")
    return f"run {runs}"


def canary_until(release: str) -> None:
    """Report a canary step in job.meta, as a worker does, and hold until released."""
    job = get_current_job()
    assert job is not None
    job.meta.update(stage="production", step="canary", canary_weight=25)
    job.save_meta()
    deadline = time.monotonic() + 60
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def count_deployment(environment: str) -> None:
    """Count a started and a succeeded deployment, as a work-horse does."""
    from monkeytown_deploy import metrics

    metrics.DEPLOYMENTS.labels(environment, "started").inc()
    metrics.DEPLOYMENTS.labels(environment, "succeeded").inc()
    metrics.STAGE_SECONDS.labels(environment, "canary").observe(12.5)
