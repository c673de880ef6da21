"""One deploy per environment at a time, superseding, and resuming after a killed worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from monkeytown_deploy.keys import QUEUE, key
from monkeytown_deploy.queueing import enqueue_trigger
from triggers import Environment
from workers.jobs import run_trigger

from .conftest import (
    ROOT,
    STABLE_WEB,
    Configure,
    DeployRepo,
    SimCluster,
    audit_records,
    events,
    image,
    live_image,
    seed,
)

PROD = Environment.PRODUCTION
BIN = Path(sys.executable).parent


def enqueue(client: redis.Redis, request: dict[str, Any]) -> Job:
    """Enqueue as the watcher does: by name, job id = trigger id, unique, indexed by target."""
    return enqueue_trigger(Queue(QUEUE, connection=client), request, timeout=600)


def test_two_production_triggers_run_one_at_a_time(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure, tmp_path: Path
) -> None:
    """Two production jobs started together hold the production lease one after the other."""
    configure()
    seed(deploy_repo, sim, PROD, deploy_repo.releases[0])
    first = deploy_repo.trigger("production", deploy_repo.release("v2"))
    second = deploy_repo.trigger("production", deploy_repo.release("v3"))
    outcomes: dict[str, Any] = {}

    def run(request: dict[str, Any]) -> None:
        try:
            outcomes[request["trigger_id"]] = run_trigger(request)
        except Exception as exc:  # reported by the assertion below
            outcomes[request["trigger_id"]] = exc

    threads = [threading.Thread(target=run, args=(r,)) for r in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(isinstance(o, dict) and "deployed" in o for o in outcomes.values()), outcomes
    held = []
    for request in (first, second):
        job = request["trigger_id"]
        acquired = events(
            tmp_path / "audit.jsonl", "lease.acquired", job_id=job, environment="production"
        )
        released = events(
            tmp_path / "audit.jsonl", "lease.released", job_id=job, environment="production"
        )
        held.append((acquired[0]["seq"], released[0]["seq"]))
    (_, first_end), (second_start, _) = sorted(held)
    assert first_end < second_start, f"production leases overlapped: {held}"
    assert events(tmp_path / "audit.jsonl", "lease.waiting", environment="production")


def test_older_queued_trigger_is_superseded(
    deploy_repo: DeployRepo,
    sim: SimCluster,
    configure: Configure,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """An older trigger steps aside when a newer one for the same target is queued."""
    configure()
    older = deploy_repo.trigger("production", deploy_repo.release("v2"))
    time.sleep(1.1)  # commit times have one-second resolution
    newer = deploy_repo.trigger("production", deploy_repo.release("v3"))
    enqueue(redis_client, newer)

    result = run_trigger(older)

    assert result["superseded"] is True
    assert newer["trigger_id"] in result["reason"]
    superseded = events(tmp_path / "audit.jsonl", "job.superseded")
    assert [r["trigger_id"] for r in superseded] == [older["trigger_id"]]
    state = redis_client.hget(key("trigger", older["trigger_id"]), "state")
    assert state == b"superseded"
    assert sim.server.requests(writes=True) == []


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and every process under it, as systemd's control-group kill does.

    The RQ work-horse moves into its own process group, so killing the worker's group
    alone would leave it running: the reason the units use KillMode=control-group.
    """
    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for member in tree:
        os.killpg(member.pid, signal.SIGKILL) if member.pid == process.pid else member.kill()
    process.wait()
    psutil.wait_procs(tree[1:], timeout=5)


def _wait_for_checkpoint(client: redis.Redis, job_id: str, checkpoint: str) -> None:
    deadline = time.monotonic() + 60
    while checkpoint.encode() not in (client.hget(key("job", job_id), "checkpoints") or b""):
        assert time.monotonic() < deadline, f"{job_id} never reached {checkpoint}"
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint_after_requeue(  # noqa: PLR0917 -- fixtures
    deploy_repo: DeployRepo,
    sim: SimCluster,
    configure: Configure,
    redis_client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """A worker killed mid-canary, then `rq requeue`, resumes and promotes exactly once."""
    configure(canary={"analysis_interval": 2.0})
    old = deploy_repo.releases[0]
    seed(deploy_repo, sim, PROD, old)
    new = deploy_repo.release("v2")
    request = deploy_repo.trigger("production", new)
    job_id = request["trigger_id"]
    since = time.time()
    enqueue(redis_client, request)

    worker = subprocess.Popen(
        [BIN / "monkeytown-deploy", "worker", "--burst"], cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_checkpoint(redis_client, job_id, "production:step-10")
    finally:
        _kill_tree(worker)
    assert sim.deployment(PROD, "monkeytown-web-canary") is not None  # killed mid-canary

    queue = Queue(QUEUE, connection=redis_client)
    StartedJobRegistry(queue=queue).cleanup(time.time() + 3600)  # what RQ does for a dead horse
    subprocess.run(
        [BIN / "rq", "requeue", "--queue", QUEUE, "--url", redis_url, job_id],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    subprocess.run(
        [BIN / "rq", "worker", "--burst", "--url", redis_url, QUEUE],
        check=True, capture_output=True, cwd=ROOT, timeout=120,
    )  # fmt: skip

    job = Job.fetch(job_id, connection=redis_client)
    assert job.get_status() == JobStatus.FINISHED
    assert live_image(sim, PROD) == image("web", new)
    assert sim.deployment(PROD, "monkeytown-web-canary") is None
    promotions = [r for r in sim.writes(STABLE_WEB, since) if r.method in ("PATCH", "PUT")]
    assert len(promotions) == 1
    audit = tmp_path / "audit.jsonl"
    assert len(events(audit, "promote")) == 1
    assert [r["weight"] for r in events(audit, "canary.step")].count(10) == 1
    resumed = events(audit, "job.resumed")
    assert resumed and "production:step-10" in resumed[0]["checkpoints"]
    assert job.meta["checkpoints"][-1] == "production:done"
    assert [r["event"] for r in audit_records(audit)][-1] == "job.succeeded"
