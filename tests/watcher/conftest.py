"""Fixtures for the watcher tests: a git checkout that commits triggers like an agent does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue

from monkeytown_deploy.audit import AuditLog
from monkeytown_deploy.keys import QUEUE
from triggers import TRIGGER_DIR, Environment
from watcher.daemon import Watcher, WatchOptions
from watcher.decide import Policy
from watcher.reconcile import Reconciler


def trigger_text(
    title: str, sha: str, *, target: str = "development", status: str = "approved"
) -> str:
    """A well-formed trigger file asking to deploy *sha* to *target*."""
    return (
        f"## Trigger: {title}\n\n"
        "### Changes\n- Something worth shipping\n\n"
        f"### Environment\nTarget: {target}\n\n"
        f"### Approval\nStatus: {status}\nApproved-by: someone\n\n"
        f"### Deployment ID\nSHA: {sha}\nTimestamp: 2026-01-18T12:00:00Z\n"
    )


@dataclass
class Checkout:
    """A git work tree on branch main where tests commit trigger files."""

    path: Path

    def git(self, *args: str, env: dict[str, str] | None = None) -> str:
        completed = subprocess.run(
            ["git", *args],
            cwd=self.path,
            check=True,
            capture_output=True,
            env={**os.environ, **(env or {})},
        )
        return completed.stdout.decode().strip()

    @property
    def folder(self) -> Path:
        return self.path / TRIGGER_DIR

    def write(self, name: str, text: str) -> Path:
        file = self.folder / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
        return file

    def commit(self, message: str, *paths: str, env: dict[str, str] | None = None) -> str:
        self.git("add", "-A", *paths)
        self.git("commit", "-q", "--allow-empty", "-m", message, env=env)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def add_trigger(
        self, name: str, *, target: str = "development", status: str = "approved"
    ) -> str:
        """Write and commit one trigger deploying the first commit; returns the new tip."""
        self.write(name, trigger_text(name, self.base, target=target, status=status))
        return self.commit(f"trigger {name}")

    @property
    def base(self) -> str:
        return self.git("rev-list", "--max-parents=0", "HEAD")


@pytest.fixture
def checkout(git_repo: Path) -> Checkout:
    """A repository with one commit (the code every trigger deploys) on branch main."""
    repo = Checkout(git_repo)
    (git_repo / "app.txt").write_text("the application\n")
    repo.commit("the application")
    return repo


@pytest.fixture
def queue_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


APPROVER = {"GIT_COMMITTER_NAME": "Grace Human", "GIT_COMMITTER_EMAIL": "grace@monkeytown.test"}


def trust_dev_merge_prod(env: Environment) -> Policy:
    """Development trusts the file; staging and production need a merge by Grace."""
    if env is Environment.DEVELOPMENT:
        return Policy("trust-file")
    return Policy("merge", approvers=("grace@monkeytown.test",))


@pytest.fixture
def audit(tmp_path: Path, queue_client: redis.Redis) -> AuditLog:
    return AuditLog(tmp_path / "audit.jsonl", actor="watcher@test", stream=queue_client)


@pytest.fixture
def reconciler(checkout: Checkout, queue_client: redis.Redis, audit: AuditLog) -> Reconciler:
    return Reconciler(checkout.path, "main", queue_client, audit, trust_dev_merge_prod)


def job_ids(client: redis.Redis) -> list[str]:
    """Every job id ever put on the deployments queue that still exists."""
    return sorted(Queue(QUEUE, connection=client).job_ids)


def audit_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll *predicate* until true; fail naming *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)


@pytest.fixture
def run_watcher(
    checkout: Checkout, queue_client: redis.Redis, audit: AuditLog
) -> Iterator[Callable[..., Watcher]]:
    """Start in-process watchers on the checkout; each is stopped and joined afterwards."""
    started: list[tuple[Watcher, threading.Thread]] = []

    def start(**options: Any) -> Watcher:
        settings = {"repo": checkout.path, "branch": "main", "lease_ttl": 2.0, **options}
        watcher = Watcher(WatchOptions(**settings), queue_client, audit, trust_dev_merge_prod)
        ready = threading.Event()
        thread = threading.Thread(target=watcher.run, args=(ready.set,), name="watcher-loop")
        thread.start()
        started.append((watcher, thread))
        assert ready.wait(10), "the watcher did not start within 10 s"
        return watcher

    yield start
    for watcher, thread in started:
        watcher.stop()
        thread.join(10)


@pytest.fixture
def signing_key(tmp_path: Path) -> tuple[Path, Path]:
    """An SSH key pair and an allowed-signers file naming the approver's e-mail."""
    if shutil.which("ssh-keygen") is None:
        pytest.fail("ssh-keygen is required: apt-get install -y openssh-client")
    key = tmp_path / "approver_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "grace", "-f", str(key)],
        check=True,
    )
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"grace@monkeytown.test {key.with_suffix('.pub').read_text()}")
    return key, allowed
