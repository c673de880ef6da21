"""The workers' harness: a git repo with the example deploy tree, a simulated cluster with
one simulated application per environment, a configuration pointing at both, and helpers
to commit triggers, seed what an environment ran before, and read the audit log.

Everything talks real HTTP: the workers reach kubesim through the real kubernetes client.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from kubesim import ApiServer, DeploymentController, SimApp
from monkeytown_deploy.config import CONFIG_ENV, load_settings
from triggers import TRIGGER_DIR, Environment, trigger_id
from workers.kube import DEPLOYMENT, Cluster
from workers.render import render_overlays, with_images
from workers.rollout import wait_for_rollout

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DEPLOY = ROOT / "examples" / "monkeytown" / "deploy"
NAMESPACES = {
    Environment.DEVELOPMENT: "monkeytown-dev",
    Environment.STAGING: "monkeytown-staging",
    Environment.PRODUCTION: "monkeytown-prod",
}
STABLE_WEB = "/apis/apps/v1/namespaces/monkeytown-prod/deployments/monkeytown-web"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def image(component: str, sha: str) -> str:
    return f"ghcr.io/anomalyco/monkeytown-{component}:{sha}"


TRIGGER = """## Trigger: {title}

### Changes
- {title}

### Environment
Target: {target}

### Approval
Status: {status}
Approved-by: human-merge

### Deployment ID
SHA: {sha}
Timestamp: 2026-01-18T12:00:00Z
{action}"""


@dataclass
class DeployRepo:
    """A checkout on branch main holding the example deploy tree."""

    path: Path
    releases: list[str] = field(default_factory=list)

    def release(self, note: str) -> str:
        """Commit a change (a new release of the app) and return its full SHA."""
        (self.path / "RELEASE").write_text(note + "\n")
        git(self.path, "add", "RELEASE")
        git(self.path, "commit", "-q", "-m", f"release {note}")
        sha = git(self.path, "rev-parse", "HEAD")
        self.releases.append(sha)
        return sha

    def trigger(
        self,
        target: str,
        sha: str,
        *,
        name: str | None = None,
        status: str = "approved",
        rollback_to: int | None = None,
    ) -> dict[str, Any]:
        """Commit a trigger file and return the job request the watcher would enqueue."""
        name = name or f"deploy-{target}-{sha[:8]}"
        path = f"{TRIGGER_DIR}/{name}.md"
        action = ""
        if rollback_to is not None:
            action = f"\n### Action\nType: rollback\nTo-Revision: {rollback_to}\n"
        text = TRIGGER.format(title=name, target=target, status=status, sha=sha, action=action)
        (self.path / path).parent.mkdir(parents=True, exist_ok=True)
        (self.path / path).write_text(text)
        git(self.path, "add", path)
        git(self.path, "commit", "-q", "-m", f"trigger {name}")
        commit = git(self.path, "rev-parse", "HEAD")
        blob = git(self.path, "rev-parse", f"HEAD:{path}")
        return {
            "trigger_id": trigger_id(path, blob),
            "path": path,
            "blob": blob,
            "sha": sha,
            "target": target,
            "action": "rollback" if rollback_to is not None else "deploy",
            "to_revision": rollback_to,
            "repo": str(self.path),
            "branch": "main",
            "commit": commit,
            "committed_at": float(git(self.path, "log", "-1", "--format=%ct")),
            "enqueued_at": time.time(),
        }


@pytest.fixture
def deploy_repo(git_repo: Path) -> DeployRepo:
    """The example deploy tree committed in a fresh repository, with one release."""
    shutil.copytree(EXAMPLE_DEPLOY, git_repo / "deploy")
    git(git_repo, "add", "deploy")
    git(git_repo, "commit", "-q", "-m", "deploy tree")
    repo = DeployRepo(git_repo)
    repo.release("v1")
    return repo


@dataclass
class SimCluster:
    """The API server, its controller, and one simulated app per environment."""

    server: ApiServer
    controller: DeploymentController
    apps: dict[Environment, SimApp]

    def writes(self, path: str, since: float = 0.0) -> list[Any]:
        """Write requests whose path is exactly *path* (not the canary beside it)."""
        return [r for r in self.server.requests(writes=True, since=since) if r.path == path]

    def deployment(self, environment: Environment, name: str = "monkeytown-web") -> Any:
        from kubesim.resources import DEPLOYMENTS

        return self.server.store.find(DEPLOYMENTS, NAMESPACES[environment], name)

    def find(self, resource: Any, environment: Environment, name: str) -> Any:
        return self.server.store.find(resource, NAMESPACES[environment], name)


@pytest.fixture
def sim() -> Iterator[SimCluster]:
    """A simulated cluster whose controller rolls Deployments out on its own."""
    with ApiServer() as server, DeploymentController(server, mode="auto", time_factor=0.002) as ctl:
        apps = {env: SimApp(name=env.value, apiserver=server) for env in Environment}
        try:
            for app in apps.values():
                app.set_agents([{"name": "ChaosArchitect"}])
            apps[Environment.PRODUCTION].link(server, "monkeytown-prod", "monkeytown-web-canary")
            yield SimCluster(server, ctl, apps)
        finally:
            for app in apps.values():
                app.close()


class Webhook:
    """A Slack-compatible webhook receiver that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        messages = self.messages

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                messages.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = Thread(target=self.server.serve_forever, name="webhook", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def kinds(self) -> list[str]:
        return [message["event"] for message in self.messages]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


Configure = Callable[..., Path]


@pytest.fixture
def configure(
    tmp_path: Path,
    sim: SimCluster,
    redis_url: str,
    webhook: Webhook,
    monkeypatch: pytest.MonkeyPatch,
) -> Configure:
    """Write a config pointing at the simulated cluster; keyword arguments override it."""

    def write(**overrides: Any) -> Path:
        canary = {
            "steps": [10, 25, 50],
            "analysis_interval": 1.0,
            "samples": 1,
            "failure_limit": 0,
            "min_requests": 50,
            **overrides.pop("canary", {}),
        }
        lines = [
            f'redis_url = "{overrides.pop("redis_url", redis_url)}"',
            f'state_dir = "{tmp_path / "state"}"',
            f'audit_log = "{tmp_path / "audit.jsonl"}"',
            f'notify_webhook = "{webhook.url}"',
            f"job_timeout = {overrides.pop('job_timeout', 120)}",
            f"lease_ttl = {overrides.pop('lease_ttl', 3)}",
            f"api_retry_seconds = {overrides.pop('api_retry_seconds', 10)}",
            f"dry_run = {'true' if overrides.pop('dry_run', False) else 'false'}",
        ]
        for env in Environment:
            lines += [
                f"[environments.{env.value}]",
                f'namespace = "{NAMESPACES[env]}"',
                f'kube_api_url = "{sim.server.url}"',
                f'base_url = "{sim.apps[env].url}"',
                'approval_policy = "trust-file"',
                f"progress_deadline = {overrides.get('progress_deadline', 10)}",
                f"gate_timeout = {overrides.get('gate_timeout', 1)}",
            ]
        lines.append("[environments.production.canary]")
        lines += [f"{name} = {json.dumps(value)}" for name, value in canary.items()]
        path = tmp_path / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        monkeypatch.setenv(CONFIG_ENV, str(path))
        load_settings()  # fail here, not inside a job, on a bad test configuration
        return path

    return write


def seed(repo: DeployRepo, sim: SimCluster, environment: Environment, sha: str) -> None:
    """Make *environment* run *sha* as if an earlier deploy had put it there."""
    settings = load_settings()
    env = settings.environment(environment)
    rendered = render_overlays(repo.path, sha, "deploy/overlays", [environment])[environment]
    objects = [
        obj
        for obj in with_images(rendered, env, sha)
        if not obj["metadata"]["name"].endswith("-canary")
    ]
    cluster = Cluster.connect(env)
    try:
        for obj in objects:
            cluster.apply(obj, env.namespace)
        for obj in objects:
            if obj["kind"] == "Deployment":
                name = obj["metadata"]["name"]
                wait_for_rollout(cluster, env.namespace, name, deadline=10)
    finally:
        cluster.close()


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def events(path: Path, name: str, **fields: Any) -> list[dict[str, Any]]:
    """Audit records of event *name* whose fields match *fields*."""
    return [
        record
        for record in audit_records(path)
        if record["event"] == name and all(record.get(k) == v for k, v in fields.items())
    ]


def live_image(sim: SimCluster, environment: Environment, name: str = "monkeytown-web") -> str:
    deployment = sim.deployment(environment, name)
    assert deployment is not None, f"{name} does not exist in {environment}"
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


__all__ = ["DEPLOYMENT", "STABLE_WEB", "live_image"]
