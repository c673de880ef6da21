"""``monkeytown-deploy up``: Redis, a watcher and N workers in one process tree.

The development default and the README's main job. Each child runs in its own session,
so the terminal's Ctrl-C reaches only ``up``, which then stops the children in order:
SIGTERM to each child's whole group (an RQ worker and its work-horse together), a grace
period, then SIGKILL for whatever is left. Their output and the audit log, made readable,
share the terminal.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import click

from monkeytown_deploy.audit import FileFollower, redact
from monkeytown_deploy.audit_cli import Progress, render
from monkeytown_deploy.cli import LAZY_COMMANDS
from monkeytown_deploy.config import ConfigError, Settings, load_settings
from monkeytown_deploy.keys import QUEUE
from monkeytown_deploy.redis_server import RedisServerError, resolve_redis, stop_embedded
from triggers import TRIGGER_DIR

GRACE_SECONDS = 20.0
"""How long children get to finish after SIGTERM (a warm RQ shutdown ends its job)."""

_CLI = (
    "import sys; from monkeytown_deploy.cli import main; "
    "sys.exit(main(prog_name='monkeytown-deploy'))"
)


@dataclass
class Child:
    """One process ``up`` started, and the part of a line of its output not yet printed."""

    name: str
    process: subprocess.Popen[bytes]
    pending: bytes = b""

    @property
    def output(self) -> IO[bytes]:
        assert self.process.stdout is not None
        return self.process.stdout


@dataclass
class Tree:
    """The children, the loop that shows their output and the audit log, and shutdown."""

    children: list[Child]
    follower: FileFollower
    progress: Progress
    selector: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)
    stopping: bool = False
    signals: int = 0

    def run(self) -> int:
        """Show output until a signal or a child's death; return the exit status."""
        for child in self.children:
            self.selector.register(child.output, selectors.EVENT_READ, child)
        failed: Child | None = None
        while not self.stopping and failed is None:
            self._pump(timeout=0.1)
            failed = next((c for c in self.children if c.process.poll() is not None), None)
        if failed is not None:
            self._say(f"{failed.name} exited with status {failed.process.returncode}; "
                      "stopping the others", fg="red")  # fmt: skip
        self.stop()
        return 1 if failed is not None else 0

    def stop(self) -> None:
        """SIGTERM every child's group, wait out the grace period, SIGKILL the rest."""
        self._say("stopping: watcher and workers finish what they are doing…", fg="yellow")
        for child in self.children:
            _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        while self._running() and time.monotonic() < deadline and self.signals < 2:
            self._pump(timeout=0.1)
        for child in self._running():
            self._say(f"{child.name} did not stop in time; killing it", fg="red")
            _signal_group(child.process, signal.SIGKILL)
        for child in self.children:
            child.process.wait()
            _signal_group(child.process, signal.SIGKILL)  # a work-horse left behind, if any
        self._pump(timeout=0)
        self.selector.close()
        self.follower.close()

    def on_signal(self, signum: int, _: FrameType | None) -> None:
        self.stopping = True
        self.signals += 1

    def _running(self) -> list[Child]:
        return [child for child in self.children if child.process.poll() is None]

    def _pump(self, timeout: float) -> None:
        for selected, _ in self.selector.select(timeout):
            self._read(selected.data)
        for record in self.follower.poll():
            self.progress.echo(render(record))
            self.progress.update(record)

    def _read(self, child: Child) -> None:
        chunk = os.read(child.output.fileno(), 65536)
        if not chunk:
            self.selector.unregister(child.output)
            return
        *lines, child.pending = (child.pending + chunk).split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip()
            self.progress.echo(f"{click.style(f'[{child.name}]', dim=True)} {text}")

    def _say(self, text: str, fg: str | None = None) -> None:
        self.progress.echo(click.style(f"[up] {text}", fg=fg))


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def child_env(
    settings: Settings, config_path: Path | None, dry_run: bool, url: str
) -> dict[str, str]:
    """The environment every child reads its configuration from, as plain `rq worker` would.

    Work-horses and anything else the children start inherit it, so they all agree on
    the Redis, the state folder, the audit log and the dry run.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MONKEYTOWN_DEPLOY_REDIS_URL": url}
    env["MONKEYTOWN_DEPLOY_STATE_DIR"] = str(settings.state_dir)
    env["MONKEYTOWN_DEPLOY_AUDIT_LOG"] = str(settings.audit_path)
    if config_path is not None:
        env["MONKEYTOWN_DEPLOY_CONFIG"] = str(config_path.resolve())
    if dry_run:
        env["MONKEYTOWN_DEPLOY_DRY_RUN"] = "true"
    return env


def child_commands(
    repo: Path, url: str, workers: int, branch: str | None
) -> list[tuple[str, list[str]]]:
    """(name, argv) of the watcher and each worker."""
    cli = [sys.executable, "-c", _CLI]
    watch = [*cli, "watch", "--repo", str(repo), "--redis-url", url]
    if branch:
        watch += ["--branch", branch]
    worker = [*cli, "worker"]  # its Redis URL comes from the environment, see child_env
    if "worker" not in LAZY_COMMANDS:  # an install without the workers' command: plain rq
        worker = [str(Path(sys.executable).with_name("rq")), "worker", QUEUE, "--url", url]
    commands = [("watcher", watch)]
    for number in range(1, workers + 1):
        commands.append((f"worker-{number}", worker))
    return commands


def _start(commands: list[tuple[str, list[str]]], env: dict[str, str]) -> list[Child]:
    children = []
    for name, argv in commands:
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches up alone; up stops the group
        )
        children.append(Child(name, process))
    return children


@contextlib.contextmanager
def _signals_to(tree: Tree) -> Iterator[None]:
    previous = {
        signum: signal.signal(signum, tree.on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _banner(repo: Path, url: str, embedded: bool, settings: Settings, workers: int) -> None:
    where = f"embedded, data in {settings.state_dir / 'redis'}" if embedded else "given"
    click.secho("monkeytown-deploy up", bold=True)
    click.echo(f"  redis      {redact(url)} ({where})")
    click.echo(f"  watching   {repo}")
    dry = " (dry run: plans are recorded, no cluster is touched)" if settings.dry_run else ""
    click.echo(f"  workers    {workers} on queue {QUEUE!r}{dry}")
    click.echo(f"  audit log  {settings.audit_path}")
    click.echo(f"  commit a trigger under {repo / TRIGGER_DIR}/ and watch it below;")
    click.echo(f"  elsewhere: monkeytown-deploy status --redis-url {redact(url)}")
    click.echo("  Ctrl-C stops everything")


@click.command()
@click.option(
    "--repo",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The git checkout to watch.",
)
@click.option("--workers", "-w", type=click.IntRange(1, 32), default=1, show_default=True)
@click.option("--dry-run", is_flag=True, help="Render and record the plan; touch no cluster.")
@click.option("--branch", help="Branch to follow (default: the checkout's current branch).")
@click.option(
    "--redis-url",
    envvar="MONKEYTOWN_DEPLOY_REDIS_URL",
    help="Redis to use (default: an embedded server with its data under the state folder).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for Redis data, the audit log and metrics (default: configured).",
)
@click.pass_context
def up(
    ctx: click.Context,
    *,
    repo: Path,
    workers: int,
    dry_run: bool,
    branch: str | None,
    redis_url: str | None,
    state_dir: Path | None,
) -> None:
    """Run Redis, the watcher and N workers together until Ctrl-C.

    \b
    The quickest way to see the daemon work:
      monkeytown-deploy up --repo PATH --dry-run
    then commit a trigger file in PATH and watch its events scroll by.
    """
    config_path = (ctx.find_root().obj or {}).get("config_path")
    try:
        settings = load_settings(config_path, state_dir=state_dir, dry_run=dry_run or None)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configured = settings.redis_url.get_secret_value() if settings.redis_url else None
    try:
        url, server = resolve_redis(redis_url or configured, settings.state_dir)
    except RedisServerError as exc:
        raise click.ClickException(f"cannot start the embedded Redis: {exc}") from None
    repo = repo.resolve()
    try:
        _banner(repo, url, server is not None, settings, workers)
        follower = FileFollower(settings.audit_path, from_start=False)
        follower.poll()  # open at today's end: show what happens from now on
        env = child_env(settings, config_path, settings.dry_run, url)
        tree = Tree(_start(child_commands(repo, url, workers, branch), env), follower,
                    Progress(enabled=sys.stdout.isatty()))  # fmt: skip
        with _signals_to(tree):
            status = tree.run()
    finally:
        stop_embedded(server)
    click.echo("[up] stopped")
    sys.exit(status)
