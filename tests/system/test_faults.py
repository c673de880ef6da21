"""Breaking the running system on purpose; each test states the invariant it keeps.

The invariants, in the words of the issue: no lost trigger, no duplicate deploy,
production never left with a canary weight above 0 and no job owning it, and an intact
audit chain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from rq import Queue
from rq.registry import StartedJobRegistry

from tests.system.harness import BIN, System, git, running_system, wait_for
from triggers import TRIGGER_DIR, trigger_id

pytestmark = pytest.mark.slow


def expected_trigger_ids(system: System) -> set[str]:
    """The identity of every trigger file on origin's main, computed from git alone."""
    listing = git(system.origin, "ls-tree", "main", f"{TRIGGER_DIR}/")
    ids = set()
    for line in listing.splitlines():
        meta, path = line.split("\t")
        ids.add(trigger_id(path, meta.split()[2]))
    return ids


def ended_once(system: System, ids: set[str]) -> None:
    """Every trigger in *ids* ended exactly once (deployed, or superseded by a newer one)."""
    ended = Counter(
        record["trigger_id"]
        for record in system.records()
        if record["event"] in ("job.succeeded", "job.superseded")
    )
    assert set(ended) == ids
    assert all(count == 1 for count in ended.values()), ended
    deployed = [r["sha"] for r in system.events("job.succeeded")]
    assert len(deployed) == len(set(deployed)), "a SHA was deployed twice"


def no_orphaned_canary(system: System) -> None:
    """Production has no canary traffic unless a running job owns the canary."""
    if system.canary_weight() > 0:
        assert system.job_ids()["started"], "canary weight above 0 with no job running"


def test_redis_killed_and_restarted_mid_stream_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Invariant: with AOF, every trigger committed around a Redis crash deploys exactly once."""
    with running_system(tmp_path) as system:
        for index in range(5):
            system.agent.commit_trigger(
                f"before-{index}", "development", system.new_release(f"b{index}")
            )
        wait_for(lambda: len(system.events("trigger.enqueued")) >= 3, 30, "a few enqueues")

        assert system.redis_server is not None
        system.redis_server.kill()
        for index in range(5):  # the agent keeps committing while Redis is down
            system.agent.commit_trigger(
                f"during-{index}", "development", system.new_release(f"d{index}")
            )
        time.sleep(1)
        system.redis_server.start()

        expected = expected_trigger_ids(system)
        assert len(expected) == 10
        wait_for(lambda: _ended(system) >= 10, 120, "all ten triggers to end")
        time.sleep(3)  # a duplicate would show up in this time
        ended_once(system, expected)
        assert system.audit_intact()


def _ended(system: System) -> int:
    return len(system.events("job.succeeded")) + len(system.events("job.superseded"))


def test_redis_restarted_empty_rebuilds_from_git_and_redeploys_nothing(tmp_path: Path) -> None:
    """Invariant: after Redis loses everything, no SHA an environment runs is deployed again."""
    with running_system(tmp_path) as system:
        sha = system.new_release("1.0")
        system.agent.commit_trigger("only", "staging", sha)
        wait_for(lambda: system.events("job.succeeded"), 60, "the staging deploy")
        writes_before = len(system.kube_control("/_sim/requests?writes=1")["items"])

        assert system.redis_server is not None
        system.redis_server.stop()
        shutil.rmtree(system.redis_server.data_dir)
        system.redis_server.start()  # same port, no data

        wait_for(lambda: len(system.events("trigger.accepted")) >= 2, 30, "the watcher to rebuild")
        wait_for(lambda: not any(system.job_ids().values()) or _settled(system), 60, "quiet")
        writes_after = system.kube_control("/_sim/requests?writes=1")["items"][writes_before:]
        deployment_writes = [w for w in writes_after if "/deployments/" in w["path"]]
        assert deployment_writes == [], deployment_writes
        assert system.image_of("staging").endswith(f":{sha}")
        assert system.audit_intact()


def _settled(system: System) -> bool:
    jobs = system.job_ids()
    return not jobs["queued"] and not jobs["started"]


def test_a_watcher_killed_during_a_burst_of_commits_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    """Invariant: with the leading watcher SIGKILLed mid-burst, jobs equal the triggers."""
    with running_system(tmp_path, workers=1) as system:
        for index in range(30):
            system.agent.commit_trigger(f"burst-{index}", "development", system.release_sha)
            if index == 10:
                leader = system.leader()
                assert leader is not None
                victim = next(
                    service for name, service in system.services.items()
                    if name.startswith("watcher") and service.process is not None
                    and str(service.process.pid) in leader
                )  # fmt: skip
                victim.kill()
        expected = expected_trigger_ids(system)
        wait_for(
            lambda: {r["trigger_id"] for r in system.events("trigger.enqueued")} >= expected,
            60,
            "the standby watcher to enqueue every trigger",
        )
        enqueued = Counter(r["trigger_id"] for r in system.events("trigger.enqueued"))
        assert set(enqueued) == expected
        assert all(count == 1 for count in enqueued.values()), enqueued
        jobs = system.job_ids()
        assert jobs["queued"] | jobs["started"] | jobs["finished"] | jobs["failed"] == expected
        assert system.audit_intact()


def test_a_worker_killed_mid_canary_resumes_after_rq_requeue(tmp_path: Path) -> None:
    """Invariant: a job killed mid-canary and requeued promotes exactly once, no orphan canary."""
    with running_system(tmp_path, canary_interval=2.0) as system:
        sha = system.new_release("canary")
        system.agent.propose_and_merge("canary", "production", sha)
        wait_for(lambda: system.canary_weight() > 0, 90, "the canary to take traffic")

        for name in ("worker-0", "worker-1"):  # the whole tree, work-horses included
            system.services[name].kill()
        job_id = next(iter(system.job_ids()["started"]))
        with system.client() as client:
            # What RQ does for a horse whose heartbeat stopped, without waiting for it.
            StartedJobRegistry(queue=Queue("deployments", connection=client)).cleanup(
                time.time() + 3600
            )
        assert job_id in system.job_ids()["failed"]

        requeue = [str(BIN / "rq"), "requeue", "--queue", "deployments", "--url", system.redis_url, job_id]  # fmt: skip
        subprocess.run(requeue, check=True, capture_output=True)  # the restarted workers run it

        wait_for(lambda: system.events("job.succeeded"), 120, "the requeued job to finish")
        assert len(system.events("promote")) == 1
        assert system.image_of("production").endswith(f":{sha}")
        assert system.canary_weight() == 0
        assert system.audit_intact()


def test_kubernetes_api_failing_for_30_seconds_is_ridden_out(tmp_path: Path) -> None:
    """Invariant: 30 s of API 500s and timeouts delay a deploy but neither lose nor repeat it."""
    with running_system(tmp_path, workers=1) as system:
        system.kube_control(
            "/_sim/faults", {"kind": "error", "status": 500, "path": "/apis/", "seconds": 15}
        )
        system.kube_control(
            "/_sim/faults", {"kind": "delay", "delay": 12, "path": "/apis/", "seconds": 30}
        )
        started = time.monotonic()
        sha = system.new_release("outage")
        system.agent.commit_trigger("outage", "staging", sha)

        outcome = wait_for(
            lambda: system.events("job.succeeded") or system.events("job.failed"),
            240,
            "the job to end",
        )
        assert outcome[0]["event"] == "job.succeeded", outcome
        assert time.monotonic() - started >= 15  # it really waited the outage out
        assert system.image_of("staging").endswith(f":{sha}")
        assert system.audit_intact()


def test_metrics_endpoint_down_during_analysis_fails_closed_and_rolls_back(
    tmp_path: Path,
) -> None:
    """Invariant: no metrics in production is never a pass: rolled back, weight 0."""
    with running_system(tmp_path, workers=1) as system:
        before = system.image_of("production") if _exists(system) else None
        system.set_app("production", metrics_down="503")
        sha = system.new_release("blind")
        system.agent.propose_and_merge("blind", "production", sha)

        failed = wait_for(lambda: system.events("job.failed"), 120, "the job to fail closed")
        assert "canary analysis failed at weight 10%" in failed[0]["reason"]
        assert not system.events("promote")
        assert system.events("rollback.completed")
        assert system.canary_weight() == 0
        if before is not None:
            assert system.image_of("production") == before
        no_orphaned_canary(system)
        assert system.audit_intact()


def _exists(system: System) -> bool:
    try:
        system.image_of("production")
    except urllib.error.HTTPError:
        return False
    return True


def test_git_remote_unreachable_keeps_serving_reports_not_ready_and_catches_up(
    tmp_path: Path,
) -> None:
    """Invariant: while origin is gone nothing is lost; /ready says so; afterwards it catches up."""
    with running_system(tmp_path, watchers=1, workers=1) as system:
        port = system.services["watcher-0"].port  # type: ignore[attr-defined]
        hidden = system.origin.with_name("origin-away.git")
        system.agent.commit_trigger("first", "development", system.release_sha)
        wait_for(lambda: system.events("job.succeeded"), 60, "the first deploy")

        system.origin.rename(hidden)
        wait_for(lambda: _ready(port) == 503, 30, "/ready to report the remote unreachable")
        assert _get(port, "/health") == 200  # still alive and serving

        system.origin = hidden  # the agent pushes to where origin really is
        git(system.agent.clone, "remote", "set-url", "origin", str(hidden))
        system.agent.commit_trigger("while-away", "development", system.release_sha)
        time.sleep(2)
        assert len(system.events("trigger.enqueued")) == 1  # not fetched: not seen

        hidden.rename(hidden.with_name("origin.git"))
        system.origin = hidden.with_name("origin.git")
        git(system.agent.clone, "remote", "set-url", "origin", str(system.origin))
        wait_for(lambda: _ready(port) == 200, 30, "/ready to recover")
        wait_for(lambda: len(system.events("job.succeeded")) == 2, 60, "the catch-up deploy")
        assert system.audit_intact()


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def _ready(port: int) -> int:
    return _get(port, "/ready")


def test_a_full_disk_for_the_audit_log_stops_deploys_until_there_is_room(tmp_path: Path) -> None:
    """Invariant: no deploy proceeds without its audit record; after room returns, it runs."""
    with running_system(tmp_path, watchers=1, workers=1) as system:
        system.agent.commit_trigger("warm-up", "development", system.release_sha)
        wait_for(lambda: system.events("job.succeeded"), 60, "the warm-up deploy")
        writes = len(system.kube_control("/_sim/requests?writes=1")["items"])

        real = system.audit_path.with_name("audit.real.jsonl")
        system.audit_path.rename(real)
        os.symlink("/dev/full", system.audit_path)  # every write: ENOSPC
        sha = system.new_release("full")
        system.agent.commit_trigger("disk-full", "development", sha)
        time.sleep(4)
        assert len(system.kube_control("/_sim/requests?writes=1")["items"]) == writes
        log = system.services["watcher-0"].log.read_text()
        assert "No space left on device" in log or "audit" in log.lower()

        system.audit_path.unlink()
        real.rename(system.audit_path)
        wait_for(
            lambda: system.image_of("development").endswith(f":{sha}"),
            60,
            "the deploy after room returns",
        )
        assert system.audit_intact()
