"""The object store behind the simulated API server: versioned objects and a watch history.

Every write takes one lock, bumps a global resourceVersion counter and appends an event
to a bounded history that watches read from. A write that changes nothing keeps the
object's resourceVersion and records no event, as on a real server; the controller
relies on that to reconcile every few milliseconds without flooding watches.
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubesim.patches import FieldPath, PatchError, field_paths, remove_field, strategic_merge
from kubesim.resources import (
    DEPLOYMENTS,
    NAMESPACES,
    ResourceType,
    apply_defaults,
)
from kubesim.selectors import (
    SelectorError,
    label_selector_from_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)

Object = dict[str, Any]
ObjectKey = tuple[ResourceType, str, str]  # (type, namespace or "", name)

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class ApiError(Exception):
    """A request the API server refuses; rendered as a `Status` object with the same code."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        rt: ResourceType | None = None,
        name: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.rt, self.name = rt, name
        self.headers = headers or {}

    def status(self) -> Object:
        details: Object = {"name": self.name} if self.name else {}
        if self.rt:
            details.update(group=self.rt.group, kind=self.rt.plural)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": details,
            "code": self.code,
        }


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified_name} "{name}" not found', rt=rt, name=name)


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    message = f'Operation cannot be fulfilled on {rt.qualified_name} "{name}": {why}'
    return ApiError(409, "Conflict", message, rt=rt, name=name)


def invalid(rt: ResourceType, name: str, why: str) -> ApiError:
    message = f'{rt.kind} "{name}" is invalid: {why}'
    return ApiError(422, "Invalid", message, rt=rt, name=name)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


STALE_VERSION = "the object has been modified; please apply your changes to the latest version"


@dataclass(frozen=True)
class WatchEvent:
    """One change to one object, as a watch stream reports it."""

    resource_version: int
    rt: ResourceType
    type: str  # ADDED, MODIFIED or DELETED
    obj: Object


@dataclass(frozen=True)
class Query:
    """Which objects a list or a watch wants: a type, a namespace (None: all) and selectors."""

    rt: ResourceType
    namespace: str | None = None
    label_selector: str = ""
    field_selector: str = ""

    def matcher(self) -> Callable[[Object], bool]:
        try:
            requirements = parse_label_selector(self.label_selector)
            field_matches = parse_field_selector(self.field_selector)
        except SelectorError as error:
            raise bad_request(str(error)) from error
        return lambda obj: (
            (self.namespace is None or obj["metadata"].get("namespace") == self.namespace)
            and labels_match(requirements, obj["metadata"].get("labels"))
            and field_matches(obj)
        )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _content(obj: Object) -> Object:
    """What generation tracks: everything but metadata and status (spec, data, ...)."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _without_version(obj: Object) -> Object:
    stripped = copy.deepcopy(obj)
    stripped["metadata"].pop("resourceVersion", None)
    return stripped


def _render_path(path: FieldPath) -> str:
    return "".join(
        f".{step}" if isinstance(step, str) else f"[{step[0]}={step[1]!r}]" for step in path
    )


class Store:
    """Thread-safe objects by (type, namespace, name), with a bounded history of changes.

    With `strict_namespaces` False (the default) a namespaced create in a namespace that
    does not exist creates the Namespace first, so tests need not; with True it answers
    404 like a real server.
    """

    def __init__(self, *, history: int = 10_000, strict_namespaces: bool = False) -> None:
        self.strict_namespaces = strict_namespaces
        self.changed = threading.Condition(threading.RLock())
        self.closed = False
        self._objects: dict[ObjectKey, Object] = {}
        self._revision = 0
        self._events: deque[WatchEvent] = deque(maxlen=history)
        self._applied: dict[tuple[str, str], dict[FieldPath, Any]] = {}
        for name in ("default", "kube-system"):
            self.create(NAMESPACES, "", {"metadata": {"name": name}})

    @property
    def resource_version(self) -> int:
        with self.changed:
            return self._revision

    def close(self) -> None:
        """Wake every watch so it can end its stream."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    # Reads

    def get(self, rt: ResourceType, namespace: str, name: str) -> Object:
        with self.changed:
            return copy.deepcopy(self._existing(rt, namespace, name))

    def find(self, rt: ResourceType, namespace: str, name: str) -> Object | None:
        """The object, or None when there is none; for callers that expect absence."""
        with self.changed:
            obj = self._objects.get((rt, namespace if rt.namespaced else "", name))
            return copy.deepcopy(obj) if obj else None

    def select(self, query: Query) -> tuple[list[Object], int]:
        """Matching objects sorted by namespace and name, and the list's resourceVersion."""
        matches = query.matcher()
        with self.changed:
            items = [
                copy.deepcopy(obj)
                for (rt, _, _), obj in sorted(
                    self._objects.items(), key=lambda item: (item[0][1], item[0][2])
                )
                if rt is query.rt and matches(obj)
            ]
            return items, self._revision

    def events_after(self, revision: int) -> list[WatchEvent]:
        """Events newer than `revision`; 410 Gone when the history no longer reaches back."""
        with self.changed:
            history_lost = len(self._events) == self._events.maxlen
            if history_lost and revision < self._events[0].resource_version - 1:
                message = f"too old resource version: {revision} ({self._revision})"
                raise ApiError(410, "Expired", message)
            return [event for event in self._events if event.resource_version > revision]

    def wait_for_change(self, revision: int, timeout: float) -> None:
        """Block until the store moves past `revision`, it closes, or `timeout` passes."""
        with self.changed:
            self.changed.wait_for(lambda: self.closed or self._revision > revision, timeout)

    # Writes

    def create(
        self, rt: ResourceType, namespace: str, body: Object, *, dry_run: bool = False
    ) -> Object:
        obj = copy.deepcopy(body)
        metadata = obj.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + secrets.token_hex(3)[:5]
        name = metadata.get("name", "")
        namespace = namespace if rt.namespaced else ""
        with self.changed:
            self._check_namespace(rt, namespace, metadata)
            if (rt, namespace, name) in self._objects:
                message = f'{rt.qualified_name} "{name}" already exists'
                raise ApiError(409, "AlreadyExists", message, rt=rt, name=name)
            if rt.namespaced:
                self._ensure_namespace(namespace, dry_run)
            obj = self._new_object(rt, namespace, obj)
            return obj if dry_run else self._commit(rt, None, obj)

    def replace(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Object,
        *,
        subresource: str = "",
        dry_run: bool = False,
    ) -> Object:
        """PUT: replace the object (or only its status); a stale resourceVersion is a 409."""
        with self.changed:
            old = self._existing(rt, namespace, name)
            self._check_precondition(rt, old, body)
            return self._update(rt, old, copy.deepcopy(body), subresource, dry_run)

    def mutate(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        change: Callable[[Object], Object],
        *,
        subresource: str = "",
        dry_run: bool = False,
    ) -> Object:
        """Apply `change` to a copy of the live object and store the result (PATCH)."""
        with self.changed:
            old = self._existing(rt, namespace, name)
            try:
                new = change(copy.deepcopy(old))
            except PatchError as error:
                raise invalid(rt, name, str(error)) from error
            self._check_precondition(rt, old, new)
            return self._update(rt, old, new, subresource, dry_run)

    def apply(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        config: Object,
        *,
        manager: str,
        force: bool,
        subresource: str = "",
        dry_run: bool = False,
    ) -> Object:
        """Server-side apply, approximated: create, or merge over the manager's last apply.

        Fields the manager applied last time but not now are removed, unless someone else
        wrote next to them. A field another apply manager set to a different value is a
        conflict unless `force`; update managers (PUT, PATCH) own nothing.
        """
        config = copy.deepcopy(config)
        config.setdefault("metadata", {}).setdefault("name", name)
        with self.changed:
            old = self._objects.get((rt, namespace if rt.namespaced else "", name))
            if old is None:
                created = self.create(rt, namespace, config, dry_run=dry_run)
                if not dry_run:
                    self._applied[(created["metadata"]["uid"], manager)] = self._owned(config)
                return created
            uid = old["metadata"]["uid"]
            applied = self._owned(config)
            self._settle_ownership(rt, old, manager, applied, force=force)
            live = copy.deepcopy(old)
            self._forget_fields(live, self._applied.get((uid, manager), {}), applied)
            result = self._update(rt, old, strategic_merge(live, config), subresource, dry_run)
            if not dry_run:
                self._applied[(uid, manager)] = applied
            return result

    def delete(self, rt: ResourceType, namespace: str, name: str) -> Object:
        """Delete the object and, cascading, the objects it owns (and a namespace's content)."""
        with self.changed:
            obj = self._existing(rt, namespace, name)
            for key, candidate in list(self._objects.items()):
                if key in self._objects and self._is_dependent(rt, obj, candidate):
                    self.delete(key[0], key[1], key[2])
            del self._objects[(rt, namespace if rt.namespaced else "", name)]
            self._bump(obj)
            self._record(rt, "DELETED", obj)
            return copy.deepcopy(obj)

    # Internals

    def _existing(self, rt: ResourceType, namespace: str, name: str) -> Object:
        obj = self._objects.get((rt, namespace if rt.namespaced else "", name))
        if obj is None:
            raise not_found(rt, name)
        return obj

    def _check_namespace(self, rt: ResourceType, namespace: str, metadata: Object) -> None:
        if not rt.namespaced:
            metadata.pop("namespace", None)
            return
        if metadata.setdefault("namespace", namespace) != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                f"the request ({metadata['namespace']!r} != {namespace!r})"
            )
        if self.strict_namespaces and (NAMESPACES, "", namespace) not in self._objects:
            raise not_found(NAMESPACES, namespace)

    def _ensure_namespace(self, namespace: str, dry_run: bool) -> None:
        if (NAMESPACES, "", namespace) not in self._objects and not dry_run:
            self.create(NAMESPACES, "", {"metadata": {"name": namespace}})

    def _new_object(self, rt: ResourceType, namespace: str, obj: Object) -> Object:
        obj["kind"], obj["apiVersion"] = rt.kind, rt.api_version
        if rt.has_status and rt is not NAMESPACES:
            obj["status"] = {}
        apply_defaults(rt, obj)
        metadata = obj["metadata"]
        metadata.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            generation=1,
        )
        metadata.pop("resourceVersion", None)
        self._validate(rt, obj)
        return obj

    def _validate(self, rt: ResourceType, obj: Object) -> None:
        name = obj["metadata"].get("name", "")
        if not _DNS_SUBDOMAIN.match(name):
            why = f"metadata.name: Invalid value: {name!r}: must be a lowercase RFC 1123 subdomain"
            raise invalid(rt, name, why)
        if rt is DEPLOYMENTS:
            self._validate_deployment(obj)

    def _validate_deployment(self, obj: Object) -> None:
        name, spec = obj["metadata"]["name"], obj.get("spec") or {}
        selector = spec.get("selector")
        if not selector:
            raise invalid(DEPLOYMENTS, name, "spec.selector: Required value")
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels")
        if not labels_match(label_selector_from_match(selector), template_labels):
            why = (
                "spec.template.metadata.labels: Invalid value: "
                "`selector` does not match template `labels`"
            )
            raise invalid(DEPLOYMENTS, name, why)

    def _check_precondition(self, rt: ResourceType, old: Object, new: Object) -> None:
        wanted = (new.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise conflict(rt, old["metadata"]["name"], STALE_VERSION)

    def _update(
        self, rt: ResourceType, old: Object, new: Object, subresource: str, dry_run: bool
    ) -> Object:
        name = old["metadata"]["name"]
        if (new.get("metadata") or {}).get("name", name) != name:
            raise bad_request(
                f"the name of the object ({new['metadata']['name']!r}) does not match {name!r}"
            )
        if subresource == "status":
            merged = copy.deepcopy(old)
            merged["status"] = new.get("status") or {}
        else:
            merged = self._main_resource_update(rt, old, new)
        if _without_version(merged) == _without_version(old):
            return copy.deepcopy(old)  # A no-op write keeps the resourceVersion.
        return merged if dry_run else self._commit(rt, old, merged)

    def _main_resource_update(self, rt: ResourceType, old: Object, new: Object) -> Object:
        """Writes to the main resource ignore status and keep the server-owned metadata."""
        new["kind"], new["apiVersion"] = rt.kind, rt.api_version
        metadata = new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "namespace", "name", "generation"):
            if field in old["metadata"]:
                metadata[field] = old["metadata"][field]
        if rt.has_status:
            new["status"] = copy.deepcopy(old.get("status") or {})
        apply_defaults(rt, new)
        self._validate(rt, new)
        if _content(new) != _content(old):
            metadata["generation"] = old["metadata"]["generation"] + 1
        return new

    def _commit(self, rt: ResourceType, old: Object | None, new: Object) -> Object:
        self._bump(new)
        namespace = new["metadata"].get("namespace", "") if rt.namespaced else ""
        self._objects[(rt, namespace, new["metadata"]["name"])] = new
        self._record(rt, "ADDED" if old is None else "MODIFIED", new)
        return copy.deepcopy(new)

    def _bump(self, obj: Object) -> None:
        self._revision += 1
        obj["metadata"]["resourceVersion"] = str(self._revision)

    def _record(self, rt: ResourceType, event_type: str, obj: Object) -> None:
        self._events.append(WatchEvent(self._revision, rt, event_type, copy.deepcopy(obj)))
        self.changed.notify_all()

    def _is_dependent(self, rt: ResourceType, owner: Object, candidate: Object) -> bool:
        if rt is NAMESPACES:
            return bool(candidate["metadata"].get("namespace") == owner["metadata"]["name"])
        uid = owner["metadata"]["uid"]
        references = candidate["metadata"].get("ownerReferences") or []
        return any(reference.get("uid") == uid for reference in references)

    @staticmethod
    def _owned(config: Object) -> dict[FieldPath, Any]:
        """The field paths an apply configuration claims; identity fields are nobody's."""
        paths = field_paths(config)
        for identity in (
            ("apiVersion",),
            ("kind",),
            ("metadata", "name"),
            ("metadata", "namespace"),
        ):
            paths.pop(identity, None)
        return paths

    def _settle_ownership(
        self,
        rt: ResourceType,
        live: Object,
        manager: str,
        applied: dict[FieldPath, Any],
        *,
        force: bool,
    ) -> None:
        """Refuse to change another apply manager's fields, or take them over when forced."""
        name, uid = live["metadata"]["name"], live["metadata"]["uid"]
        for (owner_uid, other), owned in self._applied.items():
            if owner_uid != uid or other == manager:
                continue
            clashes = [path for path in applied if path in owned and owned[path] != applied[path]]
            if clashes and not force:
                fields = ", ".join(_render_path(path) for path in clashes)
                why = f'Apply failed with {len(clashes)} conflict(s) with "{other}": {fields}'
                raise conflict(rt, name, why)
            for path in clashes:
                del owned[path]  # Forcing takes the field over.

    @staticmethod
    def _forget_fields(
        live: Object, previous: dict[FieldPath, Any], applied: dict[FieldPath, Any]
    ) -> None:
        """Remove what the manager applied before but not now, as whole a subtree as is safe.

        A subtree goes only if the new apply claims nothing under it and everything left
        in it came from this manager's previous apply.
        """
        for path in previous.keys() - applied.keys():
            live_paths = field_paths(live).keys()
            for depth in range(1, len(path) + 1):
                prefix = path[:depth]
                if any(p[:depth] == prefix for p in applied):
                    continue
                if all(p in previous for p in live_paths if p[:depth] == prefix):
                    remove_field(live, prefix)
                    break


def iter_matching(events: list[WatchEvent], query: Query) -> Iterator[WatchEvent]:
    """The events a watch with `query` should see."""
    matches = query.matcher()
    return (event for event in events if event.rt is query.rt and matches(event.obj))
