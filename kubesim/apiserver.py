"""A small Kubernetes API server over real HTTP, for the real `kubernetes` client to talk to.

It serves namespaces, configmaps, secrets, services, deployments, replicasets and
ingresses at their real REST paths, records every request, and can be told to fail
requests the ways a cluster does (see kubesim.faults). Control endpoints under `/_sim/`
let a test in another process read the request log and set faults:

    GET    /_sim/requests?method=PATCH&path_contains=deployments/web&writes=1&since=<unix>
    DELETE /_sim/requests
    GET    /_sim/faults
    POST   /_sim/faults   {"kind": "error", "status": 429, "method": "PATCH", "path": "...",
                           "times": 2, "seconds": null, "retry_after": 1, "delay": 0}
    DELETE /_sim/faults

Other components (the controller, simulated apps) add their own routes with
add_control_route(). Control requests are neither logged nor faulted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from kubesim._http import BackgroundServer, Closeable, JSONRequestHandler, SimHTTPServer
from kubesim.discovery import discovery_document
from kubesim.faults import Fault, FaultSet, fault_from_json
from kubesim.patches import json_patch, merge_patch, strategic_merge
from kubesim.requestlog import RequestLog, RequestRecord
from kubesim.resources import ResourceType, find_resource_type
from kubesim.store import ApiError, Object, Query, Store, bad_request, iter_matching

log = logging.getLogger(__name__)

#: A control route gets the JSON body and the query, and answers (HTTP status, JSON body).
ControlRoute = Callable[[Any, dict[str, str]], tuple[int, Any]]

#: A watch without timeoutSeconds ends after this long, as real servers end theirs.
DEFAULT_WATCH_SECONDS = 1800.0

APPLY_PATCH = "application/apply-patch+yaml"
PATCHES: dict[str, Callable[[Any, Any], Any]] = {
    "application/strategic-merge-patch+json": strategic_merge,
    "application/merge-patch+json": merge_patch,
    "application/json-patch+json": json_patch,
}


@dataclass(frozen=True)
class Target:
    """What a resource URL names: a type, and maybe a namespace, an object and a subresource."""

    rt: ResourceType
    namespace: str = ""
    name: str = ""
    subresource: str = ""

    @classmethod
    def from_path(cls, path: str) -> Target | None:
        segments = [segment for segment in path.split("/") if segment]
        if segments[:1] == ["api"] and len(segments) >= 3:
            group, version, rest = "", segments[1], segments[2:]
        elif segments[:1] == ["apis"] and len(segments) >= 4:
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            return None
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] != "status":
            namespace, rest = rest[1], rest[2:]
        rt = find_resource_type(group, version, rest[0])
        if rt is None or len(rest) > 3 or (len(rest) == 3 and rest[2] != "status"):
            return None
        if namespace and not rt.namespaced:
            return None
        name = rest[1] if len(rest) > 1 else ""
        return cls(rt, namespace, name, rest[2] if len(rest) > 2 else "")

    def query(self, params: dict[str, str]) -> Query:
        return Query(
            self.rt,
            self.namespace or None,
            params.get("labelSelector", ""),
            params.get("fieldSelector", ""),
        )


def _parse_body(raw: bytes, content_type: str) -> Any:
    try:
        return json.loads(raw or b"null")
    except json.JSONDecodeError as error:
        if content_type == APPLY_PATCH:
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError:
                pass
        raise bad_request(f"the request body is not valid JSON: {error}") from error


def _success_status(target: Target, obj: Object) -> Object:
    details = {
        "name": target.name,
        "group": target.rt.group,
        "kind": target.rt.plural,
        "uid": obj["metadata"]["uid"],
    }
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


class ApiHandler(JSONRequestHandler):
    """Answers one connection's requests: control paths, discovery, and resources."""

    @property
    def api(self) -> ApiServer:
        return self.server.owner  # type: ignore[no-any-return]

    def do_GET(self) -> None:
        self.dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def dispatch(self) -> None:
        if self.url_path.startswith("/_sim/"):
            self.answer_control()
            return
        started, clock = time.time(), time.monotonic()
        watching = self.query.get("watch") in ("true", "1")
        if not watching:
            self.api.request_started()
        try:
            body = self.read_body()  # Read first, so a reset never races the upload.
            fault = self.api.faults.take(self.command, self.url_path)
            status = self.answer_faulted(fault, body) if fault else self.answer_api(body)
            self.api.request_log.append(
                RequestRecord(
                    method=self.command,
                    path=self.url_path,
                    query=self.query,
                    content_type=self.content_type,
                    status=status,
                    started=started,
                    duration=time.monotonic() - clock,
                    fault=fault.kind if fault else None,
                )
            )
        finally:
            if not watching:
                self.api.request_finished()

    def answer_faulted(self, fault: Fault, body: bytes) -> int:
        if fault.kind == "drop":
            self.reset_connection()
            return 0
        if fault.kind == "delay":
            self.server.closing.wait(fault.delay)
            return self.answer_api(body)
        error = ApiError(fault.status, fault.reason, f"kubesim injected fault {fault.id}")
        if fault.status == 429:
            error.headers["Retry-After"] = str(fault.retry_after)
        return self.send_error_status(error)

    def answer_api(self, body: bytes) -> int:
        try:
            return self.route(body)
        except ApiError as error:
            return self.send_error_status(error)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # The client went away mid-answer.
            return 0

    def send_error_status(self, error: ApiError) -> int:
        self.send_json(error.code, error.status(), error.headers)
        return error.code

    def route(self, body: bytes) -> int:
        path = self.url_path
        if path in ("/healthz", "/readyz", "/livez"):
            self.send_text(200, "ok")
            return 200
        document = discovery_document(path, f"127.0.0.1:{self.api.port}")
        if document is not None and self.command == "GET":
            self.send_json(200, document)
            return 200
        target = Target.from_path(path)
        if target is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        status, answer = self.verb(target, body)
        if answer is not None:
            self.send_json(status, answer)
        return status

    def verb(self, target: Target, body: bytes) -> tuple[int, Object | None]:
        """Run the verb the method and URL name; a watch streams and returns no body."""
        if self.command == "GET" and not target.name:
            if self.query.get("watch") in ("true", "1"):
                self.stream_watch(target)
                return 200, None
            return 200, self.api.list_objects(target.query(self.query))
        if target.name == "" and self.command == "POST":
            return 201, self.api.create(target, _parse_body(body, self.content_type), self.query)
        if (
            not target.name
            or self.command == "POST"
            or (not target.namespace and target.rt.namespaced)
        ):
            message = f"{self.command} is not supported on {self.url_path}"
            raise ApiError(405, "MethodNotAllowed", message)
        if self.command == "GET":
            return 200, self.api.store.get(target.rt, target.namespace, target.name)
        if self.command == "DELETE":
            deleted = self.api.store.delete(target.rt, target.namespace, target.name)
            return 200, _success_status(target, deleted)
        parsed = _parse_body(body, self.content_type)
        if self.command == "PUT":
            return 200, self.api.replace(target, parsed, self.query)
        return self.api.patch(target, parsed, self.content_type, self.query)

    def stream_watch(self, target: Target) -> None:
        """Stream watch events as chunked JSON lines until timeoutSeconds or shutdown."""
        query = target.query(self.query)
        query.matcher()  # A bad selector is a 400 before the stream starts.
        since = self.query.get("resourceVersion", "")
        if since not in ("", "0") and not since.isdigit():
            raise bad_request(f"resourceVersion {since!r} is not a valid resource version")
        timeout = float(self.query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self.watch_events(query, since, time.monotonic() + timeout)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def watch_events(self, query: Query, since: str, deadline: float) -> None:
        store = self.api.store
        if since in ("", "0"):
            # Without a version a watch starts with the current state, as ADDED events.
            items, revision = store.select(query)
            for item in items:
                self.send_event("ADDED", item)
        else:
            revision = int(since)
        while not store.closed and not self.server.closing.is_set():
            try:
                events = store.events_after(revision)
            except ApiError as gone:
                self.send_event("ERROR", gone.status())
                return
            for event in iter_matching(events, query):
                self.send_event(event.type, event.obj)
            revision = events[-1].resource_version if events else revision
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            store.wait_for_change(revision, min(remaining, 1.0))

    def send_event(self, event_type: str, obj: Object) -> None:
        line = json.dumps({"type": event_type, "object": obj}).encode() + b"\n"
        self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        self.wfile.flush()

    def answer_control(self) -> None:
        raw = self.read_body()
        route = self.api.control_route(self.command, self.url_path)
        if route is None:
            self.send_json(404, {"error": f"no control route {self.command} {self.url_path}"})
            return
        try:
            status, answer = route(json.loads(raw or b"null"), self.query)
        except (ValueError, TypeError, KeyError) as error:
            status, answer = 400, {"error": str(error)}
        self.send_json(status, answer)


class ApiServer(Closeable):
    """The simulated Kubernetes API server, listening on 127.0.0.1 from construction on.

    Use it as a context manager or call close(); `url` is what a kubernetes client's
    Configuration.host should be set to.
    """

    def __init__(
        self, port: int = 0, *, strict_namespaces: bool = False, history: int = 10_000
    ) -> None:
        """Listen on `port` (0: any free one); `history` bounds how far back watches reach."""
        self.store = Store(strict_namespaces=strict_namespaces, history=history)
        self.request_log = RequestLog()
        self.faults = FaultSet()
        self._control_routes: dict[tuple[str, str], ControlRoute] = {}
        self._routes_lock = threading.Lock()
        self._in_flight = 0
        self._settled = threading.Condition()
        self._add_builtin_routes()
        self._background = BackgroundServer(SimHTTPServer(port, ApiHandler, self), "kubesim-api")

    @property
    def port(self) -> int:
        return self._background.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.store.close()
        self._background.close()

    # The request log

    def requests(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        *,
        writes: bool = False,
        since: float | None = None,
    ) -> list[RequestRecord]:
        """Requests answered so far, filtered by method, path substring, writes-only, time.

        A client has its answer a moment before the server thread logs the request, so
        this first waits (briefly) for requests in flight to be logged.
        """
        with self._settled:
            self._settled.wait_for(lambda: self._in_flight == 0, timeout=2.0)
        return self.request_log.select(method, path_contains, writes=writes, since=since)

    def request_started(self) -> None:
        with self._settled:
            self._in_flight += 1

    def request_finished(self) -> None:
        with self._settled:
            self._in_flight -= 1
            self._settled.notify_all()

    def clear_requests(self) -> None:
        self.request_log.clear()

    # Faults

    def inject_fault(self, **fields: Any) -> Fault:
        """Add a fault; the fields are those of kubesim.faults.Fault."""
        return self.faults.add(Fault(**fields))

    def clear_faults(self) -> None:
        self.faults.clear()

    # Control routes

    def add_control_route(self, method: str, path: str, route: ControlRoute) -> None:
        if not path.startswith("/_sim/"):
            raise ValueError(f"control path {path!r} must start with /_sim/")
        with self._routes_lock:
            self._control_routes[(method.upper(), path)] = route

    def control_route(self, method: str, path: str) -> ControlRoute | None:
        with self._routes_lock:
            return self._control_routes.get((method, path))

    def _add_builtin_routes(self) -> None:
        def list_requests(_: Any, query: dict[str, str]) -> tuple[int, Any]:
            since = float(query["since"]) if query.get("since") else None
            records = self.requests(
                query.get("method"),
                query.get("path_contains"),
                writes=query.get("writes") in ("1", "true"),
                since=since,
            )
            return 200, {"items": [record.to_json() for record in records]}

        def add_fault(body: Any, _: dict[str, str]) -> tuple[int, Any]:
            return 201, self.faults.add(fault_from_json(body)).to_json()

        def list_faults(_: Any, __: dict[str, str]) -> tuple[int, Any]:
            return 200, {"items": [fault.to_json() for fault in self.faults.active()]}

        def clear_requests(_: Any, __: dict[str, str]) -> tuple[int, Any]:
            self.clear_requests()
            return 200, {}

        def clear_faults(_: Any, __: dict[str, str]) -> tuple[int, Any]:
            self.clear_faults()
            return 200, {}

        self.add_control_route("GET", "/_sim/requests", list_requests)
        self.add_control_route("DELETE", "/_sim/requests", clear_requests)
        self.add_control_route("GET", "/_sim/faults", list_faults)
        self.add_control_route("POST", "/_sim/faults", add_fault)
        self.add_control_route("DELETE", "/_sim/faults", clear_faults)

    # Verbs with query parameters

    def list_objects(self, query: Query) -> Object:
        items, revision = self.store.select(query)
        return {
            "kind": f"{query.rt.kind}List",
            "apiVersion": query.rt.api_version,
            "metadata": {"resourceVersion": str(revision)},
            "items": items,
        }

    def create(self, target: Target, body: Any, params: dict[str, str]) -> Object:
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        return self.store.create(target.rt, target.namespace, body, dry_run=_dry_run(params))

    def replace(self, target: Target, body: Any, params: dict[str, str]) -> Object:
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        return self.store.replace(
            target.rt,
            target.namespace,
            target.name,
            body,
            subresource=target.subresource,
            dry_run=_dry_run(params),
        )

    def patch(
        self, target: Target, body: Any, content_type: str, params: dict[str, str]
    ) -> tuple[int, Object]:
        """PATCH in the flavour the content type names; apply may create (201)."""
        rt, namespace, name = target.rt, target.namespace, target.name
        if content_type == APPLY_PATCH:
            manager = params.get("fieldManager")
            if not manager:
                raise bad_request("PATCH apply requests require the fieldManager query parameter")
            existed = self.store.find(rt, namespace, name) is not None
            applied = self.store.apply(
                rt,
                namespace,
                name,
                body,
                manager=manager,
                force=params.get("force") == "true",
                subresource=target.subresource,
                dry_run=_dry_run(params),
            )
            return (200 if existed else 201), applied
        flavour = PATCHES.get(content_type)
        if flavour is None:
            supported = ", ".join([*PATCHES, APPLY_PATCH])
            message = (
                f"the content type {content_type!r} is not a patch type; use one of {supported}"
            )
            raise ApiError(415, "UnsupportedMediaType", message)
        patched = self.store.mutate(
            rt,
            namespace,
            name,
            lambda live: flavour(live, body),
            subresource=target.subresource,
            dry_run=_dry_run(params),
        )
        return 200, patched


def _dry_run(params: dict[str, str]) -> bool:
    return params.get("dryRun") == "All"
