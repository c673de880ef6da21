"""What goes wrong during a deploy, and how the workers undo exactly what they changed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from kubesim.resources import INGRESSES
from monkeytown_deploy.keys import key
from triggers import Environment
from workers.jobs import DeploymentFailed, run_trigger

from .conftest import (
    STABLE_WEB,
    Configure,
    DeployRepo,
    SimCluster,
    events,
    git,
    image,
    live_image,
    seed,
)

PROD, STAGING = Environment.PRODUCTION, Environment.STAGING


def test_no_traffic_during_analysis_fails_closed(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure, tmp_path: Path
) -> None:
    """A canary window with too few requests is no data, which fails closed and rolls back."""
    configure()
    old = deploy_repo.releases[0]
    seed(deploy_repo, sim, PROD, old)
    sim.apps[PROD].set_metrics(requests=0)
    new = deploy_repo.release("v2")

    with pytest.raises(DeploymentFailed, match="fewer than min_requests 50"):
        run_trigger(deploy_repo.trigger("production", new))

    samples = events(tmp_path / "audit.jsonl", "analysis.sample")
    assert [s["verdict"] for s in samples] == ["no_data"]
    assert live_image(sim, PROD) == image("web", old)
    assert sim.deployment(PROD, "monkeytown-web-canary") is None
    assert sim.find(INGRESSES, PROD, "monkeytown-web-canary") is None


def test_gate_failure_after_promotion_restores_previous_revision(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure, tmp_path: Path
) -> None:
    """When production's health gate fails after promotion, stable goes back a revision."""
    configure()
    old = deploy_repo.releases[0]
    seed(deploy_repo, sim, PROD, old)
    before = sim.deployment(PROD)["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
    sim.apps[PROD].set_health("degraded", 503)
    new = deploy_repo.release("v2")

    with pytest.raises(DeploymentFailed, match="gate health failed in production"):
        run_trigger(deploy_repo.trigger("production", new))

    audit = tmp_path / "audit.jsonl"
    assert len(events(audit, "promote")) == 1
    assert live_image(sim, PROD) == image("web", old)
    assert live_image(sim, PROD, "monkeytown-event-stream") == image("event-stream", old)
    actions = events(audit, "rollback.completed")[0]["actions"]
    assert {a["action"] for a in actions} >= {f"monkeytown-web to revision {before}"}
    assert all(a["outcome"] == "done" for a in actions)
    assert live_image(sim, STAGING) == image("web", new)  # earlier stages passed and stay


def test_stuck_rollout_hits_progress_deadline_and_rolls_back(
    deploy_repo: DeployRepo,
    sim: SimCluster,
    configure: Configure,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """A Deployment that never becomes available fails on its deadline and is rolled back."""
    configure()
    old = deploy_repo.releases[0]
    seed(deploy_repo, sim, STAGING, old)
    sim.controller.set_stuck("monkeytown-web", namespace="monkeytown-staging")
    new = deploy_repo.release("v2")
    request = deploy_repo.trigger("staging", new)
    unstick = threading.Thread(target=_unstick_on_failure, args=(sim, redis_client, request))
    unstick.start()

    try:
        with pytest.raises(DeploymentFailed, match="ProgressDeadlineExceeded"):
            run_trigger(request)
    finally:
        unstick.join()

    assert live_image(sim, STAGING) == image("web", old)
    completed = events(tmp_path / "audit.jsonl", "rollback.completed")
    assert completed[0]["outcome"] == "done"


def _unstick_on_failure(sim: SimCluster, client: redis.Redis, request: dict[str, str]) -> None:
    """Heal the Deployment once the job has failed, so the rollback's own rollout finishes."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if client.hget(key("job", request["trigger_id"]), "failure_reason"):
            break
        time.sleep(0.02)
    sim.controller.set_stuck("monkeytown-web", False, namespace="monkeytown-staging")


def test_transient_api_faults_are_retried(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure, tmp_path: Path
) -> None:
    """Injected 500, 429, 409 and a reset connection are retried and the deploy finishes."""
    configure()
    seed(deploy_repo, sim, PROD, deploy_repo.releases[0])
    new = deploy_repo.release("v2")
    server = sim.server
    server.inject_fault(status=500, method="PATCH", path="deployments/monkeytown-web$", times=2)
    server.inject_fault(status=429, method="PATCH", path="ingresses/", times=1, retry_after=1)
    server.inject_fault(status=409, method="PATCH", path="configmaps/", times=1)
    server.inject_fault(
        kind="drop", method="GET", path="deployments/monkeytown-event-stream", times=1
    )

    result = run_trigger(deploy_repo.trigger("production", new))

    assert result["deployed"] == new
    assert live_image(sim, PROD) == image("web", new)
    faulted = {(r.status, r.fault) for r in server.requests() if r.fault}
    assert faulted == {(500, "error"), (429, "error"), (409, "error"), (0, "drop")}
    assert len(events(tmp_path / "audit.jsonl", "api.retry")) == 5


def test_api_outage_shorter_than_the_retry_window_is_ridden_out(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure
) -> None:
    """Every apps and networking API call failing for 3 s only delays a deploy."""
    configure(api_retry_seconds=10)
    new = deploy_repo.release("v2")
    sim.server.inject_fault(status=500, path="/apis/", seconds=3)
    started = time.monotonic()

    result = run_trigger(deploy_repo.trigger("development", new))

    assert result["deployed"] == new
    assert time.monotonic() - started >= 3
    assert live_image(sim, Environment.DEVELOPMENT) == image("web", new)


def test_persistent_api_fault_fails_and_rolls_back(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure, tmp_path: Path
) -> None:
    """A fault that never clears exhausts the retries, fails the job and rolls the canary back."""
    configure(api_retry_seconds=2)
    old = deploy_repo.releases[0]
    seed(deploy_repo, sim, PROD, old)
    new = deploy_repo.release("v2")
    since = time.time()
    sim.server.inject_fault(status=503, method="PATCH", path="ingresses/monkeytown-web-canary")

    with pytest.raises(DeploymentFailed, match="HTTP 503"):
        run_trigger(deploy_repo.trigger("production", new))

    assert live_image(sim, PROD) == image("web", old)
    assert not sim.writes(STABLE_WEB, since)
    assert sim.deployment(PROD, "monkeytown-web-canary") is None
    assert events(tmp_path / "audit.jsonl", "rollback.completed")


def test_explicit_rollback_to_a_named_revision(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure, tmp_path: Path
) -> None:
    """A trigger with Type: rollback and To-Revision: 1 puts revision 1 back."""
    configure()
    first = deploy_repo.releases[0]
    second, third = deploy_repo.release("v2"), deploy_repo.release("v3")
    for sha in (first, second, third):
        seed(deploy_repo, sim, STAGING, sha)
    assert live_image(sim, STAGING) == image("web", third)

    result = run_trigger(deploy_repo.trigger("staging", third, rollback_to=1))

    assert result["revisions"] == {"monkeytown-web": 1, "monkeytown-event-stream": 1}
    assert live_image(sim, STAGING) == image("web", first)
    assert live_image(sim, STAGING, "monkeytown-event-stream") == image("event-stream", first)
    applied = events(tmp_path / "audit.jsonl", "apply", rollback=True)
    assert {(a["deployment"], a["from_revision"], a["to_revision"]) for a in applied} == {
        ("monkeytown-web", 3, 1),
        ("monkeytown-event-stream", 3, 1),
    }


def test_operator_rollback_goes_to_the_previous_revision(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure
) -> None:
    """run_rollback without a revision returns the environment to the one before."""
    from workers.jobs import run_rollback

    configure()
    first, second = deploy_repo.releases[0], deploy_repo.release("v2")
    for sha in (first, second):
        seed(deploy_repo, sim, STAGING, sha)

    run_rollback({"environment": "staging", "to_revision": None, "actor": "user:maria"})

    assert live_image(sim, STAGING) == image("web", first)


def test_dry_run_records_the_plan_without_a_cluster(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure, tmp_path: Path
) -> None:
    """With dry_run the job renders every stage and records the plan; nothing reaches the API."""
    configure(dry_run=True)
    new = deploy_repo.release("v2")

    result = run_trigger(deploy_repo.trigger("production", new))

    plan = result["plan"]
    assert list(plan) == ["development", "staging", "production"]
    assert "Ingress/monkeytown-web-canary" in plan["production"]["objects"]
    assert plan["production"]["images"]["monkeytown-web"] == image("web", new)
    assert plan["production"]["canary_steps"] == [10, 25, 50]
    assert sim.server.requests() == []
    assert events(tmp_path / "audit.jsonl", "plan")[0]["plan"] == plan


def test_withdrawn_approval_stops_before_any_change(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure
) -> None:
    """A trigger whose file was changed to rejected after enqueueing is refused at re-check."""
    configure()
    new = deploy_repo.release("v2")
    request = deploy_repo.trigger("development", new, name="deploy-x")
    deploy_repo.trigger("development", new, name="deploy-x", status="rejected")

    with pytest.raises(DeploymentFailed, match="no longer approved"):
        run_trigger(request)

    assert sim.server.requests(writes=True) == []


def test_unmerged_sha_is_refused(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure
) -> None:
    """A SHA not reachable from the protected branch is refused before anything is applied."""
    configure()
    git(deploy_repo.path, "checkout", "-q", "-b", "feature")
    unmerged = deploy_repo.release("feature")
    git(deploy_repo.path, "checkout", "-q", "main")
    request = deploy_repo.trigger("development", unmerged)

    with pytest.raises(DeploymentFailed, match="no longer reachable from main"):
        run_trigger(request)

    assert sim.server.requests(writes=True) == []


def test_job_timeout_bounds_the_whole_job(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure, tmp_path: Path
) -> None:
    """A job that outlives job_timeout stops where it is and rolls back its canary."""
    configure(job_timeout=2, canary={"analysis_interval": 5.0})
    old = deploy_repo.releases[0]
    seed(deploy_repo, sim, PROD, old)

    with pytest.raises(DeploymentFailed, match="job timeout of 2s"):
        run_trigger(deploy_repo.trigger("production", deploy_repo.release("v2")))

    assert live_image(sim, PROD) == image("web", old)
    assert sim.deployment(PROD, "monkeytown-web-canary") is None
    assert events(tmp_path / "audit.jsonl", "rollback.completed")[0]["outcome"] == "done"
