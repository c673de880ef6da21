"""The simulated cluster, driven the way the workers drive it: the real kubernetes client."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from kubesim import ApiServer, DeploymentController, SimApp, api_client
from kubesim.selectors import labels_match, parse_label_selector

NAMESPACE = "production"
APPLY = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def deployment(name: str = "web", image: str = "monkeytown/web:1", **spec: Any) -> dict[str, Any]:
    """A Deployment manifest with a web container and a sidecar."""
    labels = {"app": name}
    containers = [
        {"name": "web", "image": image, "ports": [{"containerPort": 8080}]},
        {"name": "sidecar", "image": "envoy:1"},
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {**labels, "tier": "frontend"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}},
            **spec,
        },
    }


def canary_ingress(weight: int) -> dict[str, Any]:
    annotations = {
        "nginx.ingress.kubernetes.io/canary": "true",
        "nginx.ingress.kubernetes.io/canary-weight": str(weight),
    }
    return {"metadata": {"name": "web-canary", "annotations": annotations}, "spec": {"rules": []}}


def set_image(apps_v1: client.AppsV1Api, image: str, name: str = "web") -> None:
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}}
    apps_v1.patch_namespaced_deployment(name, NAMESPACE, patch)


def condition(status: client.V1DeploymentStatus, kind: str) -> client.V1DeploymentCondition:
    return next(c for c in status.conditions if c.type == kind)


def http_json(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# Objects, selectors and versions


def test_create_get_and_list_by_label_selector(
    apps_v1: client.AppsV1Api, core_v1: client.CoreV1Api
) -> None:
    """Created objects read back, and lists honour set-based and negated label selectors."""
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment("web"))
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment("api"))
    core_v1.create_namespaced_config_map(
        NAMESPACE, {"metadata": {"name": "settings", "labels": {"app": "web"}}, "data": {"a": "1"}}
    )

    assert apps_v1.read_namespaced_deployment("web", NAMESPACE).spec.replicas == 2

    def names(selector: str) -> list[str]:
        found = apps_v1.list_namespaced_deployment(NAMESPACE, label_selector=selector)
        return [d.metadata.name for d in found.items]

    assert names("app=web") == ["web"]
    assert names("app in (web,api),tier") == ["api", "web"]
    assert names("app notin (web),!canary") == ["api"]
    assert names("app!=api,tier=frontend") == ["web"]
    listed = apps_v1.list_namespaced_deployment(NAMESPACE, field_selector="metadata.name=api")
    assert [d.metadata.name for d in listed.items] == ["api"]
    assert listed.kind == "DeploymentList"
    assert int(listed.metadata.resource_version) > 0
    assert NAMESPACE in [n.metadata.name for n in core_v1.list_namespace().items]


def test_label_selector_grammar() -> None:
    """Each selector clause form parses and matches as the API server's does."""
    labels = {"a": "b", "e": "x", "g": "1"}
    assert labels_match(parse_label_selector("a=b,c!=d,e in (x,y),f notin (z),g,!h"), labels)
    assert not labels_match(parse_label_selector("a==c"), labels)
    assert not labels_match(parse_label_selector("!g"), labels)
    assert labels_match(parse_label_selector(""), labels)


def test_bad_selector_is_bad_request(apps_v1: client.AppsV1Api) -> None:
    """An unparseable label selector is a 400 with a Status body."""
    with pytest.raises(ApiException) as raised:
        apps_v1.list_namespaced_deployment(NAMESPACE, label_selector="a in (b")
    assert raised.value.status == 400
    assert json.loads(raised.value.body)["reason"] == "BadRequest"


def test_create_twice_conflicts_and_missing_is_not_found(apps_v1: client.AppsV1Api) -> None:
    """A second create is 409 AlreadyExists and reading a missing object is 404 NotFound."""
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    with pytest.raises(ApiException) as exists:
        apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    with pytest.raises(ApiException) as missing:
        apps_v1.read_namespaced_deployment("nope", NAMESPACE)
    assert (exists.value.status, json.loads(exists.value.body)["reason"]) == (409, "AlreadyExists")
    assert (missing.value.status, json.loads(missing.value.body)["reason"]) == (404, "NotFound")


def test_selector_must_match_template(apps_v1: client.AppsV1Api) -> None:
    """A Deployment whose selector does not match its template labels is 422 Invalid."""
    manifest = deployment()
    manifest["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    with pytest.raises(ApiException) as raised:
        apps_v1.create_namespaced_deployment(NAMESPACE, manifest)
    assert raised.value.status == 422


def test_generation_follows_spec_and_no_op_keeps_version(apps_v1: client.AppsV1Api) -> None:
    """Generation bumps only on spec changes; every real change bumps resourceVersion."""
    created = apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    assert created.metadata.generation == 1
    assert created.metadata.uid and created.metadata.creation_timestamp

    labelled = apps_v1.patch_namespaced_deployment(
        "web", NAMESPACE, {"metadata": {"labels": {"release": "x"}}}
    )
    assert labelled.metadata.generation == 1
    assert int(labelled.metadata.resource_version) > int(created.metadata.resource_version)

    set_image(apps_v1, "monkeytown/web:2")
    again = apps_v1.patch_namespaced_deployment("web", NAMESPACE, {"spec": {"replicas": 2}})
    assert again.metadata.generation == 2
    unchanged = apps_v1.patch_namespaced_deployment("web", NAMESPACE, {"spec": {"replicas": 2}})
    assert unchanged.metadata.resource_version == again.metadata.resource_version


def test_stale_put_is_conflict(apps_v1: client.AppsV1Api) -> None:
    """A PUT carrying an outdated resourceVersion is refused with 409 Conflict."""
    stale = apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    set_image(apps_v1, "monkeytown/web:2")
    stale.spec.replicas = 5
    with pytest.raises(ApiException) as raised:
        apps_v1.replace_namespaced_deployment("web", NAMESPACE, stale)
    assert raised.value.status == 409
    assert json.loads(raised.value.body)["reason"] == "Conflict"

    fresh = apps_v1.read_namespaced_deployment("web", NAMESPACE)
    fresh.spec.replicas = 5
    assert apps_v1.replace_namespaced_deployment("web", NAMESPACE, fresh).spec.replicas == 5


# Patches


def test_strategic_merge_keeps_other_containers(apps_v1: client.AppsV1Api) -> None:
    """A strategic merge patch of one container by name leaves the sidecar and ports alone."""
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    set_image(apps_v1, "monkeytown/web:abc123")

    containers = apps_v1.read_namespaced_deployment("web", NAMESPACE).spec.template.spec.containers
    assert [(c.name, c.image) for c in containers] == [
        ("web", "monkeytown/web:abc123"),
        ("sidecar", "envoy:1"),
    ]
    assert containers[0].ports[0].container_port == 8080


def test_merge_patch_and_json_patch(apps_v1: client.AppsV1Api) -> None:
    """RFC 7386 merge patches replace lists and delete with null; RFC 6902 ops apply in order."""
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    merged = apps_v1.patch_namespaced_deployment(
        "web",
        NAMESPACE,
        {"metadata": {"labels": {"tier": None}}, "spec": {"replicas": 3}},
        _content_type=MERGE_PATCH,
    )
    assert merged.metadata.labels == {"app": "web"}
    assert merged.spec.replicas == 3

    operations = [
        {"op": "replace", "path": "/spec/replicas", "value": 4},
        {"op": "remove", "path": "/spec/template/spec/containers/1"},
        {"op": "add", "path": "/metadata/annotations", "value": {"note": "x"}},
    ]
    patched = apps_v1.patch_namespaced_deployment("web", NAMESPACE, operations)
    assert patched.spec.replicas == 4
    assert [c.name for c in patched.spec.template.spec.containers] == ["web"]
    assert patched.metadata.annotations == {"note": "x"}


def test_server_side_apply(apps_v1: client.AppsV1Api) -> None:
    """Apply creates, re-apply drops fields the manager stopped applying, and managers clash."""

    def apply(body: dict[str, Any], manager: str, **options: Any) -> client.V1Deployment:
        return apps_v1.patch_namespaced_deployment(
            "web", NAMESPACE, body, field_manager=manager, _content_type=APPLY, **options
        )

    created = apply(deployment(), "monkeytown-deploy")
    assert created.metadata.generation == 1

    without_sidecar = deployment()
    without_sidecar["spec"]["template"]["spec"]["containers"].pop()
    applied = apply(without_sidecar, "monkeytown-deploy")
    assert [c.name for c in applied.spec.template.spec.containers] == ["web"]

    with pytest.raises(ApiException) as clash:
        apply(deployment(image="other:1"), "someone-else")
    assert clash.value.status == 409
    assert apply(deployment(image="other:1"), "someone-else", force=True).spec.template

    with pytest.raises(ApiException) as no_manager:
        apps_v1.patch_namespaced_deployment("web", NAMESPACE, deployment(), _content_type=APPLY)
    assert no_manager.value.status == 400


def test_status_subresource(apps_v1: client.AppsV1Api) -> None:
    """Main-resource writes ignore status and /status writes touch only status."""
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    status_patch = {"status": {"readyReplicas": 2}, "spec": {"replicas": 9}}
    after_status = apps_v1.patch_namespaced_deployment_status("web", NAMESPACE, status_patch)
    assert after_status.status.ready_replicas == 2
    assert after_status.spec.replicas == 2

    main_patch = {"status": {"readyReplicas": 0}, "spec": {"replicas": 3}}
    after_main = apps_v1.patch_namespaced_deployment("web", NAMESPACE, main_patch)
    assert after_main.status.ready_replicas == 2
    assert after_main.spec.replicas == 3
    assert apps_v1.read_namespaced_deployment_status("web", NAMESPACE).status.ready_replicas == 2


def test_delete_cascades_to_replica_sets(
    apps_v1: client.AppsV1Api, controller: DeploymentController
) -> None:
    """Deleting a Deployment returns a Success Status and removes its ReplicaSets."""
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    controller.settle()
    assert apps_v1.list_namespaced_replica_set(NAMESPACE).items

    answer = apps_v1.delete_namespaced_deployment("web", NAMESPACE)
    assert answer["status"] == "Success"
    assert apps_v1.list_namespaced_replica_set(NAMESPACE).items == []


# Watch


def test_watch_streams_changes_and_ends_at_timeout(apps_v1: client.AppsV1Api) -> None:
    """A watch from a resourceVersion streams later changes and returns at timeoutSeconds."""
    listed = apps_v1.list_namespaced_deployment(NAMESPACE)
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    writer = threading.Timer(0.2, set_image, (apps_v1, "monkeytown/web:2"))
    writer.start()

    started = time.monotonic()
    events = list(
        watch.Watch().stream(
            apps_v1.list_namespaced_deployment,
            NAMESPACE,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        )
    )
    writer.join()

    assert [event["type"] for event in events] == ["ADDED", "MODIFIED"]
    assert events[1]["object"].metadata.generation == 2
    assert 0.9 < time.monotonic() - started < 3


def test_watch_without_version_starts_with_current_state(core_v1: client.CoreV1Api) -> None:
    """A watch without resourceVersion first lists the existing objects as ADDED."""
    core_v1.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": "a"}})
    events = list(
        watch.Watch().stream(core_v1.list_namespaced_config_map, NAMESPACE, timeout_seconds=0)
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "a")]


def test_watch_from_a_forgotten_version_is_gone() -> None:
    """A watch older than the server's event history ends with 410 Gone."""
    with ApiServer(history=3) as server:
        kube = api_client(server.url)
        try:
            core_v1 = client.CoreV1Api(kube)
            for name in "abcde":
                core_v1.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": name}})
            with pytest.raises(ApiException) as gone:
                list(
                    watch.Watch().stream(
                        core_v1.list_namespaced_config_map,
                        NAMESPACE,
                        resource_version="1",
                        timeout_seconds=1,
                    )
                )
            assert gone.value.status == 410
        finally:
            kube.close()


def test_strict_namespaces_refuse_unknown_namespaces() -> None:
    """With strict_namespaces a create in a missing namespace is 404, as on a real cluster."""
    with ApiServer(strict_namespaces=True) as server:
        kube = api_client(server.url)
        try:
            with pytest.raises(ApiException) as missing:
                client.CoreV1Api(kube).create_namespaced_config_map(
                    "nowhere", {"metadata": {"name": "a"}}
                )
            assert missing.value.status == 404
        finally:
            kube.close()


# The controller


def test_controller_rolls_out_to_available(
    apps_v1: client.AppsV1Api, controller: DeploymentController
) -> None:
    """One step creates revision 1's ReplicaSet, the next makes the Deployment available."""
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())

    controller.step()
    status = apps_v1.read_namespaced_deployment_status("web", NAMESPACE).status
    assert (status.observed_generation, status.updated_replicas) == (1, 2)
    assert not status.available_replicas
    assert condition(status, "Progressing").reason == "NewReplicaSetCreated"

    controller.step()
    done = apps_v1.read_namespaced_deployment("web", NAMESPACE)
    assert (done.status.ready_replicas, done.status.available_replicas) == (2, 2)
    assert condition(done.status, "Progressing").reason == "NewReplicaSetAvailable"
    assert condition(done.status, "Available").status == "True"
    assert done.metadata.annotations["deployment.kubernetes.io/revision"] == "1"

    (replica_set,) = apps_v1.list_namespaced_replica_set(NAMESPACE).items
    pod_hash = replica_set.metadata.labels["pod-template-hash"]
    assert replica_set.metadata.name == f"web-{pod_hash}"
    assert replica_set.metadata.owner_references[0].uid == done.metadata.uid


def test_rollback_reuses_the_old_replica_set(
    apps_v1: client.AppsV1Api, controller: DeploymentController
) -> None:
    """Going back to an old template re-uses its ReplicaSet under the next revision."""
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    controller.settle()
    set_image(apps_v1, "monkeytown/web:2")
    controller.settle()
    set_image(apps_v1, "monkeytown/web:1")
    controller.settle()

    replica_sets = apps_v1.list_namespaced_replica_set(NAMESPACE).items
    by_image = {rs.spec.template.spec.containers[0].image: rs for rs in replica_sets}
    assert len(replica_sets) == 2
    first, second = by_image["monkeytown/web:1"], by_image["monkeytown/web:2"]
    assert first.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    assert first.metadata.annotations["deployment.kubernetes.io/revision-history"] == "1"
    assert (first.spec.replicas, second.spec.replicas) == (2, 0)
    annotations = apps_v1.read_namespaced_deployment("web", NAMESPACE).metadata.annotations
    assert annotations["deployment.kubernetes.io/revision"] == "3"


def test_stuck_deployment_exceeds_its_progress_deadline(
    apps_v1: client.AppsV1Api, controller: DeploymentController
) -> None:
    """A stuck Deployment never becomes available and reports ProgressDeadlineExceeded."""
    controller.time_factor = 0.001  # 100 s deadline -> 0.1 s
    controller.set_stuck("web")
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment(progressDeadlineSeconds=100))
    controller.step()
    time.sleep(0.15)
    controller.step()

    status = apps_v1.read_namespaced_deployment_status("web", NAMESPACE).status
    progressing = condition(status, "Progressing")
    assert (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")
    assert condition(status, "Available").status == "False"
    assert not status.available_replicas


def test_auto_mode_completes_rollouts(apiserver: ApiServer, apps_v1: client.AppsV1Api) -> None:
    """In auto mode the background thread brings a new Deployment to available."""
    with DeploymentController(apiserver, mode="auto"):
        apps_v1.create_namespaced_deployment(NAMESPACE, deployment())

        def available() -> bool:
            status = apps_v1.read_namespaced_deployment_status("web", NAMESPACE).status
            return status.available_replicas == 2

        wait_until(available)


def test_controller_control_over_http(
    apiserver: ApiServer, apps_v1: client.AppsV1Api, controller: DeploymentController
) -> None:
    """The controller's stuck set and steps are reachable over the control API."""
    state = http_json(
        "POST", f"{apiserver.url}/_sim/controller", {"stuck": {"production/web": True}}
    )
    assert state["stuck"] == ["production/web"]
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    assert http_json("POST", f"{apiserver.url}/_sim/controller/step")["writes"] > 0
    http_json("POST", f"{apiserver.url}/_sim/controller/step")
    assert not apps_v1.read_namespaced_deployment("web", NAMESPACE).status.available_replicas


# Faults and the request log


@pytest.mark.parametrize(("status", "reason"), [(500, "InternalError"), (409, "Conflict")])
def test_error_faults_answer_a_status(
    apiserver: ApiServer, apps_v1: client.AppsV1Api, status: int, reason: str
) -> None:
    """An error fault answers its code with a Status, then stops after `times` requests."""
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    apiserver.inject_fault(method="PATCH", path="deployments/web$", status=status, times=1)

    with pytest.raises(ApiException) as raised:
        set_image(apps_v1, "monkeytown/web:2")
    assert raised.value.status == status
    assert json.loads(raised.value.body)["reason"] == reason
    set_image(apps_v1, "monkeytown/web:2")
    assert [r.fault for r in apiserver.requests("PATCH")] == ["error", None]


def test_too_many_requests_carries_retry_after(
    apiserver: ApiServer, apps_v1: client.AppsV1Api
) -> None:
    """A 429 fault answers with its Retry-After header."""
    # PATCH, because urllib3 itself honours Retry-After on idempotent methods such as GET.
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    apiserver.inject_fault(method="PATCH", path="deployments", status=429, retry_after=7)
    with pytest.raises(ApiException) as raised:
        set_image(apps_v1, "monkeytown/web:2")
    assert raised.value.status == 429
    assert raised.value.headers["Retry-After"] == "7"


def test_dropped_connection_is_a_protocol_error(
    apiserver: ApiServer, apps_v1: client.AppsV1Api
) -> None:
    """A drop fault resets the connection, which surfaces from urllib3 on a PATCH."""
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    apiserver.inject_fault(kind="drop", method="PATCH", times=1)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        set_image(apps_v1, "monkeytown/web:2")
    assert apiserver.requests("PATCH")[0].status == 0


def test_delay_fault_times_the_client_out(apiserver: ApiServer, apps_v1: client.AppsV1Api) -> None:
    """A delay fault longer than the client's timeout raises a read timeout."""
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    apiserver.inject_fault(kind="delay", method="PATCH", delay=1.0, times=1)
    patch = {"metadata": {"labels": {"x": "y"}}}
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        apps_v1.patch_namespaced_deployment("web", NAMESPACE, patch, _request_timeout=0.2)


def test_timed_fault_expires(apiserver: ApiServer, apps_v1: client.AppsV1Api) -> None:
    """A fault set for some seconds stops matching once they pass."""
    apiserver.inject_fault(method="GET", status=500, seconds=0.2)
    with pytest.raises(ApiException):
        apps_v1.list_namespaced_deployment(NAMESPACE)
    time.sleep(0.25)
    assert apps_v1.list_namespaced_deployment(NAMESPACE).items == []


def test_faults_and_request_log_over_http(apiserver: ApiServer, apps_v1: client.AppsV1Api) -> None:
    """Another process can set faults and count writes through the control paths."""
    apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
    fault = {"kind": "error", "status": 503, "method": "PATCH", "times": 1}
    assert http_json("POST", f"{apiserver.url}/_sim/faults", fault)["hits"] == 0
    with pytest.raises(ApiException):
        set_image(apps_v1, "monkeytown/web:2")
    set_image(apps_v1, "monkeytown/web:2")

    query = "method=PATCH&path_contains=deployments/web"
    patches = http_json("GET", f"{apiserver.url}/_sim/requests?{query}")["items"]
    assert [p["status"] for p in patches] == [503, 200]
    assert patches[1]["content_type"] == "application/strategic-merge-patch+json"
    writes = http_json("GET", f"{apiserver.url}/_sim/requests?writes=1")["items"]
    assert [w["method"] for w in writes] == ["POST", "PATCH", "PATCH"]
    assert len(apiserver.requests(writes=True)) == 3


def test_discovery_for_the_client(kube: client.ApiClient) -> None:
    """The version and API group discovery documents deserialize in the client."""
    assert client.VersionApi(kube).get_code().major == "1"
    groups = client.ApisApi(kube).get_api_versions().groups
    assert {"apps", "networking.k8s.io"} <= {group.name for group in groups}


# The simulated application


def test_app_endpoints(sim_app: SimApp) -> None:
    """Health, readiness, status and metrics answer what the test set."""
    assert http_json("GET", f"{sim_app.url}/health") == {"status": "healthy"}
    sim_app.set_health("unhealthy", 503)
    sim_app.set_ready(False)
    sim_app.set_agents([{"name": "ChaosArchitect"}])
    sim_app.set_metrics(error_rate=0.02, p99_latency=1.5)

    assert http_status(f"{sim_app.url}/health") == 503
    assert http_status(f"{sim_app.url}/ready") == 503
    assert http_json("GET", f"{sim_app.url}/api/status") == {"agents": [{"name": "ChaosArchitect"}]}
    metrics = http_json("GET", f"{sim_app.url}/api/metrics")
    assert (metrics["error_rate"], metrics["p99_latency"], metrics["requests"]) == (0.02, 1.5, 1000)
    assert sim_app.hits("/api/metrics") == 1


def test_prometheus_queries_map_to_metrics(sim_app: SimApp) -> None:
    """PromQL queries answer an instant vector of the metric their text maps to."""
    sim_app.set_metrics(error_rate=0.03, p99_latency=0.4, saturation=0.9)
    sim_app.set_queries({"cpu": "saturation"})

    def query(promql: str) -> list[Any]:
        encoded = urllib.request.quote(promql)
        answer = http_json("GET", f"{sim_app.url}/api/v1/query?query={encoded}")
        assert answer["status"] == "success"
        assert answer["data"]["resultType"] == "vector"
        return [sample["value"][1] for sample in answer["data"]["result"]]

    assert query('sum(rate(http_requests_total{code=~"5.."}[1m]))') == ["0.03"]
    assert query("histogram_quantile(0.99, rate(http_request_duration_seconds_bucket[1m]))") == [
        "0.4"
    ]
    assert query("avg(cpu_usage)") == ["0.9"]
    assert query("up") == []


def test_metrics_follow_the_canary_weight(
    sim_app: SimApp, apiserver: ApiServer, networking_v1: client.NetworkingV1Api
) -> None:
    """A weight rule raises the error rate once the canary Ingress reaches its weight."""
    sim_app.link(apiserver, NAMESPACE, "web-canary")
    sim_app.add_rule("error_rate", 0.05, min_weight=25)
    assert sim_app.canary_weight() == 0

    networking_v1.create_namespaced_ingress(NAMESPACE, canary_ingress(10))
    assert http_json("GET", f"{sim_app.url}/api/metrics")["error_rate"] == 0.0
    annotations = {"nginx.ingress.kubernetes.io/canary-weight": "25"}
    networking_v1.patch_namespaced_ingress(
        "web-canary", NAMESPACE, {"metadata": {"annotations": annotations}}
    )
    assert http_json("GET", f"{sim_app.url}/api/metrics")["error_rate"] == 0.05
    networking_v1.delete_namespaced_ingress("web-canary", NAMESPACE)
    assert sim_app.metrics()["error_rate"] == 0.0


def test_metrics_down_modes(sim_app: SimApp) -> None:
    """Metrics can answer 503, reset the connection, or refuse it, and come back."""
    metrics = f"{sim_app.url}/api/metrics"
    sim_app.set_metrics_down("503")
    assert http_status(metrics) == 503
    assert http_status(f"{sim_app.url}/health") == 200

    sim_app.set_metrics_down("reset")
    with pytest.raises((ConnectionResetError, urllib.error.URLError)):
        http_status(metrics)

    sim_app.set_metrics_down("refused")
    with pytest.raises(urllib.error.URLError) as refused:
        http_status(metrics)
    assert isinstance(refused.value.reason, ConnectionRefusedError)

    sim_app.set_metrics_down(None)
    assert http_status(metrics) == 200


def test_app_control_over_http(sim_app: SimApp, apiserver: ApiServer) -> None:
    """POST /_sim/app sets health, metrics, rules and the canary link."""
    settings = {
        "health": "degraded",
        "metrics": {"p99_latency": 2.0},
        "rules": [{"metric": "error_rate", "value": 0.5, "min_weight": 0}],
        "link": {"namespace": NAMESPACE, "ingress": "web-canary"},
    }
    state = http_json("POST", f"{sim_app.url}/_sim/app", settings)
    assert state["metrics"] == {"error_rate": 0.5, "p99_latency": 2.0, "requests": 1000.0}
    assert http_json("GET", f"{sim_app.url}/health") == {"status": "degraded"}
    with pytest.raises(urllib.error.HTTPError) as refused:
        http_json("POST", f"{sim_app.url}/_sim/app", {"metrics_down": "refused"})
    assert refused.value.code == 400
    refused.value.close()


# The process


def test_python_m_kubesim_serves_and_stops(kubesim_process: dict[str, Any]) -> None:
    """`python -m kubesim` prints its ports, serves the API and apps, and exits on SIGTERM."""
    kube = api_client(kubesim_process["apiserver"])
    try:
        apps_v1 = client.AppsV1Api(kube)
        apps_v1.create_namespaced_deployment(NAMESPACE, deployment())
        wait_until(
            lambda: (
                apps_v1.read_namespaced_deployment("web", NAMESPACE).status.available_replicas == 2
            )
        )
    finally:
        kube.close()

    app_url = kubesim_process["apps"]["production"]["url"]
    assert http_json("GET", f"{app_url}/health") == {"status": "healthy"}
    control = f"{kubesim_process['apiserver']}/_sim/apps/production"
    assert http_json("POST", control, {"metrics_down": "refused"})["metrics_down"] == "refused"
    assert http_json("POST", control, {"metrics_down": None})["metrics_down"] is None

    process = kubesim_process["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=5) == 0
