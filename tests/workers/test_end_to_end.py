"""From a committed trigger to a deployed environment: the real watcher, then the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from rq import Queue, Worker
from rq.job import Job, JobStatus

from monkeytown_deploy.keys import QUEUE
from monkeytown_deploy.redis_server import RedisServer, free_port
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


@pytest.mark.slow
def test_worker_command_outlives_a_redis_restart(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure, tmp_path: Path
) -> None:
    """`monkeytown-deploy worker` waits out a Redis restart and then runs the next job."""
    server = RedisServer(tmp_path / "redis").start()
    worker = None
    try:
        config = configure(redis_url=server.url)
        worker = subprocess.Popen(
            [BIN / "monkeytown-deploy", "--config", str(config), "worker"], cwd=ROOT,
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(server.url)
        _wait(lambda: Worker.count(connection=client) == 1, "the worker to register")
        server.kill()
        time.sleep(1.0)
        server.start()
        request = deploy_repo.trigger("development", deploy_repo.release("v2"))
        Queue(QUEUE, connection=client).enqueue(
            "workers.jobs.run_trigger", request, job_id=request["trigger_id"]
        )

        _wait(lambda: Job.fetch(request["trigger_id"], connection=client).is_finished, "the job")
        assert live_image(sim, Environment.DEVELOPMENT) == image("web", request["sha"])
        client.close()
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        server.stop()


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except redis.ConnectionError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_worker_listen_serves_health_and_metrics_of_its_work_horses(
    deploy_repo: DeployRepo, sim: SimCluster, configure: Configure, redis_url: str
) -> None:
    """`worker --listen` answers /health, and /metrics counts a job its work-horse ran."""
    port = free_port()
    config = configure()
    worker = subprocess.Popen(
        [BIN / "monkeytown-deploy", "--config", str(config), "worker", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    try:
        _wait(lambda: _http(port, "/health")[0] == 200, "the worker's /health")
        request = deploy_repo.trigger("development", deploy_repo.release("v3"))
        Queue(QUEUE, connection=client).enqueue(
            "workers.jobs.run_trigger", request, job_id=request["trigger_id"]
        )
        _wait(lambda: Job.fetch(request["trigger_id"], connection=client).is_finished, "the job")

        status, body = _http(port, "/metrics")
        assert status == 200
        assert (
            'monkeytown_deploy_deployments_total{environment="development",outcome="succeeded"} 1.0'
            in body
        )
    finally:
        client.close()
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""
