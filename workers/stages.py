"""The stages of a deploy: apply an overlay, wait for it, gate it; in production, a canary.

Each step is checkpointed when it completes, and each write first looks at what the cluster
already runs, so a requeued job continues where the crashed one stopped and never applies
or promotes the same thing twice.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import redis

from monkeytown_deploy.metrics import ANALYSIS_VERDICTS, CANARY_WEIGHT
from triggers import Environment
from workers.analysis import Judge, StepResult, Verdict, providers_for
from workers.context import Run
from workers.errors import PermanentError
from workers.gates import GATES, check_gate
from workers.kube import DEPLOYMENT, INGRESS, Cluster, container_images, describe, kind_of
from workers.render import image_for, with_images
from workers.revisions import snapshot, undo
from workers.rollout import wait_for_rollout

Obj = dict[str, Any]
CANARY = "nginx.ingress.kubernetes.io/canary"
CANARY_WEIGHT_ANNOTATION = "nginx.ingress.kubernetes.io/canary-weight"


def _name(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def stable_names(run: Run, environment: Environment) -> list[str]:
    return [component.deployment for component in run.env(environment).components]


def is_canary_object(run: Run, obj: Obj) -> bool:
    canary = run.env(Environment.PRODUCTION).canary
    name = _name(obj)
    return name.endswith(canary.deployment_suffix) or (
        obj.get("kind") == "Ingress" and name == canary.ingress
    )


def already_running(run: Run, environment: Environment) -> bool:
    """True when *environment* already runs this job's SHA and nothing is left in flight.

    Every stable component must run the SHA's image, fully rolled out, and in production no
    canary may remain. Redis can forget a trigger (a restart without its data) while the
    cluster remembers: this is what keeps a re-enqueued trigger from deploying again.
    """
    cluster, env = run.cluster(environment), run.env(environment)
    for component in env.components:
        live = cluster.get(DEPLOYMENT, env.namespace, component.deployment)
        if live is None or not _rolled_out(live):
            return False
        if container_images(live).get(component.container) != image_for(env, component, run.sha):
            return False
    if environment is Environment.PRODUCTION:
        canary = env.canary
        for name in {c.deployment + canary.deployment_suffix for c in env.components}:
            if cluster.get(DEPLOYMENT, env.namespace, name) is not None:
                return False
    return True


def _rolled_out(deployment: Obj) -> bool:
    status, spec = deployment.get("status") or {}, deployment.get("spec") or {}
    wanted = spec.get("replicas", 1)
    generation = deployment.get("metadata", {}).get("generation", 0)
    return bool(
        status.get("observedGeneration", 0) >= generation
        and status.get("updatedReplicas", 0) >= wanted
        and status.get("availableReplicas", 0) >= wanted
    )


# Plain stages: development and staging


def plain_stage(run: Run, environment: Environment) -> int:
    """Apply, roll out and gate *environment*; returns the first component's revision."""
    objects = with_images(run.rendered[environment], run.env(environment), run.sha)
    stable = [o for o in objects if o.get("kind") == "Deployment"]
    step = f"{environment}:applied"
    if not run.progress.done(step):
        remember_stable(run, environment)
        apply_objects(run, environment, objects)
        run.progress.mark(step)
    revision = roll_out(run, environment, [_name(o) for o in stable], f"{environment}:rolled-out")
    gate(run, environment)
    return revision


def remember_stable(run: Run, environment: Environment) -> None:
    """Note each stable Deployment's revision and images before this job changes them."""
    cluster, namespace = run.cluster(environment), run.env(environment).namespace
    for name in stable_names(run, environment):
        before = snapshot(cluster.get(DEPLOYMENT, namespace, name))
        run.progress.remember(f"{environment}:stable", name, before)


def apply_objects(run: Run, environment: Environment, objects: list[Obj]) -> None:
    cluster, namespace = run.cluster(environment), run.env(environment).namespace
    for obj in objects:
        kind_of(obj)  # an unknown kind fails before anything is written
    run.keepalive()
    with run.timed("apply", environment=environment.value) as record:
        for obj in objects:
            cluster.apply(obj, namespace)
        record["objects"] = [describe(obj) for obj in objects]
        record["images"] = {
            _name(o): container_images(o) for o in objects if o.get("kind") == "Deployment"
        }


def roll_out(run: Run, environment: Environment, names: list[str], step: str) -> int:
    """Wait for every named Deployment; returns the first one's revision."""
    cluster, env = run.cluster(environment), run.env(environment)
    revision = 0
    for name in names:
        run.audit.record("rollout.wait", environment=environment.value, deployment=name)
        with run.timed("rollout.ready", environment=environment.value, deployment=name) as rec:
            deployment = wait_for_rollout(
                cluster, env.namespace, name, deadline=env.progress_deadline,
                keepalive=run.keepalive,
            )  # fmt: skip
            revision = revision or _revision(deployment)
            rec["revision"] = _revision(deployment)
    run.progress.mark(step)
    return revision


def _revision(deployment: Obj) -> int:
    annotations = deployment["metadata"].get("annotations") or {}
    return int(annotations.get("deployment.kubernetes.io/revision", "0") or 0)


def gate(run: Run, environment: Environment) -> None:
    """The health and smoke gates; a failed gate is permanent (the rollback follows)."""
    step = f"{environment}:gated"
    if run.progress.done(step):
        return
    env = run.env(environment)
    if env.base_url is None:
        run.audit.record("gate.skipped", environment=environment.value, reason="no base_url")
        run.progress.mark(step)
        return
    for each in GATES:
        run.keepalive()
        started = time.monotonic()
        problem = check_gate(each, env.base_url, env.gate_timeout)
        run.audit.record(
            "gate.failed" if problem else "gate.passed", environment=environment.value,
            gate=each.name, outcome="failed" if problem else "passed", reason=problem,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )  # fmt: skip
        if problem:
            raise PermanentError(f"gate {each.name} failed in {environment}: {problem}")
    run.progress.mark(step)


# Production: the canary


def canary_stage(run: Run) -> int:
    """Canary, analysis at each weight, promotion, clean-up, gates; returns the revision."""
    production = Environment.PRODUCTION
    env = run.env(production)
    objects = with_images(run.rendered[production], env, run.sha)
    canary_objects = [o for o in objects if is_canary_object(run, o)]
    names = stable_names(run, production)
    stable = [o for o in objects if o.get("kind") == "Deployment" and _name(o) in names]
    others = [o for o in objects if o not in canary_objects and o not in stable]
    if not any(o.get("kind") == "Ingress" for o in canary_objects):
        raise PermanentError(
            f"the production overlay at {run.sha[:12]} has no canary Ingress "
            f'{env.canary.ingress!r}; add it (canary: "true", canary-weight: "0")'
        )
    if not run.progress.done("production:canary-applied"):
        refs = [_canary_ref(o) for o in canary_objects]
        run.progress.remember("production:canary", "objects", refs)
        apply_objects(run, production, others + [_at_weight_zero(o) for o in canary_objects])
        run.progress.mark("production:canary-applied")
    canary_deployments = [_name(o) for o in canary_objects if o.get("kind") == "Deployment"]
    if not run.progress.done("production:canary-ready"):
        roll_out(run, production, canary_deployments, "production:canary-ready")
    for weight in run.canary().steps:
        step = f"production:step-{weight}"
        if run.progress.done(step):
            continue
        set_weight(run, weight)
        result = analyse(run, weight)
        if not result.passed:
            raise PermanentError(f"canary analysis failed at weight {weight}%: {result.reason}")
        run.progress.mark(step)
    return promote(run, stable)


def _canary_ref(obj: Obj) -> dict[str, str]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": _name(obj)}


def _at_weight_zero(obj: Obj) -> Obj:
    """The canary Ingress applies at weight 0: traffic moves only with the steps."""
    if obj.get("kind") != "Ingress":
        return obj
    metadata = dict(obj["metadata"])
    metadata["annotations"] = {
        **(metadata.get("annotations") or {}), CANARY: "true", CANARY_WEIGHT_ANNOTATION: "0"
    }  # fmt: skip
    return {**obj, "metadata": metadata}


def set_weight(run: Run, weight: int) -> None:
    """Move canary traffic to *weight* percent, writing only when the weight differs."""
    production = Environment.PRODUCTION
    cluster, env = run.cluster(production), run.env(production)
    run.keepalive()
    with run.timed("canary.step", environment=production.value, weight=weight) as record:
        record["changed"] = _write_weight(cluster, env.namespace, env.canary.ingress, weight)
    CANARY_WEIGHT.labels(production.value).set(weight)
    run.progress.update(step=f"weight-{weight}", canary_weight=weight)


def _write_weight(cluster: Cluster, namespace: str, ingress: str, weight: int) -> bool:
    live = cluster.get(INGRESS, namespace, ingress)
    if live is None:
        return False
    annotations = live["metadata"].get("annotations") or {}
    if annotations.get(CANARY_WEIGHT_ANNOTATION) == str(weight):
        return False
    patch = {"metadata": {"annotations": {CANARY_WEIGHT_ANNOTATION: str(weight)}}}
    cluster.patch(INGRESS, namespace, ingress, patch)
    return True


def analyse(run: Run, weight: int) -> StepResult:
    """Sample the metrics over the step's window; stop at the first sample over the limit."""
    production = Environment.PRODUCTION
    env, canary = run.env(production), run.canary()
    judge = Judge(canary, fail_closed=True)  # the canary only runs in production
    providers = providers_for(env.metrics, env.base_url)
    result, failures = StepResult(passed=True), 0
    for index in range(1, canary.samples + 1):
        run.sleep(canary.analysis_interval)
        sample = judge.judge([provider.read() for provider in providers])
        result.samples.append(sample)
        ANALYSIS_VERDICTS.labels(production.value, sample.verdict.value).inc()
        run.audit.record(
            "analysis.sample", environment=production.value, weight=weight, sample=index,
            outcome=sample.verdict.value, **sample.fields(),
        )  # fmt: skip
        failures += judge.counts_as_failure(sample)
        if failures > canary.failure_limit:
            verdict = sample.verdict.value.replace("_", " ")  # "fail" or "no data"
            reason = f"{verdict}: {'; '.join(sample.reasons)}"
            if sample.verdict is Verdict.NO_DATA:
                reason += " (no data fails closed in production)"
            result = StepResult(False, result.samples, reason)
            break
    run.audit.record(
        "analysis.verdict", environment=production.value, weight=weight,
        outcome="passed" if result.passed else "failed", failed_samples=failures,
        samples=len(result.samples), reason=result.reason or None,
    )  # fmt: skip
    return result


def promote(run: Run, stable: list[Obj]) -> int:
    """Stable Deployments to the new image, canary traffic to 0 and canary gone, gates."""
    production = Environment.PRODUCTION
    cluster, env = run.cluster(production), run.env(production)
    if not run.progress.done("production:promoted"):
        remember_stable(run, production)
        run.keepalive()
        with run.timed("promote", environment=production.value) as record:
            record["written"] = [
                _name(o) for o in stable if _promote_one(cluster, env.namespace, o)
            ]
            record["images"] = {_name(o): container_images(o) for o in stable}
        run.progress.mark("production:promoted")
    revision = roll_out(run, production, [_name(o) for o in stable], "production:rolled-out")
    if not run.progress.done("production:canary-removed"):
        remove_canary(run)
        run.progress.mark("production:canary-removed")
    gate(run, production)
    return revision


def _promote_one(cluster: Cluster, namespace: str, deployment: Obj) -> bool:
    """Apply the stable Deployment unless it already runs these images (a resumed job)."""
    live = cluster.get(DEPLOYMENT, namespace, _name(deployment))
    if live is not None and container_images(live) == container_images(deployment):
        return False
    cluster.apply(deployment, namespace)
    return True


def remove_canary(run: Run) -> list[str]:
    """Weight 0 first, so no request reaches a canary that is going away; then delete."""
    production = Environment.PRODUCTION
    cluster, env = run.cluster(production), run.env(production)
    refs = run.progress.changes.get("production:canary", {}).get("objects") or []
    _write_weight(cluster, env.namespace, env.canary.ingress, 0)
    CANARY_WEIGHT.labels(production.value).set(0)
    removed = []
    for ref in refs:
        if cluster.delete(kind_of(ref), env.namespace, ref["name"]):
            removed.append(f"{ref['kind']}/{ref['name']}")
    with contextlib.suppress(redis.RedisError):  # job meta only; the cluster is what counts
        run.progress.update(canary_weight=0)
    return removed


# Rolling back


def roll_back_stage(run: Run, environment: Environment) -> list[dict[str, Any]]:
    """Undo what this job changed in *environment*; every action is tried, each reported."""
    actions: list[dict[str, Any]] = []
    if environment is Environment.PRODUCTION and run.progress.changes.get("production:canary"):
        actions.append(_attempt("canary removed", lambda: remove_canary(run)))
    before = run.progress.changes.get(f"{environment}:stable", {})
    cluster, env = run.cluster(environment), run.env(environment)
    for name, snap in before.items():
        if snap is None:
            actions.append({"action": f"{name} left in place", "outcome": "no previous revision"})
            continue
        live = cluster.get(DEPLOYMENT, env.namespace, name)
        if live is not None and container_images(live) == snap["images"]:
            continue  # never changed by this job
        actions.append(
            _attempt(f"{name} to revision {snap['revision']}",
                     lambda n=name, r=snap["revision"]: _undo_and_wait(run, environment, n, r))
        )  # fmt: skip
    return actions


def _undo_and_wait(run: Run, environment: Environment, name: str, revision: int) -> int:
    cluster, env = run.cluster(environment), run.env(environment)
    result = undo(cluster, env.namespace, name, revision)
    wait_for_rollout(cluster, env.namespace, name, deadline=env.progress_deadline)
    return result.to_revision


def _attempt(action: str, do: Any) -> dict[str, Any]:
    try:
        return {"action": action, "outcome": "done", "result": do()}
    except Exception as error:  # a rollback keeps going: one failed undo must not stop the rest
        return {"action": action, "outcome": "failed", "reason": str(error)}
