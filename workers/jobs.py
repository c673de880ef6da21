"""The RQ jobs: ``run_trigger`` for every approved trigger, ``run_rollback`` for operators.

Both run under ``monkeytown-deploy worker`` and equally under plain ``rq worker
deployments``: the configuration comes from ``load_settings()`` (``MONKEYTOWN_DEPLOY_CONFIG``
or the defaults), the Redis connection from the job itself.

A trigger job, in order: steps aside if a newer trigger for the same target is queued;
takes the target environment's lease (waiting behind another deploy, still watching for a
newer trigger); re-checks that the trigger is still approved and its SHA still on the
protected branch; renders every overlay at the SHA; then runs the stages, each under its
environment's lease, checkpointing every step. On any failure it rolls back what it changed
in the failing stage, records why, notifies once, and fails the RQ job with the reason.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

import redis
from rq import get_current_job
from rq.job import Job

from monkeytown_deploy.audit import AuditLog
from monkeytown_deploy.config import Settings, load_settings
from monkeytown_deploy.connection import connect
from monkeytown_deploy.keys import key
from monkeytown_deploy.metrics import DEPLOYMENTS
from monkeytown_deploy.queueing import forget_trigger, newer_trigger
from triggers import Environment, parse_trigger
from triggers.approval import check_approval, sha_reachable
from triggers.gitobjects import GitError, branch_tip, list_tree, read_blobs
from workers.context import Run, TriggerRequest
from workers.errors import DeployError, LeaseLost, PermanentError, Superseded, Withdrawn
from workers.kube import DEPLOYMENT, Cluster, container_images, describe, revision_of
from workers.leases import Leases
from workers.notify import Notifier
from workers.progress import Progress
from workers.render import image_for, render_overlays
from workers.revisions import choose_replica_set, owned_replica_sets, undo
from workers.rollout import wait_for_rollout
from workers.stages import (
    already_running,
    canary_stage,
    gate,
    plain_stage,
    remove_canary,
    roll_back_stage,
)


class DeploymentFailed(Exception):
    """The job failed; the message is the reason, as recorded in the audit log."""


def actor() -> str:
    return f"worker@{socket.gethostname()}:{os.getpid()}"


def run_trigger(request: dict[str, Any]) -> dict[str, Any]:
    """Deploy (or roll back, per its ``### Action``) one approved trigger."""
    settings = load_settings()
    trigger_request = TriggerRequest.from_dict(request)
    job = get_current_job()
    client = _redis(job, settings)
    job_id = job.id if job is not None else trigger_request.trigger_id
    audit = AuditLog.configured(settings, actor=actor(), stream=client).bind(
        trigger_id=trigger_request.trigger_id, sha=trigger_request.sha,
        environment=trigger_request.target.value, job_id=job_id,
    )  # fmt: skip
    run = _new_run(settings, client, audit, job_id, job)
    run.sha = trigger_request.sha
    return TriggerJob(run, trigger_request).execute()


def run_rollback(request: dict[str, Any]) -> dict[str, Any]:
    """The operator's rollback of an environment, to its previous or a named revision."""
    settings = load_settings()
    environment = Environment(request["environment"])
    job = get_current_job()
    client = _redis(job, settings)
    job_id = job.id if job is not None else f"rollback-{environment}-{int(time.time() * 1000)}"
    audit = AuditLog.configured(settings, actor=actor(), stream=client).bind(
        environment=environment.value, job_id=job_id, requested_by=request.get("actor")
    )
    run = _new_run(settings, client, audit, job_id, job)
    revision = request.get("to_revision")
    return RollbackJob(run, environment, int(revision) if revision else None).execute()


def _redis(job: Job | None, settings: Settings) -> redis.Redis:
    if job is not None:
        return job.connection
    if settings.redis_url is None:
        raise PermanentError("no Redis: run under an RQ worker or set redis_url")
    return connect(settings.redis_url.get_secret_value())


def _new_run(
    settings: Settings, client: redis.Redis, audit: AuditLog, job_id: str, job: Job | None
) -> Run:
    owner = f"{job_id}@{socket.gethostname()}:{os.getpid()}"
    webhook = settings.notify_webhook.get_secret_value() if settings.notify_webhook else None
    return Run(
        settings=settings,
        client=client,
        audit=audit,
        progress=Progress(client, job_id, job),
        leases=Leases(client, owner, settings.lease_ttl, audit),
        notifier=Notifier(webhook, audit),
        job_id=job_id,
        deadline=time.monotonic() + settings.job_timeout - _rollback_reserve(settings),
    )


def _rollback_reserve(settings: Settings) -> float:
    """How early a job stops itself, so its rollback ends before RQ's own timeout.

    The watcher enqueues with RQ's timeout at ``job_timeout``; RQ kills a work-horse that
    outlives it, and a killed job cannot roll back. A fifth of the time, at most 5 min.
    """
    return min(300.0, settings.job_timeout / 5)


class TriggerJob:
    """One execution of ``run_trigger``."""

    def __init__(self, run: Run, request: TriggerRequest) -> None:
        self.run = run
        self.request = request
        self.target = request.target

    def execute(self) -> dict[str, Any]:
        run, started = self.run, time.monotonic()
        run.audit.record(
            "job.started", outcome="started", action=self.request.action, path=self.request.path,
            resumed=run.progress.resumed, checkpoints=run.progress.checkpoints,
        )  # fmt: skip
        DEPLOYMENTS.labels(self.target.value, "started").inc()
        try:
            result = self._steps()
        except Superseded as exc:
            return self._superseded(exc, started)
        except Exception as exc:
            self._fail(exc, started)
            raise DeploymentFailed(str(exc)) from exc
        finally:
            with contextlib.suppress(redis.RedisError):  # the index is only a shortcut
                forget_trigger(run.client, self.target.value, self.request.trigger_id)
            run.close()
        self._succeeded(result, started)
        return result

    def _steps(self) -> dict[str, Any]:
        run = self.run
        if not run.progress.resumed:
            self.check_superseded()
        if run.settings.dry_run:
            self.recheck()
            return self.plan()
        run.leases.acquire(self.target.value, while_waiting=self._waiting)
        self.recheck()
        self._observe_cluster()
        run.notifier.send(
            "started",
            f"Deploying {self.request.sha[:12]} to {self.target} ({self.request.path})",
            trigger_id=self.request.trigger_id, sha=self.request.sha, target=self.target.value,
        )  # fmt: skip
        if self.request.action == "rollback":
            return RollbackJob(run, self.target, self.request.to_revision).steps()
        return self.deploy()

    # Before acting

    def _waiting(self) -> None:
        self.run.keepalive()
        if not self.run.progress.resumed:
            self.check_superseded()

    def check_superseded(self) -> None:
        """Step aside when a newer trigger for the same target is queued or running."""
        order = {
            "target": self.target.value,
            "committed_at": self.request.committed_at,
            "enqueued_at": self.request.enqueued_at,
        }
        newer = newer_trigger(self.run.client, order, exclude=self.run.job_id)
        if newer is not None:
            raise Superseded(
                f"superseded by {newer} for {self.target}, a newer approved trigger; "
                "only the newest one deploys"
            )

    def recheck(self) -> None:
        """The trigger must still be approved and its SHA still on the protected branch."""
        request, settings = self.request, self.run.settings
        try:
            if sha_reachable(request.repo, request.sha, request.branch) is None:
                raise Withdrawn(
                    f"SHA {request.sha[:12]} is no longer reachable from {request.branch}; "
                    "deploying unmerged code is refused"
                )
            tip = branch_tip(request.repo, request.branch)
            trigger, blob = _trigger_at(request, tip)
        except GitError as exc:
            raise PermanentError(f"cannot re-check the trigger in {request.repo}: {exc}") from exc
        env = settings.environment(self.target)
        verdict = check_approval(
            request.repo, request.branch, request.path, tip, trigger,
            settings.policy_for(self.target).value, env.approvers, env.allowed_signers,
        )  # fmt: skip
        if not verdict.approved:
            raise Withdrawn(
                f"{request.path} is no longer approved ({verdict.rule}): {verdict.reason}"
            )
        self.run.trigger = trigger
        self.run.audit.record(
            "trigger.rechecked", outcome="approved", rule=verdict.rule, blob=blob, tip=tip
        )

    def _observe_cluster(self) -> None:
        """On a resume, record what the cluster runs before continuing from the checkpoint."""
        run = self.run
        if not run.progress.resumed:
            return
        observed = {}
        for environment in self.target.stages():
            cluster, env = run.cluster(environment), run.env(environment)
            for component in env.components:
                live = cluster.get(DEPLOYMENT, env.namespace, component.deployment)
                observed[f"{environment}/{component.deployment}"] = _images(live)
        run.audit.record("job.resumed", checkpoints=run.progress.checkpoints, observed=observed)

    # The deploy

    def plan(self) -> dict[str, Any]:
        """Dry run: render every stage and record what would be applied, no cluster needed."""
        run, request = self.run, self.request
        stages = self.target.stages()
        rendered = render_overlays(request.repo, request.sha, run.settings.deploy_path, stages)
        plan: dict[str, Any] = {}
        for environment in stages:
            env = run.env(environment)
            plan[environment.value] = {
                "namespace": env.namespace,
                "objects": [describe(obj) for obj in rendered[environment]],
                "images": {c.deployment: image_for(env, c, request.sha) for c in env.components},
                "canary_steps": list(run.canary().steps)
                if environment is Environment.PRODUCTION
                else [],
            }
        run.audit.record("plan", outcome="dry-run", dry_run=True, plan=plan)
        return {"dry_run": True, "plan": plan}

    def deploy(self) -> dict[str, Any]:
        run, request = self.run, self.request
        stages = self.target.stages()
        with run.timed("render", stages=[s.value for s in stages]):
            run.rendered = render_overlays(
                request.repo, request.sha, run.settings.deploy_path, stages
            )
        revision = 0
        for environment in stages:
            if run.progress.done(f"{environment}:done"):
                continue
            untouched = not any(c.startswith(f"{environment}:") for c in run.progress.checkpoints)
            if untouched and already_running(run, environment):
                run.audit.record(
                    "stage.skipped", stage=environment.value, environment=environment.value,
                    outcome="skipped", reason=f"{environment} already runs {request.sha[:12]}",
                )  # fmt: skip
                continue
            with run.in_stage(environment):
                if environment is Environment.PRODUCTION:
                    revision = canary_stage(run)
                else:
                    revision = plain_stage(run, environment)
            run.progress.mark(f"{environment}:done")
            run.record_environment(environment, revision, request.trigger_id)
            if environment is not self.target:
                run.leases.release(environment.value)
        return {"deployed": request.sha, "target": self.target.value, "revision": revision}

    # Endings

    def _succeeded(self, result: dict[str, Any], started: float) -> None:
        run = self.run
        _trigger_state(run, self.request, "deployed", "")
        DEPLOYMENTS.labels(self.target.value, "succeeded").inc()
        run.audit.record("job.succeeded", outcome="succeeded", duration_ms=_ms(started), **result)
        run.notifier.send(
            "succeeded", f"Deployed {self.request.sha[:12]} to {self.target}",
            trigger_id=self.request.trigger_id, sha=self.request.sha, target=self.target.value,
        )  # fmt: skip

    def _superseded(self, exc: Superseded, started: float) -> dict[str, Any]:
        run = self.run
        _trigger_state(run, self.request, "superseded", str(exc))
        DEPLOYMENTS.labels(self.target.value, "superseded").inc()
        run.audit.record(
            "job.superseded", outcome="superseded", reason=str(exc), duration_ms=_ms(started)
        )
        return {"superseded": True, "reason": str(exc)}

    def _fail(self, exc: Exception, started: float) -> None:
        run, reason = self.run, _reason(exc)
        with contextlib.suppress(redis.RedisError):  # Redis being down must not stop the undo
            run.progress.update(failure_reason=reason)
        actions = self._roll_back(exc, reason)
        _trigger_state(run, self.request, "failed", reason)
        outcome = "rolled_back" if actions else "failed"
        DEPLOYMENTS.labels(self.target.value, outcome).inc()
        run.audit.record(
            "job.failed", outcome="failed", reason=reason, stage=run.stage and run.stage.value,
            rolled_back=actions, duration_ms=_ms(started),
        )  # fmt: skip
        undone = f"; rolled back {run.stage}" if actions else ""
        text = f"Deploy of {self.request.sha[:12]} to {self.target} failed: {reason}{undone}"
        run.notifier.send(
            "failed", text,
            trigger_id=self.request.trigger_id, sha=self.request.sha, target=self.target.value,
            reason=reason, rolled_back=bool(actions),
        )  # fmt: skip

    def _roll_back(self, exc: Exception, reason: str) -> list[dict[str, Any]]:
        """Undo the failing stage's changes, unless another worker now owns the environment."""
        run, stage = self.run, self.run.stage
        if stage is None or isinstance(exc, LeaseLost) or self.request.action == "rollback":
            return []
        run.audit.record("rollback.started", environment=stage.value, reason=reason, intent=True)
        started = time.monotonic()
        actions = roll_back_stage(run, stage)
        failed = [a for a in actions if a["outcome"] == "failed"]
        run.audit.record(
            "rollback.completed", environment=stage.value, actions=actions,
            outcome="partial" if failed else "done", duration_ms=_ms(started),
        )  # fmt: skip
        return actions


class RollbackJob:
    """An explicit rollback of one environment: ``### Action`` or the operator's command."""

    def __init__(self, run: Run, environment: Environment, to_revision: int | None) -> None:
        self.run = run
        self.environment = environment
        self.to_revision = to_revision

    def execute(self) -> dict[str, Any]:
        run, started = self.run, time.monotonic()
        run.audit.record("job.started", outcome="started", action="rollback",
                         to_revision=self.to_revision)  # fmt: skip
        try:
            run.leases.acquire(self.environment.value, while_waiting=run.keepalive)
            result = self.steps()
        except Exception as exc:
            reason = _reason(exc)
            run.progress.update(failure_reason=reason)
            run.audit.record(
                "job.failed", outcome="failed", reason=reason, duration_ms=_ms(started)
            )
            run.notifier.send("failed", f"Rollback of {self.environment} failed: {reason}")
            raise DeploymentFailed(reason) from exc
        finally:
            run.close()
        run.audit.record("job.succeeded", outcome="succeeded", duration_ms=_ms(started), **result)
        run.notifier.send(
            "rollback", f"Rolled {self.environment} back: {result['revisions']}", **result
        )
        return result

    def steps(self) -> dict[str, Any]:
        """Canary off (production), each component back to the wanted revision, gates."""
        run, environment = self.run, self.environment
        cluster, env = run.cluster(environment), run.env(environment)
        with run.in_stage(environment):
            run.audit.record("rollback.started", environment=environment.value,
                             to_revision=self.to_revision, intent=True)  # fmt: skip
            started = time.monotonic()
            if environment is Environment.PRODUCTION:
                _remove_live_canary(run)
            revisions = {}
            for component in env.components:
                revisions[component.deployment] = self._undo(component.deployment)
            for name in revisions:
                wait_for_rollout(cluster, env.namespace, name, deadline=env.progress_deadline,
                                 keepalive=run.keepalive)  # fmt: skip
            run.audit.record(
                "rollback.completed", environment=environment.value, revisions=revisions,
                outcome="done", duration_ms=_ms(started),
            )  # fmt: skip
            gate(run, environment)
        first = next(iter(revisions.values()), 0)
        run.record_environment(environment, first, run.job_id)
        return {"rolled_back": environment.value, "revisions": revisions}

    def _undo(self, name: str) -> int:
        """Roll *name* back once; the chosen revision is kept, so a requeue never goes further."""
        run, env = self.run, self.run.env(self.environment)
        chosen = run.progress.changes.get("rollback", {}).get(name)
        if chosen is None:
            cluster = run.cluster(self.environment)
            live = cluster.get(DEPLOYMENT, env.namespace, name)
            chosen = self.to_revision or _previous_revision(cluster, live)
            run.progress.remember("rollback", name, chosen)
        run.keepalive()
        result = undo(run.cluster(self.environment), env.namespace, name, int(chosen))
        run.audit.record(
            "apply", environment=self.environment.value, deployment=name, rollback=True,
            from_revision=result.from_revision, to_revision=result.to_revision,
            images=result.images, changed=result.changed,
        )  # fmt: skip
        return result.to_revision


def _previous_revision(cluster: Cluster, live: dict[str, Any] | None) -> int:
    if live is None:
        raise PermanentError("the Deployment to roll back does not exist in the cluster")
    replica_sets = owned_replica_sets(cluster, live)
    return revision_of(choose_replica_set(replica_sets, revision_of(live), None))


def _remove_live_canary(run: Run) -> None:
    """An explicit production rollback also ends a canary that may be running."""
    canary = run.env(Environment.PRODUCTION).canary
    refs = [
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": canary.ingress},
        *[
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "name": c.deployment + canary.deployment_suffix}
            for c in run.env(Environment.PRODUCTION).components
        ],
    ]  # fmt: skip
    run.progress.remember("production:canary", "objects", refs)
    removed = remove_canary(run)
    run.audit.record("canary.removed", environment="production", removed=removed)


def _trigger_at(request: TriggerRequest, tip: str) -> tuple[Any, str]:
    """The trigger as the branch tip has it now; withdrawn when the file is gone or invalid."""
    folder = request.path.rsplit("/", 1)[0]
    entry = next((e for e in list_tree(request.repo, tip, folder) if e.path == request.path), None)
    if entry is None:
        raise Withdrawn(f"{request.path} is no longer on {request.branch}; approval withdrawn")
    data = read_blobs(request.repo, [entry.object])[entry.object]
    parsed = parse_trigger(data, request.path)
    if parsed.trigger is None:
        raise Withdrawn(f"{request.path} at {tip[:12]} is no longer a valid trigger")
    return parsed.trigger, entry.object


def _trigger_state(run: Run, request: TriggerRequest, state: str, reason: str) -> None:
    """The trigger's final state for ``status``; the audit log has it even if Redis has not."""
    with contextlib.suppress(redis.RedisError):
        run.client.hset(
            key("trigger", request.trigger_id),
            mapping={"state": state, "reason": reason, "updated_at": str(time.time())},
        )


def _images(live: dict[str, Any] | None) -> dict[str, str] | None:
    return None if live is None else container_images(live)


def _reason(exc: Exception) -> str:
    if isinstance(exc, DeployError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
