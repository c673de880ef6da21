"""The whole daemon as separate processes, the way systemd would run it on one host.

``System`` starts a Redis-compatible server with AOF persistence, the Kubernetes API test
server with its controller stand-in and one simulated application per environment
(``python -m kubesim``), watchers following a checkout through a bare "origin" remote, and
plain ``rq worker deployments`` processes. An :class:`Agent` commits triggers to its own
clone and pushes them; an approver merges them for production. Tests then read the
cluster through the kubernetes client, the RQ registries and the audit log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from monkeytown_deploy.audit import verify
from monkeytown_deploy.redis_server import RedisServer, free_port
from triggers import TRIGGER_DIR

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
EXAMPLE_DEPLOY = ROOT / "examples" / "monkeytown" / "deploy"
APPROVER = ("Release Manager", "release@monkeytown.test")
AGENT = ("Agent Smith", "agent@monkeytown.test")
ENVIRONMENTS = ("development", "staging", "production")
NAMESPACES = {"development": "monkeytown-dev", "staging": "monkeytown-staging", "production": "monkeytown-prod"}  # fmt: skip


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll *condition* until it returns something truthy; fail naming *what* otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def git(repo: Path, *args: str, who: tuple[str, str] = AGENT) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": who[0],
        "GIT_AUTHOR_EMAIL": who[1],
        "GIT_COMMITTER_NAME": who[0],
        "GIT_COMMITTER_EMAIL": who[1],
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


def trigger_text(name: str, target: str, sha: str, status: str = "approved") -> str:
    approved_by = "Approved-by: release-manager\n" if status == "approved" else ""
    return (
        f"## Trigger: {name}\n\n### Changes\n- system test {name}\n\n"
        f"### Environment\nTarget: {target}\n\n"
        f"### Approval\nStatus: {status}\n{approved_by}\n"
        f"### Deployment ID\nSHA: {sha}\nTimestamp: {datetime.now(UTC).isoformat()}\n"
    )


@dataclass
class Agent:
    """An AI agent's clone of the repository: it writes triggers and pushes them."""

    clone: Path

    def commit_trigger(self, name: str, target: str, sha: str, *, push: bool = True) -> str:
        path = self.clone / TRIGGER_DIR / f"{name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(trigger_text(name, target, sha))
        git(self.clone, "add", str(path))
        git(self.clone, "commit", "-qm", f"Request deployment {name}")
        if push:
            self.push()
        return f"{TRIGGER_DIR}/{name}.md"

    def propose_and_merge(self, name: str, target: str, sha: str) -> str:
        """Commit a trigger on a branch, then merge it as the human approver (merge policy)."""
        git(self.clone, "checkout", "-q", "-b", f"agent/{name}")
        path = self.commit_trigger(name, target, sha, push=False)
        git(self.clone, "checkout", "-q", "main")
        git(
            self.clone,
            "merge",
            "-q",
            "--no-ff",
            "-m",
            f"Approve {name}",
            f"agent/{name}",
            who=APPROVER,
        )
        self.push()
        return path

    def push(self) -> None:
        for _ in range(20):  # another pusher may have moved origin's main meanwhile
            with contextlib.suppress(AssertionError):
                git(self.clone, "pull", "-q", "--rebase=false", "--no-edit", "origin", "main")
                git(self.clone, "push", "-q", "origin", "main")
                return
            time.sleep(0.1)
        raise AssertionError("could not push to origin")


@dataclass
class Service:
    """One long-running process of the system, in its own process group.

    Like a systemd unit with ``Restart=always``, a service that dies is started again by
    the system's supervisor until :meth:`stop` is called.
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    wanted: bool = False
    restarts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Service:
        with self.lock:
            self._spawn()
            self.wanted = True
        return self

    def _spawn(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def revive(self) -> None:
        """Start the service again if it died while wanted (what systemd would do)."""
        with self.lock:
            if self.wanted and not self.alive():
                self._reap()
                self._spawn()
                self.restarts += 1

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash (or the OOM killer) would."""
        with self.lock:
            if self.process is None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self._reap()

    def _reap(self) -> None:
        if self.process is None:
            return
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def stop(self, timeout: float = 10.0) -> int | None:
        with self.lock:
            self.wanted = False
            if self.process is None:
                return None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                code: int | None = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                code = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # stragglers of the group
            self._reap()
            return code


@dataclass
class System:
    """Everything, started from a temporary folder."""

    root: Path
    watchers: int = 2
    workers: int = 2
    appendfsync: str = "always"
    canary_interval: float = 1.0
    services: dict[str, Service] = field(default_factory=dict)
    redis_server: RedisServer | None = None
    kube: dict[str, Any] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)
    supervisor: threading.Thread | None = None

    # -- setting up ----------------------------------------------------------------------

    def start(self) -> System:
        self._repositories()
        self.redis_server = RedisServer(self.root / "redis", appendfsync=self.appendfsync).start()
        self._start_kubesim()
        for env in ENVIRONMENTS:  # a healthy Monkeytown has agents at work
            self.set_app(env, agents=["ChaosArchitect", "Builder"])
        self.write_config()
        for index in range(self.watchers):
            self.start_watcher(index)
        for index in range(self.workers):
            self.start_worker(index)
        self.supervisor = threading.Thread(target=self._supervise, name="system-supervisor")
        self.supervisor.start()
        wait_for(self.leader, 20, "a watcher to take the lease")
        return self

    def _supervise(self) -> None:
        while not self.stopping.wait(0.3):
            for name, service in list(self.services.items()):
                if name != "kubesim":
                    service.revive()

    def _repositories(self) -> None:
        self.origin = self.root / "origin.git"
        seed = self.root / "seed"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.origin)], check=True)
        subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
        subprocess.run(["cp", "-r", str(EXAMPLE_DEPLOY), str(seed / "deploy")], check=True)
        (seed / "README.md").write_text("Monkeytown\n")
        git(seed, "add", ".")
        git(seed, "commit", "-qm", "Monkeytown with its deploy tree")
        git(seed, "remote", "add", "origin", str(self.origin))
        git(seed, "push", "-q", "origin", "main")
        self.release_sha = git(seed, "rev-parse", "HEAD")
        self.agent = Agent(self.clone("agent"))

    def clone(self, name: str) -> Path:
        target = self.root / name
        subprocess.run(["git", "clone", "-q", str(self.origin), str(target)], check=True)
        git(target, "config", "user.name", AGENT[0])
        git(target, "config", "user.email", AGENT[1])
        return target

    def new_release(self, note: str) -> str:
        """A new commit on origin's main (new code to deploy); returns its SHA."""
        with (self.agent.clone / "CHANGELOG").open("a") as changelog:
            changelog.write(f"{note}\n")
        git(self.agent.clone, "add", "CHANGELOG")
        git(self.agent.clone, "commit", "-qm", f"Release {note}")
        self.agent.push()
        return git(self.agent.clone, "rev-parse", "HEAD")

    def _start_kubesim(self) -> None:
        argv = [sys.executable, "-m", "kubesim", "--controller", "auto", "--time-factor", "0.01"]
        for env in ENVIRONMENTS:
            argv += ["--app", env]
        log = self.root / "logs" / "kubesim.log"
        service = Service("kubesim", argv, self._env(), log)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as errors:
            service.process = subprocess.Popen(
                argv, env=self._env(), stdout=subprocess.PIPE, stderr=errors,
                start_new_session=True, cwd=ROOT,
            )  # fmt: skip
        assert service.process.stdout is not None
        self.kube = json.loads(service.process.stdout.readline())
        self.services["kubesim"] = service

    @property
    def redis_url(self) -> str:
        assert self.redis_server is not None
        return self.redis_server.url

    @property
    def audit_path(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    def write_config(self, **overrides: str) -> None:
        lines = [
            f'state_dir = "{self.root / "state"}"',
            f'audit_log = "{overrides.get("audit_log", self.audit_path)}"',
            f'redis_url = "{self.redis_url}"',
            "lease_ttl = 10",  # outlives a Redis restart, as the 30 s default does
            "job_timeout = 600",
        ]
        for env in ENVIRONMENTS:
            app = self.kube["apps"][env]["url"]
            policy = "merge" if env == "production" else "trust-file"
            lines += [
                f"[environments.{env}]",
                f'namespace = "{NAMESPACES[env]}"',
                f'kube_api_url = "{self.kube["apiserver"]}"',
                f'base_url = "{app}"',
                f'approval_policy = "{policy}"',
                f'approvers = ["{APPROVER[1]}"]',
                "progress_deadline = 20",
                "gate_timeout = 10",
            ]
            if env == "production":
                lines += [
                    "[environments.production.canary]",
                    f"analysis_interval = {self.canary_interval}",
                    "samples = 2",
                    "min_requests = 10",
                ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MONKEYTOWN_DEPLOY_")}
        env["MONKEYTOWN_DEPLOY_CONFIG"] = str(self.root / "config.toml")
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(ROOT)
        return env

    def start_watcher(self, index: int) -> Service:
        checkout = self.root / f"checkout-{index}"
        if not checkout.exists():
            self.clone(f"checkout-{index}")
        port = free_port()
        argv = [
            str(BIN / "monkeytown-deploy"), "watch", "--repo", str(checkout),
            "--redis-url", self.redis_url, "--remote", "origin", "--fetch-interval", "0.2",
            "--reconcile-interval", "2", "--lease-ttl", "2", "--listen", f"127.0.0.1:{port}",
        ]  # fmt: skip
        name = f"watcher-{index}"
        service = Service(name, argv, self._env(), self.root / "logs" / f"{name}.log").start()
        service.port = port  # type: ignore[attr-defined]
        self.services[name] = service
        return service

    def start_worker(self, index: int) -> Service:
        # Plain rq, as `rq worker deployments` under systemd; no fixed --name, since a
        # restarted worker would find its old name still registered.
        argv = [str(BIN / "rq"), "worker", "deployments", "--url", self.redis_url,
                "--connection-class", "monkeytown_deploy.connection.ResilientRedis",
                "-c", "workers.rq_settings"]  # fmt: skip
        name = f"worker-{index}"
        service = Service(name, argv, self._env(), self.root / "logs" / f"{name}.log").start()
        self.services[name] = service
        return service

    def stop(self) -> None:
        self.stopping.set()
        if self.supervisor is not None:
            self.supervisor.join()
        for name, service in reversed(list(self.services.items())):
            if name != "kubesim":
                service.stop()
        if "kubesim" in self.services:
            self.services["kubesim"].stop()
        if self.redis_server is not None:
            self.redis_server.stop()

    # -- reading state -------------------------------------------------------------------

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def leader(self) -> str | None:
        with contextlib.closing(self.client()) as client:
            try:
                holder = client.get("monkeytown-deploy:lease:watcher")
            except redis.RedisError:
                return None
        return holder.decode() if holder else None

    def records(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [
            r for r in self.records()
            if r["event"] == name and all(r.get(k) == v for k, v in match.items())
        ]  # fmt: skip

    def job_ids(self) -> dict[str, set[str]]:
        """Job ids in each RQ registry of the deployments queue."""
        with contextlib.closing(self.client()) as client:
            queue = Queue("deployments", connection=client)
            return {
                "queued": set(queue.job_ids),
                "started": set(StartedJobRegistry(queue=queue).get_job_ids()),
                "finished": set(FinishedJobRegistry(queue=queue).get_job_ids()),
                "failed": set(FailedJobRegistry(queue=queue).get_job_ids()),
            }

    def audit_intact(self) -> bool:
        report = verify(self.audit_path)
        return report.intact

    def kube_get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.kube["apiserver"] + path, timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body

    def kube_control(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.kube["apiserver"] + path, data=data, method="POST" if data else "GET",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null")

    def image_of(self, env: str, deployment: str = "monkeytown-web") -> str:
        namespace = NAMESPACES[env]
        body = self.kube_get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}")
        return str(body["spec"]["template"]["spec"]["containers"][0]["image"])

    def canary_weight(self) -> int:
        try:
            body = self.kube_get(
                "/apis/networking.k8s.io/v1/namespaces/monkeytown-prod/ingresses/monkeytown-web-canary"
            )
        except urllib.error.HTTPError:
            return 0
        annotations = body["metadata"].get("annotations") or {}
        return int(annotations.get("nginx.ingress.kubernetes.io/canary-weight", "0"))

    def set_app(self, env: str, **settings: Any) -> None:
        self.kube_control(f"/_sim/apps/{env}", settings)


@contextlib.contextmanager
def running_system(root: Path, **options: Any) -> Iterator[System]:
    system = System(root, **options)
    try:
        yield system.start()
    finally:
        system.stop()
