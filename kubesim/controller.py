"""A step-driven stand-in for the Deployment controller, acting on the API server's store.

One reconcile pass over a Deployment does what kube-controller-manager would do, in
simplified form:

- find or create the ReplicaSet for the current pod template, named
  `<deployment>-<template hash>` with the `pod-template-hash` label and an owner
  reference; a re-used ReplicaSet (a rollback) gets the next revision, as in Kubernetes;
- once the new ReplicaSet is ready, scale the old ones to zero;
- write the Deployment's revision annotation and its status: observedGeneration,
  replica counts and the Progressing and Available conditions.

A new ReplicaSet becomes ready on the first pass after the one that created it, and no
sooner than `rollout_delay` seconds after it; a Deployment marked stuck never becomes
ready and, after spec.progressDeadlineSeconds times `time_factor`, reports
ProgressDeadlineExceeded. The controller writes to the store directly, so its writes are
not in the request log, which then holds only what the code under test sent.

In `auto` mode a background thread reconciles every `interval` seconds; in `manual` mode
the test calls step(). Control over HTTP, on the API server:

    GET  /_sim/controller
    POST /_sim/controller       {"mode": "auto", "rollout_delay": 0.2, "time_factor": 0.01,
                                 "stuck": {"web": true, "prod/api": false}}
    POST /_sim/controller/step  -> {"writes": 3}
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from kubesim._http import Closeable
from kubesim.apiserver import ApiServer
from kubesim.resources import DEPLOYMENTS, REPLICASETS
from kubesim.store import ApiError, Object, Query, Store

log = logging.getLogger(__name__)

Mode = Literal["auto", "manual"]

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
TEMPLATE_HASH = "pod-template-hash"

# The alphabet Kubernetes uses for generated name suffixes: no vowels, no look-alikes.
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: Object) -> str:
    """A stable short hash of a pod template, for ReplicaSet names and labels."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    number = int.from_bytes(digest[:8], "big")
    letters = []
    for _ in range(10):
        number, index = divmod(number, len(_SAFE_ALPHABET))
        letters.append(_SAFE_ALPHABET[index])
    return "".join(letters)


def revision_of(obj: Object) -> int:
    return int((obj["metadata"].get("annotations") or {}).get(REVISION, "0"))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Rollout:
    """What the controller remembers about a Deployment's newest ReplicaSet."""

    replica_set: str
    started: float  # time.monotonic() when this ReplicaSet became the new one
    passes: int = 0  # reconcile passes that have seen it


@dataclass(frozen=True)
class Progress:
    """The outcome of one pass for one Deployment: is the new ReplicaSet ready, or late?"""

    replica_set: Object
    ready: bool
    deadline_exceeded: bool
    created: bool


class DeploymentController(Closeable):
    """Reconciles Deployments into ReplicaSets and status, by hand (step) or in a thread."""

    def __init__(
        self,
        server: ApiServer,
        *,
        mode: Mode = "manual",
        rollout_delay: float = 0.0,
        time_factor: float = 1.0,
        interval: float = 0.02,
    ) -> None:
        self.store: Store = server.store
        self.mode: Mode = mode
        self.rollout_delay = rollout_delay
        self.time_factor = time_factor
        self.interval = interval
        self._stuck: set[str] = set()
        self._rollouts: dict[tuple[str, str], Rollout] = {}
        self._step_lock = threading.Lock()
        self._stop = threading.Event()
        self._add_control_routes(server)
        self._thread = threading.Thread(target=self._run, name="kubesim-controller", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def set_mode(self, mode: Mode) -> None:
        if mode not in ("auto", "manual"):
            raise ValueError(f"controller mode must be 'auto' or 'manual', not {mode!r}")
        self.mode = mode

    def set_stuck(self, name: str, stuck: bool = True, *, namespace: str | None = None) -> None:
        """Make a Deployment (in any namespace, or only in `namespace`) never become ready."""
        key = f"{namespace}/{name}" if namespace else name
        if stuck:
            self._stuck.add(key)
        else:
            self._stuck.discard(key)

    def is_stuck(self, namespace: str, name: str) -> bool:
        return name in self._stuck or f"{namespace}/{name}" in self._stuck

    def step(self) -> int:
        """Reconcile every Deployment once; returns how many objects changed."""
        with self._step_lock:
            before = self.store.resource_version
            deployments, _ = self.store.select(Query(DEPLOYMENTS))
            for deployment in deployments:
                try:
                    self._reconcile(deployment)
                except ApiError as error:
                    # Deleted or changed under our feet; the next pass sees the new state.
                    log.debug("reconcile of %s skipped: %s", deployment["metadata"]["name"], error)
            self._forget_deleted(deployments)
            return self.store.resource_version - before

    def settle(self, max_passes: int = 10) -> int:
        """Step until a pass changes nothing (or `max_passes`); returns the passes made."""
        for passes in range(1, max_passes + 1):
            if self.step() == 0:
                return passes
        return max_passes

    def state(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "rollout_delay": self.rollout_delay,
            "time_factor": self.time_factor,
            "stuck": sorted(self._stuck),
        }

    def configure(self, settings: dict[str, Any]) -> None:
        """Apply control settings: mode, rollout_delay, time_factor, stuck {name: bool}."""
        unknown = set(settings) - {"mode", "rollout_delay", "time_factor", "stuck"}
        if unknown:
            raise ValueError(f"unknown controller settings {sorted(unknown)}")
        if "mode" in settings:
            self.set_mode(settings["mode"])
        self.rollout_delay = float(settings.get("rollout_delay", self.rollout_delay))
        self.time_factor = float(settings.get("time_factor", self.time_factor))
        for key, stuck in (settings.get("stuck") or {}).items():
            namespace, _, name = key.rpartition("/")
            self.set_stuck(name, bool(stuck), namespace=namespace or None)

    # The loop

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.mode == "auto":
                self.step()

    def _add_control_routes(self, server: ApiServer) -> None:
        def configure(body: Any, _: dict[str, str]) -> tuple[int, Any]:
            self.configure(body or {})
            return 200, self.state()

        server.add_control_route("GET", "/_sim/controller", lambda *_: (200, self.state()))
        server.add_control_route("POST", "/_sim/controller", configure)
        server.add_control_route(
            "POST", "/_sim/controller/step", lambda *_: (200, {"writes": self.step()})
        )

    # One Deployment

    def _reconcile(self, deployment: Object) -> None:
        progress = self._progress(deployment)
        self._scale_replica_sets(deployment, progress)
        self._annotate_revision(deployment, revision_of(progress.replica_set))
        self._write_status(deployment, progress)

    def _owned_replica_sets(self, deployment: Object) -> list[Object]:
        uid = deployment["metadata"]["uid"]
        replica_sets, _ = self.store.select(Query(REPLICASETS, deployment["metadata"]["namespace"]))
        return [
            rs
            for rs in replica_sets
            if any(ref.get("uid") == uid for ref in rs["metadata"].get("ownerReferences") or [])
        ]

    def _progress(self, deployment: Object) -> Progress:
        metadata, spec = deployment["metadata"], deployment["spec"]
        owned = self._owned_replica_sets(deployment)
        pod_hash = template_hash(spec.get("template") or {})
        current = next(
            (rs for rs in owned if rs["metadata"]["labels"].get(TEMPLATE_HASH) == pod_hash), None
        )
        newest = max((revision_of(rs) for rs in owned), default=0)
        created = current is None
        if current is None:
            current = self._create_replica_set(deployment, pod_hash, newest + 1)
        elif revision_of(current) < newest:
            current = self._promote_revision(current, newest + 1)

        key = (metadata["namespace"], metadata["name"])
        rollout = self._rollouts.get(key)
        if rollout is None or rollout.replica_set != current["metadata"]["name"]:
            rollout = self._rollouts[key] = Rollout(current["metadata"]["name"], time.monotonic())
        elapsed = time.monotonic() - rollout.started
        ready = (
            not self.is_stuck(*key)
            and (rollout.passes >= 1 or spec["replicas"] == 0)
            and elapsed >= self.rollout_delay
        )
        rollout.passes += 1
        deadline = spec.get("progressDeadlineSeconds", 600) * self.time_factor
        return Progress(current, ready, not ready and elapsed >= deadline, created)

    def _create_replica_set(self, deployment: Object, pod_hash: str, revision: int) -> Object:
        metadata, spec = deployment["metadata"], deployment["spec"]
        template = json.loads(json.dumps(spec.get("template") or {}))
        template.setdefault("metadata", {}).setdefault("labels", {})[TEMPLATE_HASH] = pod_hash
        selector = json.loads(json.dumps(spec["selector"]))
        selector.setdefault("matchLabels", {})[TEMPLATE_HASH] = pod_hash
        owner = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": metadata["name"],
            "uid": metadata["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        replica_set = {
            "metadata": {
                "name": f"{metadata['name']}-{pod_hash}",
                "namespace": metadata["namespace"],
                "labels": template["metadata"]["labels"],
                "annotations": {REVISION: str(revision)},
                "ownerReferences": [owner],
            },
            "spec": {"replicas": spec["replicas"], "selector": selector, "template": template},
        }
        return self.store.create(REPLICASETS, metadata["namespace"], replica_set)

    def _promote_revision(self, replica_set: Object, revision: int) -> Object:
        """A rollback to an old template re-uses its ReplicaSet under the next revision."""

        def promote(rs: Object) -> Object:
            annotations = rs["metadata"].setdefault("annotations", {})
            history = [h for h in annotations.get(REVISION_HISTORY, "").split(",") if h]
            annotations[REVISION_HISTORY] = ",".join([*history, annotations.get(REVISION, "0")])
            annotations[REVISION] = str(revision)
            return rs

        metadata = replica_set["metadata"]
        return self.store.mutate(REPLICASETS, metadata["namespace"], metadata["name"], promote)

    def _scale_replica_sets(self, deployment: Object, progress: Progress) -> None:
        """The new ReplicaSet gets the desired replicas; old ones go to zero once it is ready."""
        desired = deployment["spec"]["replicas"]
        current_name = progress.replica_set["metadata"]["name"]
        for rs in self._owned_replica_sets(deployment):
            if rs["metadata"]["name"] == current_name:
                ready = desired if progress.ready else 0
                self._set_replicas(rs, desired, ready)
            elif progress.ready:
                self._set_replicas(rs, 0, 0)

    def _set_replicas(self, rs: Object, replicas: int, ready: int) -> None:
        namespace, name = rs["metadata"]["namespace"], rs["metadata"]["name"]

        def scale(live: Object) -> Object:
            live["spec"]["replicas"] = replicas
            return live

        def report(live: Object) -> Object:
            live["status"] = {
                "replicas": replicas,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "fullyLabeledReplicas": replicas,
                "observedGeneration": live["metadata"]["generation"],
            }
            return live

        self.store.mutate(REPLICASETS, namespace, name, scale)
        self.store.mutate(REPLICASETS, namespace, name, report, subresource="status")

    def _annotate_revision(self, deployment: Object, revision: int) -> None:
        def annotate(live: Object) -> Object:
            live["metadata"].setdefault("annotations", {})[REVISION] = str(revision)
            return live

        metadata = deployment["metadata"]
        self.store.mutate(DEPLOYMENTS, metadata["namespace"], metadata["name"], annotate)

    def _write_status(self, deployment: Object, progress: Progress) -> None:
        metadata = deployment["metadata"]
        replica_sets = self._owned_replica_sets(deployment)
        counts = {
            "replicas": sum(rs["spec"]["replicas"] for rs in replica_sets),
            "updatedReplicas": progress.replica_set["spec"]["replicas"],
            "readyReplicas": sum(rs["status"].get("readyReplicas", 0) for rs in replica_sets),
            "availableReplicas": sum(
                rs["status"].get("availableReplicas", 0) for rs in replica_sets
            ),
        }
        unavailable = counts["replicas"] - counts["availableReplicas"]

        def report(live: Object) -> Object:
            old_conditions = (live.get("status") or {}).get("conditions") or []
            live["status"] = {
                "observedGeneration": metadata["generation"],
                **counts,
                **({"unavailableReplicas": unavailable} if unavailable > 0 else {}),
                "conditions": [
                    _condition(old_conditions, *self._available(deployment, counts)),
                    _condition(old_conditions, *_progressing(progress)),
                ],
            }
            return live

        self.store.mutate(
            DEPLOYMENTS, metadata["namespace"], metadata["name"], report, subresource="status"
        )

    @staticmethod
    def _available(deployment: Object, counts: dict[str, int]) -> tuple[str, str, str, str]:
        if counts["availableReplicas"] >= deployment["spec"]["replicas"]:
            return (
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        return (
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )

    def _forget_deleted(self, deployments: list[Object]) -> None:
        alive = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in deployments}
        for key in set(self._rollouts) - alive:
            del self._rollouts[key]


def _progressing(progress: Progress) -> tuple[str, str, str, str]:
    name = progress.replica_set["metadata"]["name"]
    if progress.ready:
        return (
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            f'ReplicaSet "{name}" has successfully progressed.',
        )
    if progress.deadline_exceeded:
        return (
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            f'ReplicaSet "{name}" has timed out progressing.',
        )
    reason = "NewReplicaSetCreated" if progress.created else "ReplicaSetUpdated"
    return "Progressing", "True", reason, f'ReplicaSet "{name}" is progressing.'


def _condition(
    old_conditions: list[Object], kind: str, status: str, reason: str, message: str
) -> Object:
    """A condition that keeps its old timestamps while its status and reason stand."""
    old = next((c for c in old_conditions if c.get("type") == kind), {})
    now = _now()
    unchanged_status = old.get("status") == status
    unchanged = unchanged_status and old.get("reason") == reason
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastUpdateTime": old["lastUpdateTime"] if unchanged else now,
        "lastTransitionTime": old["lastTransitionTime"] if unchanged_status else now,
    }
