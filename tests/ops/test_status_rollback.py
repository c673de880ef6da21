"""`status` and `rollback` against the real Redis-compatible server and real rq workers."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rq import Queue
from rq.job import Job, JobStatus

from monkeytown_deploy.audit import STREAM
from monkeytown_deploy.cli import main
from monkeytown_deploy.keys import QUEUE, key
from monkeytown_deploy.lease import Lease
from tests.ops.conftest import records

ROOT = Path(__file__).parents[2]
RQ = str(Path(sys.executable).with_name("rq"))
TRIGGER = "trigger-" + "b" * 32
SHA = "abc123def4567890abc123def4567890abc12345"


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every command here keeps its state (and audit log) in the test's folder."""
    state = tmp_path / "state"
    monkeypatch.setenv("MONKEYTOWN_DEPLOY_STATE_DIR", str(state))
    monkeypatch.delenv("MONKEYTOWN_DEPLOY_CONFIG", raising=False)
    return state


def burst_worker(url: str) -> None:
    """Run the real `rq worker` until the queue is empty."""
    subprocess.run(
        [RQ, "worker", QUEUE, "--burst", "--url", url, "--path", str(ROOT)],
        cwd=ROOT, check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def status_json(runner: CliRunner, url: str) -> dict[str, object]:
    result = runner.invoke(main, ["status", "--json", "--redis-url", url])
    assert result.exit_code == 0, result.output
    document: dict[str, object] = json.loads(result.output)
    return document


@pytest.mark.slow
def test_status_names_the_requeue_command_and_it_reruns_the_job(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, runner: CliRunner
) -> None:
    """A failed job is listed with its reason and an rq command that really re-runs it."""
    marker = tmp_path / "runs"
    Queue(QUEUE, connection=redis_client).enqueue(
        "tests.ops.jobs.fail_first_time", str(marker), job_id=TRIGGER,
        meta={"target": "production", "sha": SHA, "trigger_id": TRIGGER},
    )  # fmt: skip
    burst_worker(redis_url)

    failed = status_json(runner, redis_url)["failed"]
    assert isinstance(failed, list) and len(failed) == 1
    assert failed[0]["job_id"] == TRIGGER
    assert failed[0]["failure_reason"].startswith("analysis failed: error_rate 0.05")
    command = f"rq requeue --queue deployments --url {redis_url} {TRIGGER}"
    assert failed[0]["requeue"] == command
    text = runner.invoke(main, ["status", "--redis-url", redis_url]).output
    assert command in text and "analysis failed" in text

    subprocess.run([RQ, *shlex.split(command)[1:]], cwd=ROOT, check=True, capture_output=True)
    burst_worker(redis_url)
    assert marker.read_text() == "2"
    assert Job.fetch(TRIGGER, connection=redis_client).get_status() == JobStatus.FINISHED
    assert status_json(runner, redis_url)["failed"] == []


def test_status_shows_a_running_canary(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, runner: CliRunner
) -> None:
    """A running job shows its stage, step and canary weight from job.meta."""
    release = tmp_path / "release"
    Queue(QUEUE, connection=redis_client).enqueue(
        "tests.ops.jobs.canary_until", str(release), job_id=TRIGGER, meta={"target": "production"}
    )
    worker = subprocess.Popen(
        [RQ, "worker", QUEUE, "--burst", "--url", redis_url, "--path", str(ROOT)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        running: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            running = status_json(runner, redis_url)["running"]  # type: ignore[assignment]
            if running and running[0].get("canary_weight") == 25:
                break
            time.sleep(0.1)
        assert running and running[0]["job_id"] == TRIGGER
        assert (running[0]["stage"], running[0]["step"]) == ("production", "canary")
        assert (
            "production/canary  canary 25%"
            in runner.invoke(main, ["status", "--redis-url", redis_url]).output
        )
    finally:
        release.touch()
        worker.wait(timeout=60)


def test_status_shows_environments_and_lease_holders(
    redis_url: str, redis_client: redis.Redis, runner: CliRunner
) -> None:
    """The SHA each environment runs and the watcher lease holder come from Redis."""
    redis_client.hset(
        key("env", "staging"),
        mapping={"sha": SHA, "trigger_id": TRIGGER, "revision": "7", "updated_at": "1"},
    )
    Lease(redis_client, "watcher", owner="watcher@host:42:abc123").acquire()

    document = status_json(runner, redis_url)
    assert document["environments"]["staging"]["sha"] == SHA  # type: ignore[index]
    assert document["leases"]["watcher"] == "watcher@host:42:abc123"  # type: ignore[index]
    assert document["depth"] == 0
    text = runner.invoke(main, ["status", "--redis-url", redis_url]).output
    assert "Watcher watcher@host:42:abc123" in text
    assert f"staging      sha {SHA}" in text


def test_status_without_any_redis_says_where_it_looked(state_dir: Path, runner: CliRunner) -> None:
    """With no URL and no embedded server, status fails naming the state folder."""
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 1
    assert str(state_dir) in result.output and "--redis-url" in result.output


def test_rollback_enqueues_an_audited_job(
    state_dir: Path, redis_url: str, redis_client: redis.Redis, runner: CliRunner
) -> None:
    """`rollback ENV --to-revision N` enqueues run_rollback and audits the operator."""
    result = runner.invoke(
        main, ["rollback", "production", "--to-revision", "3", "--redis-url", redis_url]
    )
    assert result.exit_code == 0, result.output

    queue = Queue(QUEUE, connection=redis_client)
    [job_id] = queue.get_job_ids()
    assert job_id.startswith("rollback-production-")
    job = Job.fetch(job_id, connection=redis_client)
    assert job.func_name == "workers.jobs.run_rollback"
    request = job.args[0]
    assert request["environment"] == "production" and request["to_revision"] == 3
    assert request["actor"].startswith("user:")

    [entry] = records(state_dir / "audit.jsonl")
    assert entry["event"] == "operator.rollback"
    assert (entry["actor"], entry["job_id"]) == (request["actor"], job_id)
    assert entry["environment"] == "production" and entry["to_revision"] == 3
    assert redis_client.xlen(STREAM) == 1
