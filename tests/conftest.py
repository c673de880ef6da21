"""Session-wide test rules and the fixtures every layer shares.

Every test fails if it leaves a thread or a child process behind: the watchdog observer,
RQ work-horses and the servers these tests start all make that a real risk.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from monkeytown_deploy.redis_server import RedisServer

pytest_plugins = ["pytester", "tests.kubesim_fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kube-context",
        default=os.environ.get("MONKEYTOWN_DEPLOY_TEST_KUBE_CONTEXT"),
        help="run the cluster scenarios against this real kubeconfig context as well",
    )


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def _live_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.is_alive()}


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test that leaves a thread or a child process running."""
    threads_before = _live_threads()
    children_before = _children()
    yield
    deadline = time.monotonic() + 5
    while True:
        threads = _live_threads() - threads_before
        children = _children() - children_before
        if not threads and not children:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    names = sorted(thread.name for thread in threads)
    pytest.fail(
        f"{request.node.nodeid} leaked threads {names} and child processes {sorted(children)}"
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | str]:
    """A real Redis-compatible server for the whole session, or ``$REDIS_URL`` if set."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer | str) -> Iterator[str]:
    """The URL of a real, empty Redis-compatible server."""
    url = redis_server if isinstance(redis_server, str) else redis_server.url
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    yield url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """An empty git repository on branch main, with an identity for commits."""
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *args: subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)  # noqa: E731
    run("init", "-q", "-b", "main")
    run("config", "user.name", "Agent Smith")
    run("config", "user.email", "agent@monkeytown.test")
    run("config", "commit.gpgsign", "false")
    return repo
