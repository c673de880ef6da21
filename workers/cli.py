"""``monkeytown-deploy worker``: an RQ worker on the "deployments" queue.

It is plain RQ underneath (``rq worker deployments`` runs the same jobs); this command adds
what the daemon needs around it: the configuration file passed on to every work-horse,
the embedded Redis when none is configured, Prometheus multiprocess files under the state
folder, and systemd's READY and WATCHDOG notifications.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from monkeytown_deploy.config import CONFIG_ENV, ConfigError, load_settings

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@click.command()
@click.option("--burst", is_flag=True, help="Run the queued jobs, then exit.")
@click.option("--name", help="Worker name shown by `rq info` (default: RQ's own).")
@click.option("--dry-run", is_flag=True, help="Render and record plans; touch no cluster.")
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Serve /metrics (every work-horse's, merged) and /health here.",
)
@click.pass_context
def worker(
    ctx: click.Context, burst: bool, name: str | None, dry_run: bool, listen: str | None
) -> None:
    """Run deployment jobs from the Redis queue "deployments".

    \b
    Plain `rq worker deployments` runs the same jobs; this command adds the embedded Redis
    when none is configured, systemd notifications, restarts after a Redis outage, and
    Prometheus metrics that add up across the forked work-horses.
    """
    config_path = (ctx.obj or {}).get("config_path")
    if config_path is not None:
        os.environ[CONFIG_ENV] = str(Path(config_path).resolve())  # work-horses read it too
    if dry_run:
        os.environ["MONKEYTOWN_DEPLOY_DRY_RUN"] = "true"
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    metrics_dir = settings.state_dir / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    # Before anything imports prometheus_client: it picks its storage at import time.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    server = _serve_metrics(listen)
    try:
        _work(settings.redis_url.get_secret_value() if settings.redis_url else None,
              settings.state_dir, burst=burst, name=name)  # fmt: skip
    finally:
        if server is not None:
            server.close()


def _serve_metrics(listen: str | None) -> Any:
    if listen is None:
        return None
    from monkeytown_deploy.metrics import serve_metrics

    try:
        return serve_metrics(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from exc


def _work(redis_url: str | None, state_dir: Path, *, burst: bool, name: str | None) -> None:

    import workers.jobs  # noqa: F401 - each forked work-horse inherits it, not re-imports it
    from monkeytown_deploy import sdnotify
    from monkeytown_deploy.connection import connect
    from monkeytown_deploy.keys import QUEUE
    from monkeytown_deploy.redis_server import resolve_redis, stop_embedded

    url, embedded = resolve_redis(redis_url, state_dir)
    connection = connect(url)
    stop_pinging = threading.Event()
    pinger = _watchdog(stop_pinging)
    try:
        sdnotify.notify("READY=1", f"STATUS=waiting for jobs on {QUEUE}")
        _work_through_outages(connection, burst=burst, name=name)
    finally:
        sdnotify.notify("STOPPING=1")
        stop_pinging.set()
        if pinger is not None:
            pinger.join()
        connection.close()
        stop_embedded(embedded)


def _work_through_outages(connection: Any, *, burst: bool, name: str | None) -> None:
    """Run RQ's worker loop; when Redis goes away, wait for it and start the loop again.

    RQ's own loop quits on a lost connection; a deploy daemon should outlive a Redis
    restart instead of needing a supervisor to bring it back. A burst run just fails.
    """
    import redis
    from rq import Queue, Worker

    from monkeytown_deploy.keys import QUEUE

    stop = threading.Event()
    delay, attempt = 1.0, 0
    while True:
        # A name is registered in Redis until its key expires; a restarted loop takes a new one.
        worker_name = f"{name}-{attempt}" if name and attempt else name
        rq_worker = Worker([Queue(QUEUE, connection=connection)], connection=connection,
                           name=worker_name)  # fmt: skip
        try:
            rq_worker.work(burst=burst, with_scheduler=False)
            return
        except redis.ConnectionError as exc:
            if burst:
                raise click.ClickException(f"lost Redis during a burst run: {exc}") from exc
            click.echo(f"worker: Redis unreachable ({exc}); retrying in {delay:.0f}s", err=True)
        with _stop_on_signals(stop):
            if stop.wait(delay):
                return
        delay, attempt = min(delay * 2, 30.0), attempt + 1


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Between RQ loops nobody handles SIGTERM/SIGINT; make them end the wait cleanly."""
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watchdog(stop: threading.Event) -> threading.Thread | None:
    """Ping systemd's watchdog while this process lives, when the unit asks for it."""
    from monkeytown_deploy import sdnotify

    interval = sdnotify.watchdog_interval()
    if interval is None:
        return None

    def ping() -> None:
        while not stop.wait(interval):
            sdnotify.notify("WATCHDOG=1")

    thread = threading.Thread(target=ping, name="sd-watchdog", daemon=True)
    thread.start()
    return thread
