"""From a committed trigger to a deployed environment: the real watcher, then the worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rq.job import Job, JobStatus

from triggers import Environment

from .conftest import ROOT, Configure, DeployRepo, SimCluster, events, image, live_image

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_watcher_enqueues_and_worker_command_deploys(
    deploy_repo: DeployRepo,
    sim: SimCluster,
    configure: Configure,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """`watch --once` enqueues a committed staging trigger; `worker --burst` deploys it."""
    config = configure()
    new = deploy_repo.release("v2")
    request = deploy_repo.trigger("staging", new)
    cli = [BIN / "monkeytown-deploy", "--config", str(config)]

    subprocess.run([*cli, "watch", "--once", "--repo", str(deploy_repo.path)],
                   check=True, capture_output=True, cwd=ROOT, timeout=60)  # fmt: skip
    subprocess.run([*cli, "worker", "--burst"],
                   check=True, capture_output=True, cwd=ROOT, timeout=120)  # fmt: skip

    job = Job.fetch(request["trigger_id"], connection=redis_client)
    assert job.get_status() == JobStatus.FINISHED
    assert job.meta["checkpoints"][-1] == "staging:done"
    for environment in (Environment.DEVELOPMENT, Environment.STAGING):
        assert live_image(sim, environment) == image("web", new)
    assert sim.deployment(Environment.PRODUCTION) is None
    audit = tmp_path / "audit.jsonl"
    assert events(audit, "trigger.enqueued", trigger_id=request["trigger_id"])
    assert events(audit, "job.succeeded", trigger_id=request["trigger_id"])
    assert (tmp_path / "state" / "metrics").is_dir()  # PROMETHEUS_MULTIPROC_DIR
