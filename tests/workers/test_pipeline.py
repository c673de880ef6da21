"""End-to-end deploys through the simulated cluster: stages, canary, promotion, rollback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kubesim.resources import INGRESSES
from monkeytown_deploy.audit_cli import Progress
from triggers import Environment
from workers.jobs import DeploymentFailed, run_trigger

from .conftest import (
    STABLE_WEB,
    Configure,
    DeployRepo,
    SimCluster,
    Webhook,
    audit_records,
    events,
    image,
    live_image,
    seed,
)

PROD = Environment.PRODUCTION


def test_production_trigger_walks_every_stage_and_promotes(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure, tmp_path: Path
) -> None:
    """A production trigger goes development, staging, canary 10/25/50, then is promoted."""
    configure()
    old = deploy_repo.releases[0]
    seed(deploy_repo, sim, PROD, old)
    new = deploy_repo.release("v2")
    request = deploy_repo.trigger("production", new)

    result = run_trigger(request)

    assert result["deployed"] == new
    for env in Environment:
        assert live_image(sim, env) == image("web", new)
        assert live_image(sim, env, "monkeytown-event-stream") == image("event-stream", new)
    assert sim.deployment(PROD, "monkeytown-web-canary") is None
    assert sim.find(INGRESSES, PROD, "monkeytown-web-canary") is None
    audit = tmp_path / "audit.jsonl"
    stages = [r["environment"] for r in events(audit, "stage.completed")]
    assert stages == ["development", "staging", "production"]
    assert [r["weight"] for r in events(audit, "canary.step")] == [10, 25, 50]
    samples = events(audit, "analysis.sample")
    assert [(s["weight"], s["verdict"]) for s in samples] == [
        (10, "pass"),
        (25, "pass"),
        (50, "pass"),
    ]
    assert samples[0]["readings"][0]["error_rate"] == 0.0
    assert len(events(audit, "promote")) == 1
    assert events(audit, "job.succeeded")
    assert {r["gate"] for r in events(audit, "gate.passed", environment="production")} == {
        "health",
        "ready",
        "status",
    }
    assert all(r["duration_ms"] is not None for r in events(audit, "apply"))
    # The progress line an operator watching `up` or `audit tail -f` sees, from these records.
    line, shown = "", []
    for record in audit_records(audit):
        line = Progress.describe(record, line)
        shown += [line] if line and line not in shown else []
    assert "production: waiting for monkeytown-web to roll out" in shown
    assert "production: waiting for monkeytown-web-canary to roll out" in shown
    assert [s for s in shown if "canary at" in s] == [
        f"production: canary at {weight}%, analysing{sample}"
        for weight in (10, 25, 50)
        for sample in ("", " · sample 1")
    ]
    assert line == ""  # nothing left waiting once the job succeeded


def test_error_rate_at_second_step_rolls_back(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure, webhook: Webhook, tmp_path: Path
) -> None:
    """A 5% error rate at the 25% step rolls back: weight 0, canary gone, stable untouched."""
    configure()
    old = deploy_repo.releases[0]
    seed(deploy_repo, sim, PROD, old)
    sim.apps[PROD].add_rule("error_rate", 0.05, min_weight=25)
    new = deploy_repo.release("v2")
    since = time.time()

    with pytest.raises(DeploymentFailed, match=r"weight 25%.*error rate 0\.0500"):
        run_trigger(deploy_repo.trigger("production", new))

    assert live_image(sim, PROD) == image("web", old)
    assert not sim.writes(STABLE_WEB, since)
    assert sim.deployment(PROD, "monkeytown-web-canary") is None
    assert sim.find(INGRESSES, PROD, "monkeytown-web-canary") is None
    audit = tmp_path / "audit.jsonl"
    failed = events(audit, "job.failed")
    assert len(failed) == 1 and "error rate" in failed[0]["reason"]
    assert events(audit, "rollback.completed")[0]["outcome"] == "done"
    assert webhook.kinds().count("failed") == 1
    assert "succeeded" not in webhook.kinds()
