"""The few Kubernetes operations a deployment needs, over the real `kubernetes` client.

Objects stay plain dicts, exactly as kustomize renders them and the API server returns
them; requests go through the client's own serialisation, authentication and connection
pool. Every request is retried with backoff when the failure is temporary (5xx, 429 with
its Retry-After, 409, a reset connection, a timeout) and reported as a
:class:`~workers.errors.PermanentError` when it is not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay

from monkeytown_deploy.config import EnvironmentSettings
from workers.errors import PermanentError, TemporaryError

FIELD_MANAGER = "monkeytown-deploy"
REVISION = "deployment.kubernetes.io/revision"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

REQUEST_TIMEOUT = 10.0
LONGEST_BACKOFF = 5.0
TEMPORARY_STATUSES = frozenset({409, 429, 500, 502, 503, 504})

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """Where the objects of one kind live in the REST API."""

    prefix: str  # "/api/v1" or "/apis/<group>/<version>"
    plural: str
    namespaced: bool = True

    def path(self, namespace: str, name: str = "") -> str:
        where = f"/namespaces/{namespace}" if self.namespaced else ""
        return f"{self.prefix}{where}/{self.plural}" + (f"/{name}" if name else "")


# The kinds a Monkeytown overlay renders. Others need a line here: a real cluster's
# discovery would find them, but it costs a round of requests on every job.
KINDS: dict[tuple[str, str], Kind] = {
    ("v1", "Namespace"): Kind("/api/v1", "namespaces", namespaced=False),
    ("v1", "ConfigMap"): Kind("/api/v1", "configmaps"),
    ("v1", "Secret"): Kind("/api/v1", "secrets"),
    ("v1", "Service"): Kind("/api/v1", "services"),
    ("v1", "ServiceAccount"): Kind("/api/v1", "serviceaccounts"),
    ("apps/v1", "Deployment"): Kind("/apis/apps/v1", "deployments"),
    ("apps/v1", "ReplicaSet"): Kind("/apis/apps/v1", "replicasets"),
    ("networking.k8s.io/v1", "Ingress"): Kind("/apis/networking.k8s.io/v1", "ingresses"),
    ("policy/v1", "PodDisruptionBudget"): Kind("/apis/policy/v1", "poddisruptionbudgets"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): Kind(
        "/apis/autoscaling/v2", "horizontalpodautoscalers"
    ),
}
DEPLOYMENT = KINDS[("apps/v1", "Deployment")]
REPLICASET = KINDS[("apps/v1", "ReplicaSet")]
INGRESS = KINDS[("networking.k8s.io/v1", "Ingress")]


def kind_of(obj: Obj) -> Kind:
    """The REST location of *obj*'s kind; a kind outside :data:`KINDS` is a bad manifest."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    found = KINDS.get((api_version, kind))
    if found is None:
        known = ", ".join(f"{k} ({v})" for v, k in KINDS)
        raise PermanentError(
            f"cannot apply {kind or '?'} {api_version or '?'} "
            f"{obj.get('metadata', {}).get('name', '?')}: not a kind the workers know "
            f"(known: {known}); add it to workers.kube.KINDS"
        )
    return found


def describe(obj: Obj) -> str:
    """``Deployment/monkeytown-web``: how an object is named in audit records."""
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


def _classify(exc: BaseException, what: str) -> Exception:
    """The temporary or permanent error an API failure of *what* amounts to."""
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        detail = _api_message(exc)
        if status in TEMPORARY_STATUSES or status == 0:
            delay = _retry_after(exc) if status == 429 else None
            return TemporaryError(f"{what}: HTTP {status} {detail}", delay)
        return PermanentError(f"{what}: HTTP {status} {detail}")
    return TemporaryError(f"{what}: {type(exc).__name__}: {exc}")


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def _retry_after(exc: ApiException) -> float | None:
    value = (exc.headers or {}).get("Retry-After")
    try:
        return float(str(value)) if value is not None else None
    except ValueError:
        return None


def _backoff(state: RetryCallState) -> float:
    """Exponential from 0.1 s up to 5 s, or longer when the server asked for it."""
    wait: float = min(LONGEST_BACKOFF, 0.1 * 2.0 ** (state.attempt_number - 1))
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, TemporaryError) and error.delay:
        wait = max(wait, min(error.delay, 10.0))
    return wait


class Cluster:
    """One environment's API server, reached with the kubernetes client."""

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        retry_seconds: float = 60.0,
        on_retry: Callable[[str, int], None] | None = None,
    ) -> None:
        self.api = api
        self.retry_seconds = retry_seconds
        self.on_retry = on_retry

    @classmethod
    def connect(cls, env: EnvironmentSettings, *, retry_seconds: float = 60.0) -> Cluster:
        """The cluster *env* names: ``kube_api_url``, else its kubeconfig context.

        A temporary failure is retried for *retry_seconds* (``api_retry_seconds``), long
        enough to ride out an API server restart.
        """
        if env.kube_api_url:
            configuration = k8s.Configuration()
            configuration.host = env.kube_api_url.rstrip("/")
        else:
            configuration = _kubeconfig(env.kube_context)
        configuration.retries = False  # tenacity below is the only retry layer
        return cls(k8s.ApiClient(configuration), retry_seconds=retry_seconds)

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    # The verbs

    def get(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        """The live object, or None when it does not exist."""
        return self.request("GET", kind.path(namespace, name), missing_ok=True)

    def list(self, kind: Kind, namespace: str, selector: str = "") -> list[Obj]:
        query = {"labelSelector": selector} if selector else None
        found = self.request("GET", kind.path(namespace), query=query)
        return list((found or {}).get("items") or [])

    def apply(self, obj: Obj, namespace: str) -> Obj:
        """Server-side apply *obj* as ``monkeytown-deploy``, taking over conflicting fields."""
        kind = kind_of(obj)
        name = obj["metadata"]["name"]
        body = {**obj, "metadata": {**obj["metadata"]}}
        if kind.namespaced:
            body["metadata"]["namespace"] = namespace
        query = {"fieldManager": FIELD_MANAGER, "force": "true"}
        applied = self.request(
            "PATCH", kind.path(namespace, name), body=body, query=query, content_type=APPLY
        )
        assert applied is not None
        return applied

    def patch(
        self, kind: Kind, namespace: str, name: str, patch: Any, content_type: str = MERGE
    ) -> Obj:
        query = {"fieldManager": FIELD_MANAGER}
        patched = self.request(
            "PATCH", kind.path(namespace, name), body=patch, query=query, content_type=content_type
        )
        assert patched is not None
        return patched

    def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        """Delete the object; False when it was already gone."""
        path = kind.path(namespace, name)
        return self.request("DELETE", path, missing_ok=True) is not None

    # The transport

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        missing_ok: bool = False,
    ) -> Obj | None:
        """One API call, retried while the failure is temporary; None for a 404 if allowed."""
        what = f"{method} {path}"
        retrying = Retrying(
            retry=retry_if_exception_type(TemporaryError),
            stop=stop_after_delay(self.retry_seconds),
            wait=_backoff,
            before_sleep=self._report_retry(what),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return self._once(method, path, body, query, content_type, missing_ok)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _report_retry(self, what: str) -> Callable[[RetryCallState], None]:
        def report(state: RetryCallState) -> None:
            if self.on_retry is not None:
                self.on_retry(what, state.attempt_number)

        return report

    def _once(  # noqa: PLR0917 -- private, called from one place
        self,
        method: str,
        path: str,
        body: Any,
        query: dict[str, str] | None,
        content_type: str,
        missing_ok: bool,
    ) -> Obj | None:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        serialized = self.api.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        what = f"{method} {path}"
        try:
            response = self.api.call_api(*serialized[:4], _request_timeout=REQUEST_TIMEOUT)
            response.read()  # type: ignore[no-untyped-call]
            data = self.api.response_deserialize(response, {"2XX": "object"}).data
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            raise _classify(exc, what) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _classify(exc, what) from exc
        return data if isinstance(data, dict) else {}


def _kubeconfig(context: str | None) -> k8s.Configuration:
    """The configuration of *context* in the kubeconfig, or the in-cluster service account."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            context=context, client_configuration=configuration
        )
    except (k8s_config.ConfigException, OSError) as exc:
        if context is not None:
            raise PermanentError(
                f"kube_context {context!r} is not usable: {exc}; check KUBECONFIG or set "
                "kube_api_url for this environment"
            ) from exc
        try:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except k8s_config.ConfigException as inner:
            raise PermanentError(
                "no Kubernetes configuration: no kubeconfig, not in a cluster, and no "
                "kube_context or kube_api_url configured for this environment"
            ) from inner
    return configuration


def container_images(deployment: Obj) -> dict[str, str]:
    """Container name -> image of a Deployment's pod template."""
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
    return {c["name"]: c.get("image", "") for c in containers or []}


def revision_of(obj: Obj | None) -> int:
    annotations = (obj or {}).get("metadata", {}).get("annotations") or {}
    return int(annotations.get(REVISION, "0") or 0)
