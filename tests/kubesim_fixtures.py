"""Pytest fixtures for the simulated cluster (kubesim); load with `pytest_plugins`.

Every fixture closes what it started, so the suite's leak checks stay quiet.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubesim import ApiServer, DeploymentController, SimApp, api_client

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def apiserver() -> Iterator[ApiServer]:
    """A fresh simulated API server on a free port."""
    with ApiServer() as server:
        yield server


@pytest.fixture
def controller(apiserver: ApiServer) -> Iterator[DeploymentController]:
    """A Deployment controller in manual mode: the test calls step() or settle()."""
    with DeploymentController(apiserver, mode="manual") as deployment_controller:
        yield deployment_controller


@pytest.fixture
def kube(apiserver: ApiServer) -> Iterator[client.ApiClient]:
    """A real kubernetes ApiClient pointed at the simulated API server."""
    kubernetes_client = api_client(apiserver.url)
    yield kubernetes_client
    kubernetes_client.close()


@pytest.fixture
def apps_v1(kube: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(kube)


@pytest.fixture
def core_v1(kube: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture
def networking_v1(kube: client.ApiClient) -> client.NetworkingV1Api:
    return client.NetworkingV1Api(kube)


@pytest.fixture
def sim_app(apiserver: ApiServer) -> Iterator[SimApp]:
    """A simulated application that can be linked to the API server's canary Ingress."""
    with SimApp(name="production", apiserver=apiserver) as app:
        yield app


@pytest.fixture
def kubesim_process() -> Iterator[dict[str, Any]]:
    """`python -m kubesim` in its own process, with one app; yields its ready line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kubesim", "--app", "production", "--time-factor", "0.01"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        yield {**ready, "process": process}
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()
