"""``monkeytown-deploy watch``: run the watcher on a checkout, or reconcile it once."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn

import click
import redis
import structlog

from monkeytown_deploy.audit import AuditLog, AuditWriteError
from monkeytown_deploy.config import ConfigError, Settings, load_settings
from monkeytown_deploy.lease import default_owner
from monkeytown_deploy.redis_server import RedisServerError, resolve_redis, stop_embedded
from triggers import Environment
from triggers.gitobjects import GitError, branch_tip, current_branch
from watcher.daemon import Watcher, WatchOptions
from watcher.decide import Policy
from watcher.reconcile import PassReport, Reconciler

EXIT_UNUSABLE = 2


@click.command()
@click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The git checkout to watch (default: `repo` from the configuration).",
)
@click.option("--branch", help="Branch to follow (default: the checkout's current branch).")
@click.option(
    "--redis-url",
    envvar="MONKEYTOWN_DEPLOY_REDIS_URL",
    help="Redis URL (default: an embedded server with its data under the state folder).",
)
@click.option("--once", is_flag=True, help="Reconcile once and exit: 0 on success, 2 if unusable.")
@click.option("--remote", help="Fetch this remote and fast-forward the branch to it.")
@click.option("--fetch-interval", type=float, help="Seconds between fetches (default 30).")
@click.option("--reconcile-interval", type=float, help="Seconds between full passes (default 30).")
@click.option("--listen", help="HOST:PORT for /health, /ready, /metrics and /hooks/git.")
@click.option("--lease-ttl", type=float, default=10.0, show_default=True,
              help="Seconds a standby waits before taking over from a dead watcher.")  # fmt: skip
@click.pass_context
def watch(
    ctx: click.Context,
    *,
    repo: Path | None,
    branch: str | None,
    redis_url: str | None,
    once: bool,
    remote: str | None,
    fetch_interval: float | None,
    reconcile_interval: float | None,
    listen: str | None,
    lease_ttl: float,
) -> None:
    """Put every approved, committed trigger on the "deployments" queue exactly once.

    \b
    Reads what is committed on the branch of REPO (never the work tree): every commit
    that changed the trigger folder, woken by inotify, by a push webhook, and every
    --reconcile-interval seconds. Several watchers may run: the
    one holding the "watcher" lease enqueues, the others take over when it dies.
    """
    _configure_logging()
    settings = _settings(
        ctx,
        repo=repo,
        branch=branch,
        remote=remote,
        fetch_interval=fetch_interval,
        reconcile_interval=reconcile_interval,
        listen=listen,
    )
    if settings.repo is None:
        raise click.UsageError("say which checkout to watch: --repo DIR or `repo` in the config")
    repo = settings.repo.resolve()
    branch = _branch(repo, branch or settings.branch)
    secret = settings.redis_url.get_secret_value() if settings.redis_url else None
    try:
        url, server = resolve_redis(redis_url or secret, settings.state_dir)
    except RedisServerError as exc:
        _fail(f"Redis is unusable: {exc}")
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    try:
        _ping(client, url)
        owner = default_owner("watcher")
        audit = AuditLog.configured(settings, actor=owner, stream=client)
        if once:
            _reconcile_once(repo, branch, client, audit, settings)
            return
        options = WatchOptions(
            repo=repo,
            branch=branch,
            reconcile_interval=settings.reconcile_interval,
            remote=settings.remote,
            fetch_interval=settings.fetch_interval,
            listen=settings.listen,
            lease_ttl=lease_ttl,
            webhook_secret=_secret_bytes(settings),
            job_timeout=settings.job_timeout,
        )
        watcher = Watcher(options, client, audit, policies(settings), owner)
        with _stop_on_signals(watcher.stop):
            watcher.run()
    finally:
        client.close()
        stop_embedded(server)


def policies(settings: Settings) -> Callable[[Environment], Policy]:
    """The approval policy of each environment, in the plain terms ``triggers`` takes."""

    def policy_for(env: Environment) -> Policy:
        chosen = settings.environment(env)
        return Policy(settings.policy_for(env).value, chosen.approvers, chosen.allowed_signers)

    return policy_for


def _settings(
    ctx: click.Context,
    *,
    repo: Path | None,
    branch: str | None,
    remote: str | None,
    fetch_interval: float | None,
    reconcile_interval: float | None,
    listen: str | None,
) -> Settings:
    config_path = (ctx.obj or {}).get("config_path")
    try:
        return load_settings(
            config_path,
            repo=repo,
            branch=branch,
            remote=remote,
            fetch_interval=fetch_interval,
            reconcile_interval=reconcile_interval,
            listen=listen,
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _branch(repo: Path, branch: str | None) -> str:
    try:
        branch = branch or current_branch(repo)
        branch_tip(repo, branch)
    except GitError as exc:
        _fail(f"git is unusable: {exc}")
    return branch


def _ping(client: redis.Redis, url: str) -> None:
    try:
        client.ping()
    except redis.RedisError as exc:
        safe = url.rsplit("@", maxsplit=1)[-1]
        _fail(f"Redis at {safe} does not answer: {exc}; start it or pass --redis-url")


def _reconcile_once(
    repo: Path, branch: str, client: redis.Redis, audit: AuditLog, settings: Settings
) -> None:
    reconciler = Reconciler(
        repo, branch, client, audit, policies(settings), job_timeout=settings.job_timeout
    )
    try:
        report = reconciler.reconcile("once")
    except (GitError, redis.RedisError, AuditWriteError) as exc:
        _fail(f"reconcile failed: {exc}")
    click.echo(_summary(report))


def _summary(report: PassReport) -> str:
    counts = ", ".join(f"{count} {outcome}" for outcome, count in sorted(report.counts.items()))
    return (
        f"{report.commit[:12]}: {report.seen} trigger files, {report.new} new"
        f"{' (' + counts + ')' if counts else ''}; {len(report.enqueued)} enqueued, "
        f"{len(report.duplicates)} already queued, in {report.seconds * 1000:.0f} ms"
    )


def _secret_bytes(settings: Settings) -> bytes | None:
    secret = settings.webhook_secret
    return secret.get_secret_value().encode() if secret else None


def _fail(message: str) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(EXIT_UNUSABLE)


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT ask the loop to stop; the previous handlers come back after."""

    def handle(signum: int, frame: FrameType | None) -> None:
        stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _configure_logging() -> None:
    """JSON lines on stderr: what journald and a log shipper both read well."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
