"""Operator commands: ``status`` (what is queued, running, failed and deployed) and
``rollback`` (put an environment back, audited with the operator as the actor).

Both read the same Redis the daemon uses: ``--redis-url``, the configured URL, or the
embedded server a running ``up`` or ``watch`` announced under the state folder.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import click
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry

from monkeytown_deploy.audit import AuditLog, AuditWriteError, default_actor, redact
from monkeytown_deploy.audit_cli import settings_from
from monkeytown_deploy.config import Settings
from monkeytown_deploy.keys import QUEUE, key
from monkeytown_deploy.lease import Lease
from monkeytown_deploy.redis_server import answers
from triggers import Environment

ROLLBACK_JOB = "workers.jobs.run_rollback"
WATCHER_LEASE = "watcher"


def known_redis_url(settings: Settings, given: str | None) -> str:
    """The Redis an operator command talks to; never starts a server of its own.

    An empty embedded server would answer every question with "nothing", which is worse
    than an error that says where the daemon's Redis was expected.
    """
    if given:
        return given
    if settings.redis_url is not None:
        return settings.redis_url.get_secret_value()
    url_file = settings.state_dir / "redis" / "server.url"
    if url_file.is_file():
        url = url_file.read_text().strip()
        if answers(url):
            return url
    raise click.ClickException(
        "no Redis to ask: none is configured, and no embedded server is running for state "
        f"folder {settings.state_dir} ({url_file} is missing or stale). Pass --redis-url, "
        "set redis_url in the configuration, or start `monkeytown-deploy up`."
    )


# --- status -----------------------------------------------------------------------------


@dataclass
class JobView:
    """One job on the deployments queue, as an operator needs to see it."""

    job_id: str
    status: str
    environment: str | None = None
    sha: str | None = None
    stage: str | None = None
    step: str | None = None
    canary_weight: int | float | None = None
    worker: str | None = None
    enqueued_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    failure_reason: str | None = None
    requeue: str | None = None


@dataclass
class Status:
    """Everything ``status`` shows, also its ``--json`` document."""

    redis_url: str
    queue: str
    queued: list[JobView] = field(default_factory=list)
    running: list[JobView] = field(default_factory=list)
    failed: list[JobView] = field(default_factory=list)
    environments: dict[str, dict[str, str]] = field(default_factory=dict)
    leases: dict[str, str | None] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return len(self.queued)


def collect_status(client: redis.Redis, url: str) -> Status:
    """Read queue, registries, environment records and lease holders from Redis."""
    queue = Queue(QUEUE, connection=client)
    status = Status(redis_url=str(redact(url)), queue=QUEUE)
    status.queued = _jobs(client, queue.get_job_ids(), "queued")
    status.running = _jobs(client, StartedJobRegistry(queue=queue).get_job_ids(), "started")
    status.failed = _jobs(client, FailedJobRegistry(queue=queue).get_job_ids(), "failed")
    for job in status.failed:
        job.requeue = requeue_command(url, job.job_id)
    for env in Environment:
        status.environments[env.value] = _decoded(client.hgetall(key("env", env.value)))
    for name in (WATCHER_LEASE, *(f"env-{env.value}" for env in Environment)):
        status.leases[name] = Lease(client, name, owner="status").holder()
    return status


def requeue_command(url: str, job_id: str) -> str:
    """The exact ``rq`` command that puts a failed job back on the queue."""
    return shlex.join(["rq", "requeue", "--queue", QUEUE, "--url", str(redact(url)), job_id])


def _jobs(client: redis.Redis, job_ids: list[str], status: str) -> list[JobView]:
    views = []
    for job_id, job in zip(job_ids, Job.fetch_many(job_ids, connection=client), strict=True):
        views.append(_view(job_id, job, status))
    return views


def _view(job_id: str, job: Job | None, status: str) -> JobView:
    if job is None:  # expired between listing and fetching
        return JobView(job_id=job_id, status="gone")
    meta: dict[str, Any] = job.meta or {}
    request = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
    return JobView(
        job_id=job_id,
        status=status,
        environment=meta.get("target") or meta.get("environment") or request.get("target"),
        sha=meta.get("sha") or request.get("sha"),
        stage=meta.get("stage"),
        step=meta.get("step"),
        canary_weight=meta.get("canary_weight"),
        worker=job.worker_name,
        enqueued_at=_iso(job.enqueued_at),
        started_at=_iso(job.started_at),
        ended_at=_iso(job.ended_at),
        failure_reason=meta.get("failure_reason")
        or (_last_error(job) if status == "failed" else None),
    )


def _last_error(job: Job) -> str | None:
    """The last line of the job's traceback: the exception and its message."""
    result = job.latest_result()
    text = getattr(result, "exc_string", None) if result is not None else None
    if not text:
        return None
    return str(redact(text.strip().splitlines()[-1]))


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.isoformat(timespec="seconds").replace("+00:00", "Z")


def _decoded(mapping: Any) -> dict[str, str]:
    return {_text(name): _text(value) for name, value in dict(mapping).items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def print_status(status: Status) -> None:
    """The human form of ``status``: one block per question an operator asks."""
    click.secho(f"Redis   {status.redis_url}", dim=True)
    holder = status.leases.get(WATCHER_LEASE)
    click.echo(f"Watcher {holder or click.style('no watcher holds the lease', fg='yellow')}")
    click.echo(f"Queue   {status.queue}: {status.depth} queued, {len(status.running)} running, "
               f"{len(status.failed)} failed")  # fmt: skip
    for job in status.queued:
        click.echo(f"  queued   {job.job_id}  {job.environment or '-'}  sha {_short(job.sha)}")
    for job in status.running:
        weight = f"  canary {job.canary_weight}%" if job.canary_weight is not None else ""
        where = "/".join(part for part in (job.stage, job.step) if part) or "starting"
        click.echo(f"  running  {job.job_id}  {job.environment or '-'}  {where}{weight}  "
                   f"on {job.worker or '?'} since {job.started_at or '?'}")  # fmt: skip
    for job in status.failed:
        click.secho(f"  failed   {job.job_id}  {job.environment or '-'}  sha {_short(job.sha)}  "
                    f"at {job.ended_at or '?'}", fg="red")  # fmt: skip
        click.echo(f"           reason: {job.failure_reason or 'unknown (see the audit log)'}")
        click.echo(f"           retry:  {job.requeue}")
    click.echo("Environments")
    for env, running in status.environments.items():
        lease = status.leases.get(f"env-{env}")
        busy = f"  (deploying: {lease})" if lease else ""
        if running.get("sha"):
            click.echo(f"  {env:<12} sha {running['sha']}  trigger {running.get('trigger_id', '-')}"
                       f"  revision {running.get('revision', '-')}"
                       f"  since {running.get('updated_at', '?')}{busy}")  # fmt: skip
        else:
            click.echo(f"  {env:<12} nothing deployed by monkeytown-deploy yet{busy}")


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "-"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--redis-url", envvar="MONKEYTOWN_DEPLOY_REDIS_URL", help="Redis to read.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, redis_url: str | None) -> None:
    """Queue depth, running and failed jobs, what each environment runs, who holds leases.

    Each failed job comes with its reason and the `rq requeue` command that retries it.
    """
    url = known_redis_url(settings_from(ctx), redis_url)
    client = redis.Redis.from_url(url)
    try:
        report = collect_status(client, url)
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot read status from {redact(url)}: {exc}") from None
    finally:
        client.close()
    if as_json:
        click.echo(json.dumps({**asdict(report), "depth": report.depth}, indent=2))
    else:
        print_status(report)


# --- rollback ---------------------------------------------------------------------------


def enqueue_rollback(
    client: redis.Redis,
    log: AuditLog,
    environment: Environment,
    to_revision: int | None,
    *,
    job_timeout: float,
) -> Job:
    """Record the operator's intent, then put a rollback job on the deployments queue."""
    requested_at = time.time()
    job_id = f"rollback-{environment.value}-{int(requested_at * 1000)}"
    actor = str(log.context["actor"])
    request = {
        "environment": environment.value,
        "to_revision": to_revision,
        "actor": actor,
        "requested_at": requested_at,
    }
    bound = log.bind(environment=environment.value, job_id=job_id)
    bound.record("operator.rollback", intent=True, outcome="requested", to_revision=to_revision)
    queue = Queue(QUEUE, connection=client)
    return queue.enqueue(
        ROLLBACK_JOB,
        request,
        job_id=job_id,
        job_timeout=int(job_timeout),
        meta={
            "target": environment.value,
            "action": "rollback",
            "actor": actor,
            "to_revision": to_revision,
        },
        description=f"rollback {environment.value} to revision {to_revision or 'previous'}",
    )


@click.command()
@click.argument("environment", type=click.Choice([env.value for env in Environment]))
@click.option(
    "--to-revision",
    type=click.IntRange(min=1),
    help="Deployment revision to return to (default: the one before the current).",
)
@click.option("--redis-url", envvar="MONKEYTOWN_DEPLOY_REDIS_URL", help="Redis to enqueue on.")
@click.pass_context
def rollback(
    ctx: click.Context, environment: str, to_revision: int | None, redis_url: str | None
) -> None:
    """Roll ENVIRONMENT back, as a job on the deployments queue, audited with you as actor.

    The job waits for the environment's lease like any deployment, so it never races one.
    """
    settings = settings_from(ctx)
    url = known_redis_url(settings, redis_url)
    client = redis.Redis.from_url(url)
    log = AuditLog.configured(settings, actor=default_actor(), stream=client)
    try:
        job = enqueue_rollback(
            client, log, Environment(environment), to_revision, job_timeout=settings.job_timeout
        )
    except AuditWriteError as exc:
        raise click.ClickException(f"rollback not enqueued: {exc}") from None
    except redis.RedisError as exc:
        log.bind(environment=environment).record(
            "operator.rollback", outcome="failed", reason=f"enqueue failed: {exc}"
        )
        raise click.ClickException(f"rollback not enqueued on {redact(url)}: {exc}") from None
    finally:
        client.close()
    destination = f"revision {to_revision}" if to_revision else "the previous revision"
    click.echo(f"enqueued {job.id}: roll {environment} back to {destination}")
    click.echo(f"follow it: monkeytown-deploy audit tail -f --env {environment}")
