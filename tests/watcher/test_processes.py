"""The watcher as a real process: crashes at random moments, two of them, signals, --once."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from rq import Queue

from monkeytown_deploy.keys import QUEUE
from tests.watcher.conftest import Checkout, job_ids, trigger_text, wait_for
from triggers import TRIGGER_DIR, trigger_id

MARKER = "monkeytown-deploy:watcher:commit:main"


class Processes:
    """Starts ``python -m watcher`` processes and kills whatever is left at the end."""

    def __init__(self, checkout: Checkout, redis_url: str, state: Path) -> None:
        self.checkout = checkout
        self.redis_url = redis_url
        self.env = {**os.environ, "MONKEYTOWN_DEPLOY_STATE_DIR": str(state)}
        self.env.pop("MONKEYTOWN_DEPLOY_CONFIG", None)
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            self.command(*extra), env={**self.env, **(env or {})},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.running.append(process)
        return process

    def command(self, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "watcher", "--repo", str(self.checkout.path),
            "--redis-url", self.redis_url, "--reconcile-interval", "0.5", *extra,
        ]  # fmt: skip

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*extra),
            check=False,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def kill_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stderr is not None:
                process.stderr.close()


@pytest.fixture
def processes(checkout: Checkout, redis_url: str, tmp_path: Path) -> Iterator[Processes]:
    started = Processes(checkout, redis_url, tmp_path / "state")
    yield started
    started.kill_all()


def _approved_ids(checkout: Checkout) -> set[str]:
    """The trigger ids of every approved version ever committed on main."""
    out = checkout.git("log", "--format=", "--raw", "--no-abbrev", "main", "--", TRIGGER_DIR)
    ids = set()
    for line in out.splitlines():
        meta, _, path = line.partition("\t")
        blob = meta.split()[3]
        if set(blob) == {"0"}:
            continue  # a deletion
        content = checkout.git("cat-file", "-p", blob)
        if "Status: approved" in content:
            ids.add(trigger_id(path, blob))
    return ids


def _wait_for_jobs(
    client: redis.Redis, expected: set[str], process: subprocess.Popen[bytes], timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while set(job_ids(client)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    jobs = set(job_ids(client))
    if jobs != expected:
        process.kill()
        _, errors = process.communicate()
        pytest.fail(
            f"{len(expected - jobs)} approved triggers have no job, {len(jobs - expected)} jobs "
            f"are unexpected; the watcher said:\n{errors.decode()[-3000:]}"
        )


@pytest.mark.slow
def test_random_sigkills_during_300_commits_lose_and_repeat_nothing(
    checkout: Checkout, processes: Processes, queue_client: redis.Redis
) -> None:
    """SIGKILL at random moments during 300 commits: every approved trigger is queued once."""
    rng = random.Random(3)
    watcher = processes.start()
    wait_for(lambda: queue_client.exists(MARKER) == 1, what="the watcher's first pass")
    next_kill = time.monotonic() + rng.uniform(0.2, 1.5)
    kills = 0
    for number in range(300):
        status = rng.choice(["approved", "approved", "approved", "pending", "rejected"])
        name = f"deploy-{rng.randrange(120):03}.md"  # some files change more than once
        checkout.write(name, trigger_text(f"change {number}", checkout.base, status=status))
        checkout.commit(f"commit {number}")
        if time.monotonic() > next_kill:
            watcher.kill()
            watcher.wait()
            kills += 1
            watcher = processes.start()
            next_kill = time.monotonic() + rng.uniform(0.2, 1.5)
    assert kills >= 5, f"only {kills} kills: the stream was too quick to test anything"
    expected = _approved_ids(checkout)
    _wait_for_jobs(queue_client, expected, watcher)
    queue = Queue(QUEUE, connection=queue_client)
    assert len(queue.job_ids) == len(set(queue.job_ids)) == len(expected)


@pytest.mark.slow
def test_two_watcher_processes_one_killed_exactly_one_job_each(
    checkout: Checkout, processes: Processes, queue_client: redis.Redis
) -> None:
    """Two watchers share the lease; killing the leader mid-stream duplicates and loses nothing."""
    first = processes.start("--lease-ttl", "1")
    wait_for(lambda: queue_client.exists("monkeytown-deploy:lease:watcher") == 1, what="a leader")
    second = processes.start("--lease-ttl", "1")
    leader_pid = int(queue_client.get("monkeytown-deploy:lease:watcher").decode().split(":")[1])  # type: ignore[union-attr]
    for number in range(40):
        checkout.add_trigger(f"deploy-{number:03}.md")
        if number == 15:
            (first if first.pid == leader_pid else second).kill()
        time.sleep(0.05)
    expected = _approved_ids(checkout)
    wait_for(lambda: set(job_ids(queue_client)) == expected, timeout=20, what="every job")
    queue = Queue(QUEUE, connection=queue_client)
    assert len(queue.job_ids) == len(expected) == 40


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_within_five_seconds_with_systemd_notifications(
    checkout: Checkout, processes: Processes, tmp_path: Path, signum: signal.Signals
) -> None:
    """Under systemd the watcher sends READY=1 and WATCHDOG=1, and STOPPING=1 on the signal."""
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(20)
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
        watcher = processes.start(env=env)
        messages = b""
        while b"READY=1" not in messages or b"WATCHDOG=1" not in messages:
            messages += sock.recv(4096) + b"\n"
        started = time.monotonic()
        watcher.send_signal(signum)
        assert watcher.wait(5) == 0
        assert time.monotonic() - started < 5
        sock.settimeout(1)
        while b"STOPPING=1" not in messages:
            messages += sock.recv(4096) + b"\n"


def test_once_reconciles_and_exits_zero(
    checkout: Checkout, processes: Processes, queue_client: redis.Redis
) -> None:
    """--once enqueues the committed triggers and exits 0 with a one-line summary."""
    checkout.add_trigger("deploy-once.md")
    result = processes.run("--once")
    assert result.returncode == 0, result.stderr
    assert "1 enqueued" in result.stdout
    assert len(job_ids(queue_client)) == 1


def test_once_fails_clearly_when_redis_or_git_is_unusable(
    checkout: Checkout, processes: Processes, tmp_path: Path
) -> None:
    """--once exits non-zero naming Redis when it does not answer, and git for a bad branch."""
    processes.redis_url = "redis://127.0.0.1:1/0"
    result = processes.run("--once")
    assert result.returncode == 2 and "Redis" in result.stderr

    result = processes.run("--once", "--branch", "no-such-branch")
    assert result.returncode == 2 and "git is unusable" in result.stderr


@pytest.mark.slow
def test_descriptors_and_children_stay_flat(
    checkout: Checkout, processes: Processes, queue_client: redis.Redis
) -> None:
    """After 60 commits and 500 triggers the watcher holds no more descriptors or children."""
    watcher = processes.start()
    wait_for(lambda: queue_client.exists(MARKER) == 1, what="the watcher's first pass")
    process = psutil.Process(watcher.pid)
    before = _at_rest(process)
    for number in range(60):
        checkout.add_trigger(f"deploy-{number:03}.md")
    for number in range(60, 500):
        checkout.write(f"deploy-{number:03}.md", trigger_text(f"bulk {number}", checkout.base))
    checkout.commit("many triggers")
    wait_for(lambda: len(job_ids(queue_client)) == 500, timeout=60, what="500 jobs")
    after = _at_rest(process)
    assert after == before and after[1] == 0, f"descriptors, children: {before} -> {after}"


def _at_rest(process: psutil.Process) -> tuple[int, int]:
    """Descriptors and children between passes: the fewest seen over a second.

    The test runs a pass every half second, and a git subprocess in flight holds pipes.
    """
    samples = []
    for _ in range(20):
        samples.append((process.num_fds(), len(process.children(recursive=True))))
        time.sleep(0.05)
    return min(samples)
