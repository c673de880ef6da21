"""Deployment revisions: what ran before this job, and going back to it.

A rollback does what ``kubectl rollout undo`` does: it finds the ReplicaSet of the wanted
revision among those the Deployment owns and writes that ReplicaSet's pod template back
into the Deployment, which the controller then rolls out as the next revision.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from workers.errors import PermanentError
from workers.kube import DEPLOYMENT, JSON_PATCH, REPLICASET, Cluster, container_images, revision_of

Obj = dict[str, Any]
TEMPLATE_HASH = "pod-template-hash"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"


@dataclass(frozen=True)
class Undo:
    """The outcome of one rollback of one Deployment."""

    deployment: str
    from_revision: int
    to_revision: int
    images: dict[str, str]
    changed: bool


def snapshot(deployment: Obj | None) -> dict[str, Any] | None:
    """What a rollback needs to know of a Deployment before a job changes it."""
    if deployment is None:
        return None
    return {"revision": revision_of(deployment), "images": container_images(deployment)}


def owned_replica_sets(cluster: Cluster, deployment: Obj) -> list[Obj]:
    labels = deployment["spec"]["selector"].get("matchLabels") or {}
    selector = ",".join(f"{name}={value}" for name, value in sorted(labels.items()))
    namespace = deployment["metadata"]["namespace"]
    uid = deployment["metadata"].get("uid")
    return [
        rs
        for rs in cluster.list(REPLICASET, namespace, selector)
        if any(ref.get("uid") == uid for ref in rs["metadata"].get("ownerReferences") or [])
    ]


def _revisions(rs: Obj) -> set[int]:
    annotations = rs["metadata"].get("annotations") or {}
    history = [h for h in annotations.get(REVISION_HISTORY, "").split(",") if h.strip()]
    return {revision_of(rs), *(int(h) for h in history)}


def _template(rs: Obj) -> Obj:
    template: Obj = copy.deepcopy(rs["spec"]["template"])
    template.get("metadata", {}).get("labels", {}).pop(TEMPLATE_HASH, None)
    return template


def choose_replica_set(replica_sets: list[Obj], current: int, wanted: int | None) -> Obj:
    """The ReplicaSet of revision *wanted*, or of the newest revision before *current*."""
    if wanted is not None:
        found = [rs for rs in replica_sets if wanted in _revisions(rs)]
        if not found:
            known = sorted(r for rs in replica_sets for r in _revisions(rs))
            raise PermanentError(
                f"revision {wanted} is not in the history (known revisions: {known}); "
                "pick one of those for To-Revision"
            )
        return found[0]
    older = [rs for rs in replica_sets if revision_of(rs) < current]
    if not older:
        raise PermanentError(
            f"no revision before {current} to roll back to; the Deployment has no history"
        )
    return max(older, key=revision_of)


def undo(cluster: Cluster, namespace: str, name: str, to_revision: int | None) -> Undo:
    """Put revision *to_revision* (or the previous one) back into Deployment *name*.

    Writes nothing when the Deployment already runs that template, so a requeued rollback
    never steps back twice.
    """
    deployment = cluster.get(DEPLOYMENT, namespace, name)
    if deployment is None:
        raise PermanentError(f"Deployment {namespace}/{name} does not exist; nothing to roll back")
    current = revision_of(deployment)
    target = choose_replica_set(owned_replica_sets(cluster, deployment), current, to_revision)
    template = _template(target)
    live = copy.deepcopy(deployment["spec"]["template"])
    live.get("metadata", {}).get("labels", {}).pop(TEMPLATE_HASH, None)
    changed = template != live
    if changed:
        operation = [{"op": "replace", "path": "/spec/template", "value": template}]
        cluster.patch(DEPLOYMENT, namespace, name, operation, content_type=JSON_PATCH)
    images = {c["name"]: c.get("image", "") for c in template.get("spec", {}).get("containers", [])}
    return Undo(name, current, revision_of(target), images, changed)
