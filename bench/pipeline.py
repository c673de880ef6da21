"""Benchmark the workers' control loop against the simulated cluster.

    .venv/bin/python bench/pipeline.py [--runs 10] [--breaches 3] [--interval 1.0]

Two figures:

1. **Stage overhead**: the time a development stage takes *minus* the configured waits
   (the rollout wait, where the job only polls the controller). What remains is the
   workers' own control work: lease, checkpoints, audit records, server-side apply of
   the overlay, gates. Goal: at most 100 ms. The one-off render of the overlays
   (``git archive`` + ``kubectl kustomize``, once per job for all stages) is shown apart.
2. **Breach to rollback**: a production canary whose error rate jumps to 5% at a random
   moment of a step's analysis window; the time from the jump to the ``rollback.started``
   audit record. Goal: at most one analysis interval + 1 s.

Everything runs on this machine: an embedded Redis-compatible server, kubesim's API server
with its Deployment controller (auto mode) and simulated apps, the example deploy tree in
a temporary git repository. kubesim answers without Nagle's delay, as a real API server
does, so request timings are the workers' and not the simulator's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubesim import ApiServer, DeploymentController, SimApp  # noqa: E402
from monkeytown_deploy.config import CONFIG_ENV  # noqa: E402
from monkeytown_deploy.redis_server import RedisServer  # noqa: E402
from triggers import TRIGGER_DIR, Environment, trigger_id  # noqa: E402

NAMESPACES = {"development": "monkeytown-dev", "staging": "monkeytown-staging",
              "production": "monkeytown-prod"}  # fmt: skip


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def make_repo(folder: Path) -> Path:
    repo = folder / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Bench")
    git(repo, "config", "user.email", "bench@monkeytown.test")
    shutil.copytree(ROOT / "examples" / "monkeytown" / "deploy", repo / "deploy")
    git(repo, "add", "deploy")
    git(repo, "commit", "-q", "-m", "deploy tree")
    return repo


def release_and_trigger(repo: Path, target: str, note: str) -> dict[str, Any]:
    (repo / "RELEASE").write_text(note)
    git(repo, "add", "RELEASE")
    git(repo, "commit", "-q", "-m", note)
    sha = git(repo, "rev-parse", "HEAD")
    path = f"{TRIGGER_DIR}/deploy-{note}.md"
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(
        f"## Trigger: {note}\n\n### Environment\nTarget: {target}\n\n### Approval\n"
        f"Status: approved\nApproved-by: bench\n\n### Deployment ID\nSHA: {sha}\n"
        "Timestamp: 2026-01-18T12:00:00Z\n"
    )
    git(repo, "add", path)
    git(repo, "commit", "-q", "-m", f"trigger {note}")
    blob = git(repo, "rev-parse", f"HEAD:{path}")
    return {
        "trigger_id": trigger_id(path, blob), "path": path, "blob": blob, "sha": sha,
        "target": target, "action": "deploy", "to_revision": None, "repo": str(repo),
        "branch": "main", "commit": git(repo, "rev-parse", "HEAD"),
        "committed_at": time.time(), "enqueued_at": time.time(),
    }  # fmt: skip


def write_config(  # noqa: PLR0917 -- one call site, every value differs
    folder: Path, redis_url: str, api: str, apps: dict[str, SimApp], interval: float, samples: int
) -> None:
    lines = [
        f'redis_url = "{redis_url}"', f'state_dir = "{folder / "state"}"',
        f'audit_log = "{folder / "audit.jsonl"}"', "lease_ttl = 5",
    ]  # fmt: skip
    for env, namespace in NAMESPACES.items():
        lines += [
            f"[environments.{env}]", f'namespace = "{namespace}"', f'kube_api_url = "{api}"',
            f'base_url = "{apps[env].url}"', 'approval_policy = "trust-file"',
            "gate_timeout = 2", "progress_deadline = 30",
        ]  # fmt: skip
    lines += [
        "[environments.production.canary]", "steps = [10, 25, 50]",
        f"analysis_interval = {interval}", f"samples = {samples}", "min_requests = 50",
    ]  # fmt: skip
    (folder / "config.toml").write_text("\n".join(lines) + "\n")
    os.environ[CONFIG_ENV] = str(folder / "config.toml")


def audit(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines()]


def stamp(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()


def stage_overhead(folder: Path, repo: Path, runs: int) -> dict[str, list[float]]:
    from workers.jobs import run_trigger

    figures: dict[str, list[float]] = {"stage": [], "waits": [], "overhead": [], "render": []}
    for number in range(runs):
        request = release_and_trigger(repo, "development", f"dev{number}")
        run_trigger(request)
        mine = [r for r in audit(folder) if r.get("job_id") == request["trigger_id"]]
        stage = next(r["duration_ms"] for r in mine if r["event"] == "stage.completed")
        waits = sum(r["duration_ms"] for r in mine if r["event"] == "rollout.ready")
        figures["stage"].append(stage)
        figures["waits"].append(waits)
        figures["overhead"].append(stage - waits)
        figures["render"].append(next(r["duration_ms"] for r in mine if r["event"] == "render"))
    return figures


def breach_to_rollback(folder: Path, repo: Path, app: SimApp, breaches: int,
                       interval: float) -> list[float]:  # fmt: skip
    from workers.jobs import DeploymentFailed, run_trigger

    delays = []
    for number in range(breaches):
        app.set_metrics(error_rate=0.0)
        request = release_and_trigger(repo, "production", f"prod{number}")
        breach: dict[str, float] = {}
        flipper = threading.Thread(target=_breach_during_step, args=(folder, request, app, breach))
        flipper.start()
        with contextlib.suppress(DeploymentFailed):  # the breach fails it, as intended
            run_trigger(request)
        flipper.join()
        started = next(
            r for r in audit(folder)
            if r["event"] == "rollback.started" and r["job_id"] == request["trigger_id"]
        )  # fmt: skip
        delays.append(stamp(started) - breach["at"])
    return delays


def _breach_during_step(folder: Path, request: dict[str, Any], app: SimApp,
                        breach: dict[str, float]) -> None:  # fmt: skip
    """Wait for the 25% step, then raise the error rate at a random point of its window."""
    job = request["trigger_id"]
    while not any(
        r["event"] == "canary.step" and r.get("weight") == 25 and r["job_id"] == job
        for r in audit(folder)
    ):
        time.sleep(0.01)
    time.sleep(random.uniform(0, 1.0))
    breach["at"] = time.time()
    app.set_metrics(error_rate=0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="development deploys to time")
    parser.add_argument("--breaches", type=int, default=3, help="canary breaches to time")
    parser.add_argument("--interval", type=float, default=1.0, help="analysis interval, s")
    parser.add_argument("--samples", type=int, default=3, help="samples per canary step")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        folder = Path(tmp)
        with (
            RedisServer(folder / "redis") as redis_server,
            ApiServer() as server,
            DeploymentController(server, mode="auto") as _,
        ):
            apps = {env.value: SimApp(name=env.value, apiserver=server) for env in Environment}
            try:
                for app in apps.values():
                    app.set_agents([{"name": "bench"}])
                write_config(folder, redis_server.url, server.url, apps, args.interval,
                             args.samples)  # fmt: skip
                repo = make_repo(folder)
                overhead = stage_overhead(folder, repo, args.runs)
                delays = breach_to_rollback(
                    folder, repo, apps["production"], args.breaches, args.interval
                )
            finally:
                for app in apps.values():
                    app.close()
    report(overhead, delays, args.interval)


def report(overhead: dict[str, list[float]], delays: list[float], interval: float) -> None:
    def line(name: str, values: list[float]) -> str:
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        return (f"  {name:<34} median {statistics.median(values):7.1f} ms   "
                f"p95 {p95:7.1f} ms   max {max(values):7.1f} ms")  # fmt: skip

    print(f"development stage, {len(overhead['stage'])} deploys (5 objects, 2 Deployments):")
    print(line("stage, total", overhead["stage"]))
    print(line("rollout waits (excluded)", overhead["waits"]))
    print(line("control overhead (goal <= 100 ms)", overhead["overhead"]))
    print(line("render, once per job (apart)", overhead["render"]))
    goal = interval + 1.0
    print(f"metric breach -> rollback.started, interval {interval:.1f} s (goal <= {goal:.1f} s):")
    for number, delay in enumerate(delays, 1):
        print(f"  breach {number}: {delay:.3f} s")
    print(f"  max {max(delays):.3f} s -> {'met' if max(delays) <= goal else 'MISSED'}")


if __name__ == "__main__":
    main()
