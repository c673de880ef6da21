"""`up` through the README's main job: embedded Redis, watcher, worker, audit log, Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.ops.test_tail import Tail

ROOT = Path(__file__).parents[2]
TRIGGERS = ".monkeytown/decisions/deployment-triggers"


class Quickstart(Tail):
    """`scripts/quickstart` on an existing venv, its state in a fresh folder."""

    def __init__(self, state: Path) -> None:
        env = {
            **os.environ,
            "QUICKSTART_NO_INSTALL": "1",
            "VENV": str(Path(sys.executable).parent.parent),
            "MONKEYTOWN_DEPLOY_STATE_DIR": str(state),
        }
        env.pop("MONKEYTOWN_DEPLOY_CONFIG", None)
        self.process = subprocess.Popen(
            [str(ROOT / "scripts" / "quickstart")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.buffer = b""


def commit_trigger(demo: Path, example: str) -> None:
    """Commit an example trigger pointed at the demo's tip, as an agent would."""
    git = lambda *args: subprocess.run(  # noqa: E731
        ["git", "-C", str(demo), *args], check=True, capture_output=True, text=True
    )
    sha = git("rev-parse", "HEAD").stdout.strip()
    text = (ROOT / "examples/monkeytown/triggers" / f"{example}.md").read_text()
    (demo / TRIGGERS / f"{example}.md").write_text(re.sub(r"(?m)^SHA: .*$", f"SHA: {sha}", text))
    git("add", TRIGGERS)
    git("commit", "-q", "-m", f"Agent: {example}")


@pytest.mark.slow
def test_quickstart_runs_up_and_shows_a_committed_trigger(tmp_path: Path) -> None:
    """The main job starts up; a trigger committed to the demo repo appears in its audit log."""
    state = tmp_path / "state"
    quickstart = Quickstart(state)
    try:
        quickstart.wait_for("audit log", timeout=60)
        quickstart.wait_for("trigger.enqueued", timeout=60)  # the demo's own trigger
        descendants = psutil.Process(quickstart.process.pid).children(recursive=True)
        assert len(descendants) >= 3  # the Redis server, the watcher and a worker

        commit_trigger(state / "demo", "deploy-staging")
        quickstart.wait_for("deploy-staging.md", timeout=60)
        assert b"trigger.accepted" in quickstart.buffer
    finally:
        quickstart.process.send_signal(signal.SIGINT)
        output, _ = quickstart.process.communicate(timeout=60)
        quickstart.buffer += output
    assert quickstart.process.returncode == 0, quickstart.buffer.decode()[-3000:]
    assert b"[up] stopped" in quickstart.buffer
    assert not [child for child in descendants if child.is_running()]
