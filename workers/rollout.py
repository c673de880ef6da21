"""Waiting for a Deployment's rollout: generation observed, replicas updated and available.

The wait fails fast when the Deployment reports ``Progressing=False`` with
``ProgressDeadlineExceeded`` (the controller gave up), and fails on its own deadline when
the cluster never says anything useful.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from workers.errors import PermanentError
from workers.kube import DEPLOYMENT, Cluster

Obj = dict[str, Any]
FIRST_POLL = 0.02
LONGEST_POLL = 1.0


def rollout_problem(deployment: Obj) -> str | None:
    """Why the rollout is not done yet (None when it is); raises when it cannot progress."""
    spec, status = deployment.get("spec", {}), deployment.get("status") or {}
    name = deployment["metadata"]["name"]
    wanted = int(spec.get("replicas", 1))
    generation = deployment["metadata"].get("generation", 0)
    if status.get("observedGeneration", 0) < generation:
        # Conditions still describe the previous generation (a rollback after a stuck
        # rollout starts out with the old ProgressDeadlineExceeded): not ours to judge yet.
        return f"generation {generation} not observed yet"
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "Progressing"
            and condition.get("status") == "False"
            and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            raise PermanentError(
                f"Deployment {name} cannot progress: {condition.get('message', '')} "
                "(ProgressDeadlineExceeded); check its pods' events and image"
            )
    if status.get("updatedReplicas", 0) < wanted:
        return f"{status.get('updatedReplicas', 0)} of {wanted} replicas updated"
    if status.get("replicas", 0) > status.get("updatedReplicas", 0):
        return f"{status.get('replicas', 0) - status.get('updatedReplicas', 0)} old replicas left"
    if status.get("availableReplicas", 0) < wanted:
        return f"{status.get('availableReplicas', 0)} of {wanted} replicas available"
    return None


def wait_for_rollout(
    cluster: Cluster,
    namespace: str,
    name: str,
    *,
    deadline: float,
    keepalive: Callable[[], None] = lambda: None,
) -> Obj:
    """Poll until the rollout is done and return the Deployment; *deadline* is in seconds.

    *keepalive* runs between polls (it checks the lease and the job deadline).
    """
    started = time.monotonic()
    poll = FIRST_POLL
    while True:
        deployment = cluster.get(DEPLOYMENT, namespace, name)
        if deployment is None:
            raise PermanentError(f"Deployment {namespace}/{name} vanished during its rollout")
        problem = rollout_problem(deployment)
        if problem is None:
            return deployment
        if time.monotonic() - started > deadline:
            raise PermanentError(
                f"Deployment {namespace}/{name} missed its progress deadline of {deadline:.0f}s: "
                f"{problem}; raise progress_deadline or look at why pods do not start"
            )
        keepalive()
        time.sleep(poll)
        poll = min(poll * 2, LONGEST_POLL)
