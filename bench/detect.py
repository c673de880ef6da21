"""How fast the watcher turns commits into jobs, and whether it stays lean doing so.

Runs against a real git repository in a temporary folder and the embedded Redis-compatible
server, and prints:

1. commit-to-enqueue latency over --commits single-trigger commits, with a running
   ``python -m watcher`` process: from the moment the branch ref moved (its mtime) and from
   the moment ``git commit`` was started, to the job's ``enqueued_at``;
2. the same process's RSS, child processes and open descriptors before and after
   --triggers more triggers (committed 1,000 per commit) have been enqueued;
3. in-process: enqueue throughput for --triggers new triggers at one tip, then the
   start-up reconcile of the same --triggers already-known triggers.

    .venv/bin/python bench/detect.py [--commits 200] [--triggers 10000]

The figures measured with it, the machine and the goals beside them are in
bench/README.md. For comparison, Argo CD polls git every 2 to 3 minutes by default and Flux
every minute.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis
from rq.job import Job

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monkeytown_deploy.audit import AuditLog
from monkeytown_deploy.redis_server import RedisServer
from triggers import TRIGGER_DIR, trigger_id
from watcher.decide import Policy
from watcher.reconcile import Reconciler

TEMPLATE = (
    "## Trigger: bench {number}\n\n### Changes\n- Change {number}\n\n"
    "### Environment\nTarget: development\n\n### Approval\nStatus: approved\nApproved-by: bench\n\n"
    "### Deployment ID\nSHA: {sha}\nTimestamp: 2026-01-18T12:00:00Z\n"
)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def make_repo(root: Path) -> tuple[Path, str]:
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Bench Agent")
    git(repo, "config", "user.email", "bench@monkeytown.test")
    (repo / "app.txt").write_text("app\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "app")
    (repo / TRIGGER_DIR).mkdir(parents=True)
    return repo, git(repo, "rev-parse", "HEAD")


def write_trigger(repo: Path, sha: str, number: int) -> str:
    path = f"{TRIGGER_DIR}/bench-{number:06}.md"
    (repo / path).write_text(TEMPLATE.format(number=number, sha=sha))
    return path


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def start_watcher(repo: Path, url: str, state: Path, *options: str) -> subprocess.Popen[bytes]:
    """``python -m watcher`` on *repo* and the server at *url*, with extra *options*."""
    env = {**os.environ, "MONKEYTOWN_DEPLOY_STATE_DIR": str(state)}
    state.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "watcher", "--repo", str(repo), "--redis-url", url, *options],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(state / "watcher.log").open("ab"),
    )


@dataclass
class Bench:
    """A bench's world: a git repository, a Redis-compatible server and a watcher on both."""

    root: Path
    repo: Path
    sha: str
    client: redis.Redis
    watcher: subprocess.Popen[bytes]


@contextlib.contextmanager
def running_watcher(prefix: str, *options: str) -> Iterator[Bench]:
    """A fresh repository and server, and a watcher that has finished its first pass."""
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        root = Path(folder)
        repo, sha = make_repo(root)
        with RedisServer(root / "redis", appendonly=False) as server:
            client = redis.Redis.from_url(server.url)
            watcher = start_watcher(repo, server.url, root / "state", *options)
            try:
                wait_until_leading(client)
                yield Bench(root, repo, sha, client, watcher)
            finally:
                watcher.terminate()
                watcher.wait(10)
                client.close()


def wait_for_job(client: redis.Redis, job_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not client.exists(f"rq:job:{job_id}"):
        if time.monotonic() > deadline:
            raise SystemExit(f"no job {job_id} after {timeout} s; is the watcher running?")
        time.sleep(0.0005)


def wait_until_leading(client: redis.Redis, timeout: float = 30.0) -> None:
    """The watcher has finished its first pass once it has written its progress marker."""
    deadline = time.monotonic() + timeout
    while not client.exists("monkeytown-deploy:watcher:commit:main"):
        if time.monotonic() > deadline:
            raise SystemExit(f"the watcher did not finish a first pass within {timeout} s")
        time.sleep(0.01)


def latency(repo: Path, sha: str, client: redis.Redis, commits: int) -> None:
    from_ref: list[float] = []
    from_command: list[float] = []
    ref = repo / ".git" / "refs" / "heads" / "main"
    for number in range(commits):
        path = write_trigger(repo, sha, number)
        git(repo, "add", path)
        started = time.time()
        git(repo, "commit", "-q", "-m", f"trigger {number}")
        landed = ref.stat().st_mtime
        job_id = trigger_id(path, git(repo, "rev-parse", f"HEAD:{path}"))
        wait_for_job(client, job_id)
        enqueued = Job.fetch(job_id, connection=client).args[0]["enqueued_at"]
        from_ref.append((enqueued - landed) * 1000)
        from_command.append((enqueued - started) * 1000)
    for label, values in (("ref update", from_ref), ("`git commit` start", from_command)):
        print(
            f"commit-to-enqueue from {label:<20} over {commits} commits: "
            f"p50 {statistics.median(values):6.1f} ms  p99 {percentile(values, 0.99):6.1f} ms  "
            f"max {max(values):6.1f} ms"
        )


def describe(pid: int) -> str:
    process = psutil.Process(pid)
    return (
        f"RSS {process.memory_info().rss / 2**20:5.1f} MiB, "
        f"{len(process.children(recursive=True))} child processes, "
        f"{process.num_fds()} open descriptors"
    )


def soak(repo: Path, sha: str, client: redis.Redis, pid: int, *, count: int, first: int) -> None:
    time.sleep(1.0)  # let the last pass finish so children are counted at rest
    print(f"watcher process before {count} triggers: {describe(pid)}")
    started = time.perf_counter()
    last = ""
    for batch in range(first, first + count, 1000):
        for number in range(batch, min(batch + 1000, first + count)):
            last = write_trigger(repo, sha, number)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"triggers from {batch}")
    wait_for_job(client, trigger_id(last, git(repo, "rev-parse", f"HEAD:{last}")), 300)
    seconds = time.perf_counter() - started
    time.sleep(1.0)
    print(f"watcher process after  {count} triggers: {describe(pid)}")
    print(f"  ({count} triggers committed 1,000 per commit and enqueued in {seconds:.1f} s)")


def throughput(repo: Path, client: redis.Redis, audit_path: Path) -> None:
    client.flushall()
    trust: Policy = Policy("trust-file")
    audit = AuditLog(audit_path, actor="bench", stream=client)
    fresh = Reconciler(repo, "main", client, audit, lambda env: trust)
    report = fresh.reconcile("bench")
    enqueued = len(report.enqueued)
    print(
        f"new triggers: {enqueued} enqueued in {report.seconds:.2f} s = "
        f"{enqueued / report.seconds:,.0f} per second"
    )
    client.delete("monkeytown-deploy:watcher:commit:main")
    restarted = Reconciler(repo, "main", client, audit, lambda env: trust)
    report = restarted.reconcile("startup")
    print(
        f"start-up reconcile of {report.seen} already-known triggers: "
        f"{report.seconds * 1000:.0f} ms ({report.new} new)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--triggers", type=int, default=10_000)
    args = parser.parse_args()
    with running_watcher("detect-bench-") as bench:
        latency(bench.repo, bench.sha, bench.client, args.commits)
        pid = bench.watcher.pid
        soak(bench.repo, bench.sha, bench.client, pid, count=args.triggers, first=args.commits)
        bench.watcher.terminate()
        bench.watcher.wait(10)
        throughput(bench.repo, bench.client, bench.root / "bench-audit.jsonl")


if __name__ == "__main__":
    main()
