"""Fixtures for the watcher tests: a git checkout that commits triggers like an agent does."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from triggers import TRIGGER_DIR


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
