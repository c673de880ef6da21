"""The running watcher: inotify wake-ups, checkouts, the lease, HTTP endpoints, the webhook."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import redis

from monkeytown_deploy.redis_server import free_port
from tests.watcher.conftest import Checkout, job_ids, trigger_text, wait_for
from watcher.daemon import Watcher

SECRET = b"push-secret"
QUIET = 300.0  # a reconcile interval long enough that only an event can explain a job


def _request(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def test_commit_wakes_the_watcher_through_inotify(
    checkout: Checkout, run_watcher: Callable[..., Watcher], queue_client: redis.Redis
) -> None:
    """A commit is enqueued within a second although the timer would wait five minutes."""
    watcher = run_watcher(reconcile_interval=QUIET)
    wait_for(lambda: watcher.leader and watcher.last_report is not None, what="first pass")
    started = time.monotonic()
    checkout.add_trigger("deploy-fast.md")
    wait_for(lambda: len(job_ids(queue_client)) == 1, timeout=5, what="the job")
    assert time.monotonic() - started < 1.0


def test_a_ref_renamed_in_from_elsewhere_wakes_the_watcher(
    checkout: Checkout,
    run_watcher: Callable[..., Watcher],
    queue_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """A branch moved by a rename from outside the watched folders (a lone IN_MOVED_TO) wakes it."""
    watcher = run_watcher(reconcile_interval=QUIET)
    wait_for(lambda: watcher.leader and watcher.last_report is not None, what="first pass")
    checkout.write("deploy-moved.md", trigger_text("moved", checkout.base))
    checkout.git("add", "-A")
    tree = checkout.git("write-tree")
    commit = checkout.git("commit-tree", tree, "-p", checkout.head(), "-m", "trigger moved")
    staged = tmp_path / "main"
    staged.write_text(commit + "\n")

    staged.rename(checkout.path / ".git" / "refs" / "heads" / "main")

    wait_for(lambda: len(job_ids(queue_client)) == 1, timeout=5, what="the job")


def test_uncommitted_trigger_wakes_but_enqueues_nothing(
    checkout: Checkout, run_watcher: Callable[..., Watcher], queue_client: redis.Redis
) -> None:
    """Writing a trigger file without committing it never produces a job."""
    run_watcher(reconcile_interval=QUIET)
    checkout.write("deploy-draft.md", trigger_text("draft", checkout.base))
    time.sleep(0.5)
    assert job_ids(queue_client) == []


def test_checkout_that_deletes_the_folder_keeps_the_watch(
    checkout: Checkout, run_watcher: Callable[..., Watcher], queue_client: redis.Redis
) -> None:
    """After a checkout removes and restores the trigger folder, the next trigger is seen."""
    checkout.add_trigger("deploy-first.md")
    checkout.git("branch", "bare", "HEAD~1")
    watcher = run_watcher(reconcile_interval=QUIET)
    wait_for(lambda: len(job_ids(queue_client)) == 1, what="the first job")

    checkout.git("checkout", "-q", "bare")
    assert not checkout.folder.exists()
    time.sleep(0.2)
    checkout.git("checkout", "-q", "main")
    assert checkout.folder.exists()
    time.sleep(0.2)
    checkout.add_trigger("deploy-second.md")
    wait_for(lambda: len(job_ids(queue_client)) == 2, timeout=5, what="the second job")
    assert watcher.signal is not None and checkout.folder.resolve() in watcher.signal.watched


def test_standby_takes_over_when_the_leader_stops(
    checkout: Checkout, run_watcher: Callable[..., Watcher], queue_client: redis.Redis
) -> None:
    """Of two watchers only one leads, the other idles; when it goes, the other takes over."""
    first = run_watcher(reconcile_interval=QUIET)
    wait_for(lambda: first.leader, what="a leader")
    second = run_watcher(reconcile_interval=QUIET)
    time.sleep(0.3)
    assert not second.leader
    checkout.write("draft.md", "wakes both watchers\n")
    cpu = psutil.Process().cpu_times()
    time.sleep(1.0)
    spent = sum(psutil.Process().cpu_times()[:2]) - sum(cpu[:2])
    assert spent < 0.3, f"idle watchers used {spent:.2f} s of CPU in 1 s: a loop spins"
    checkout.add_trigger("deploy-a.md")
    wait_for(lambda: len(job_ids(queue_client)) == 1, what="the first job")

    first.stop()
    wait_for(lambda: second.leader, timeout=5, what="the standby to lead")
    checkout.add_trigger("deploy-b.md")
    wait_for(lambda: len(job_ids(queue_client)) == 2, timeout=5, what="the second job")


def test_stop_returns_quickly_and_releases_the_lease(
    checkout: Checkout, run_watcher: Callable[..., Watcher], queue_client: redis.Redis
) -> None:
    """stop() ends the loop well within five seconds and frees the lease for a successor."""
    watcher = run_watcher(reconcile_interval=QUIET)
    wait_for(lambda: watcher.leader, what="a leader")
    started = time.monotonic()
    watcher.stop()
    wait_for(lambda: watcher.lease.holder() is None, timeout=5, what="the lease release")
    assert time.monotonic() - started < 5


def test_health_ready_and_metrics(
    checkout: Checkout, run_watcher: Callable[..., Watcher], queue_client: redis.Redis
) -> None:
    """The HTTP endpoints answer, and /metrics counts the enqueued trigger and its latency."""
    listen = f"127.0.0.1:{free_port()}"
    watcher = run_watcher(listen=listen, reconcile_interval=QUIET)
    wait_for(lambda: watcher.leader, what="a leader")
    checkout.add_trigger("deploy-metrics.md")
    wait_for(lambda: len(job_ids(queue_client)) == 1, what="the job")

    assert _request(f"http://{listen}/health")[0] == 200
    status, body = _request(f"http://{listen}/ready")
    ready = json.loads(body)
    assert status == 200 and ready["git"] and ready["redis"] and ready["leader"]
    status, metrics = _request(f"http://{listen}/metrics")
    text = metrics.decode()
    assert (
        'monkeytown_watcher_triggers_total{outcome="accepted",rule="approval.trust-file"} 1.0'
        in text
    )
    assert "monkeytown_watcher_commit_to_enqueue_seconds_count 1.0" in text
    assert "monkeytown_watcher_event_to_enqueue_seconds_count 1.0" in text
    assert "monkeytown_watcher_lease_leader 1.0" in text


@pytest.fixture
def pushed_checkout(checkout: Checkout, tmp_path: Path) -> tuple[Checkout, Checkout]:
    """A bare remote, the watched checkout cloned from it, and an agent's clone to push from."""
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(checkout.path), str(remote)], check=True)
    checkout.git("remote", "add", "origin", str(remote))
    checkout.git("fetch", "-q", "origin")
    agent = Checkout(tmp_path / "agent")
    subprocess.run(["git", "clone", "-q", str(remote), str(agent.path)], check=True)
    agent.git("config", "user.name", "Agent")
    agent.git("config", "user.email", "agent@monkeytown.test")
    return checkout, agent


def test_webhook_rejects_bad_signatures_and_fetches_on_good_ones(
    pushed_checkout: tuple[Checkout, Checkout],
    run_watcher: Callable[..., Watcher],
    queue_client: redis.Redis,
) -> None:
    """A wrong or missing signature gets 401 and no fetch; a good one fetches and enqueues."""
    checkout, agent = pushed_checkout
    listen = f"127.0.0.1:{free_port()}"
    watcher = run_watcher(
        listen=listen, remote="origin", fetch_interval=QUIET, reconcile_interval=QUIET,
        webhook_secret=SECRET,
    )  # fmt: skip
    wait_for(lambda: watcher.leader and watcher.last_report is not None, what="first pass")
    agent.add_trigger("deploy-pushed.md")
    agent.git("push", "-q", "origin", "main")
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    hook = f"http://{listen}/hooks/git"

    assert _request(hook, body)[0] == 401
    wrong = "sha256=" + hmac.new(b"guess", body, hashlib.sha256).hexdigest()
    assert _request(hook, body, {"X-Hub-Signature-256": wrong})[0] == 401
    time.sleep(0.5)
    assert job_ids(queue_client) == []
    assert checkout.head() != agent.head()

    good = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert _request(hook, body, {"X-Hub-Signature-256": good})[0] == 202
    wait_for(lambda: len(job_ids(queue_client)) == 1, timeout=5, what="the pushed trigger's job")
    assert checkout.git("rev-parse", "main") == agent.head()


def test_fetch_interval_keeps_the_checkout_current(
    pushed_checkout: tuple[Checkout, Checkout],
    run_watcher: Callable[..., Watcher],
    queue_client: redis.Redis,
) -> None:
    """With --remote and a short fetch interval, a pushed trigger arrives without a webhook."""
    _, agent = pushed_checkout
    run_watcher(remote="origin", fetch_interval=0.2, reconcile_interval=QUIET)
    agent.add_trigger("deploy-polled.md")
    agent.git("push", "-q", "origin", "main")
    wait_for(lambda: len(job_ids(queue_client)) == 1, timeout=5, what="the fetched trigger's job")


def test_git_unusable_keeps_the_daemon_alive(
    checkout: Checkout, run_watcher: Callable[..., Watcher], queue_client: redis.Redis
) -> None:
    """When the branch vanishes the pass fails and is retried; the loop goes on."""
    watcher = run_watcher(reconcile_interval=0.2, branch="missing")
    wait_for(lambda: watcher.metrics.reconcile_errors._value.get() >= 1, what="a failed pass")
    checkout.git("branch", "missing")
    checkout.add_trigger("deploy-after.md")
    checkout.git("branch", "-f", "missing", "main")
    wait_for(lambda: len(job_ids(queue_client)) == 1, timeout=5, what="recovery")
