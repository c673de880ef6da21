"""Identifiers, the embedded Redis launcher and the leak check every test relies on."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from monkeytown_deploy.connection import connect
from monkeytown_deploy.keys import key
from monkeytown_deploy.redis_server import RedisServer, resolve_redis, stop_embedded
from triggers import Environment, is_trigger_id, trigger_id


def test_trigger_id_depends_on_path_and_blob_and_is_stable_across_processes() -> None:
    """The same path and blob give the same id in another interpreter; any change differs."""
    here = trigger_id(".monkeytown/decisions/deployment-triggers/a.md", "0" * 40)
    code = (
        "from triggers import trigger_id;"
        "print(trigger_id('.monkeytown/decisions/deployment-triggers/a.md', '0' * 40))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()

    assert here == there
    assert is_trigger_id(here)
    assert trigger_id("b.md", "0" * 40) != here
    assert trigger_id(".monkeytown/decisions/deployment-triggers/a.md", "1" * 40) != here


def test_environment_stages_walk_up_to_the_target() -> None:
    """A production deploy passes development and staging first."""
    assert Environment.PRODUCTION.stages() == tuple(Environment)
    assert Environment.DEVELOPMENT.stages() == (Environment.DEVELOPMENT,)


def test_redis_keys_share_one_prefix_and_refuse_ambiguous_parts() -> None:
    """Every key starts with the prefix; a part containing ':' is refused."""
    assert key("trigger", "trigger-abc") == "monkeytown-deploy:trigger:trigger-abc"
    with pytest.raises(ValueError, match="free of ':'"):
        key("lease", "a:b")


def test_embedded_server_keeps_data_on_disk_across_a_restart(tmp_path: Path) -> None:
    """A write acknowledged before a stop is there after the server starts again."""
    with RedisServer(tmp_path / "data") as server:
        client = redis.Redis.from_url(server.url)
        client.set("answer", "42")
        client.close()
    with RedisServer(tmp_path / "data") as server:
        client = redis.Redis.from_url(server.url)
        assert client.get("answer") == b"42"
        client.close()


def test_resolve_redis_starts_one_embedded_server_and_shares_it(tmp_path: Path) -> None:
    """Without a URL the first caller starts a server; the second reuses it."""
    url, server = resolve_redis(None, tmp_path)
    try:
        assert server is not None
        again, second = resolve_redis(None, tmp_path)
        assert (again, second) == (url, None)
        assert resolve_redis("redis://elsewhere:1/0", tmp_path) == ("redis://elsewhere:1/0", None)
    finally:
        stop_embedded(server)
    assert not (tmp_path / "redis" / "server.url").exists()


def test_the_leak_check_fails_a_test_that_leaves_a_process_running(
    pytester: pytest.Pytester,
) -> None:
    """A test that starts a child process and never reaps it is reported as a failure."""
    conftest = Path(__file__).parents[1].joinpath("conftest.py").read_text()
    pytester.makeconftest(conftest.replace('"tests.kubesim_fixtures"', ""))
    pytester.makepyfile(
        """
        import subprocess, sys
        def test_leaky():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*leaked threads [[]]*child processes*"])


def test_resilient_connection_waits_for_a_restarting_server(tmp_path: Path) -> None:
    """A command sent while Redis is down completes once the server is back on its port."""
    server = RedisServer(tmp_path / "data", appendfsync="always").start()
    client = connect(server.url)
    client.set("deploys", 1)
    server.kill()
    restarted = threading.Timer(1.5, server.start)
    restarted.start()
    try:
        started = time.monotonic()
        assert client.incr("deploys") == 2
        assert time.monotonic() - started >= 1.0
    finally:
        restarted.join()
        client.close()
        server.stop()
