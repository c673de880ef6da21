"""Soak: thousands of triggers through the whole system, watching every process's footprint.

    python bench/soak.py --minutes 30 --triggers 10000 [--out bench/results/soak.json]

Starts the same process tree as the system tests (Redis with AOF, kubesim with an app
per environment, two watchers following a bare origin, two plain ``rq`` workers), then an
agent pushes commits at an accelerated pace, each adding a batch of development and
staging triggers for a new release, until both the time and the trigger count are
reached. Every 10 s it samples RSS, open descriptors and child processes of each
service (work-horses included). At the end it waits for the queue to drain, verifies the
audit chain, and reports each process's memory and descriptor slope over the run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).parents[1]))

from tests.system.harness import System, git, trigger_text, wait_for
from triggers import TRIGGER_DIR


def footprint(process: psutil.Process) -> dict[str, float]:
    """RSS (MiB), open descriptors and children of *process* and everything under it."""
    tree = [process, *process.children(recursive=True)]
    rss = fds = 0.0
    for member in tree:
        try:
            rss += member.memory_info().rss / 2**20
            fds += member.num_fds()
        except psutil.NoSuchProcess:
            continue
    return {"rss_mib": round(rss, 2), "fds": fds, "children": len(tree) - 1}


def sample(system: System, started: float) -> dict[str, Any]:
    row: dict[str, Any] = {"t": round(time.monotonic() - started, 1)}
    for name, service in system.services.items():
        if service.process is not None and service.process.poll() is None:
            row[name] = footprint(psutil.Process(service.process.pid))
    if system.redis_server is not None and system.redis_server.process is not None:
        row["redis"] = footprint(psutil.Process(system.redis_server.process.pid))
    return row


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of value over time, per hour."""
    if len(points) < 2:
        return 0.0
    xs, ys = zip(*points, strict=True)
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    den = sum((x - mean_x) ** 2 for x in xs) or 1.0
    return num / den * 3600


def push_batch(system: System, batch: int, size: int) -> int:
    """One commit: a new release and *size* triggers for it; returns how many were added."""
    clone = system.agent.clone
    (clone / "CHANGELOG").write_text(f"release {batch}\n")
    git(clone, "add", "CHANGELOG")
    git(clone, "commit", "-qm", f"Release {batch}")
    sha = git(clone, "rev-parse", "HEAD")
    folder = clone / TRIGGER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(size):
        target = "staging" if index == size - 1 else "development"
        path = folder / f"soak-{batch:05d}-{index:03d}.md"
        path.write_text(trigger_text(f"soak {batch}.{index}", target, sha))
    git(clone, "add", str(folder))
    git(clone, "commit", "-qm", f"Request deployments for release {batch}")
    system.agent.push()
    return size


def run(minutes: float, triggers: int, batch_size: int, root: Path) -> dict[str, Any]:
    system = System(root, appendfsync="everysec")
    system.start()
    started = time.monotonic()
    samples = [sample(system, started)]
    pushed = batch = 0
    next_sample = started + 10
    try:
        while time.monotonic() - started < minutes * 60 or pushed < triggers:
            pushed += push_batch(system, batch, batch_size)
            batch += 1
            pace = (minutes * 60) / max(1, triggers / batch_size)
            time.sleep(max(0.0, min(pace, started + batch * pace - time.monotonic())))
            if time.monotonic() >= next_sample:
                samples.append(sample(system, started))
                next_sample += 10
                print(json.dumps({"pushed": pushed, **samples[-1]}), flush=True)
        wait_for(lambda: _drained(system), 1800, "the queue to drain", interval=2)
        samples.append(sample(system, started))
        return report(system, samples, pushed, time.monotonic() - started)
    finally:
        system.stop()


def _drained(system: System) -> bool:
    jobs = system.job_ids()
    return not jobs["queued"] and not jobs["started"]


def report(
    system: System, samples: list[dict[str, Any]], pushed: int, seconds: float
) -> dict[str, Any]:
    records = system.records()
    events: dict[str, int] = {}
    for record in records:
        events[record["event"]] = events.get(record["event"], 0) + 1
    services = sorted({key for row in samples for key in row if key != "t"})
    processes = {}
    for name in services:
        rows = [(row["t"], row[name]) for row in samples if name in row]
        warm = [r for r in rows if r[0] >= 120] or rows  # skip start-up growth
        processes[name] = {
            "rss_mib_first": rows[0][1]["rss_mib"],
            "rss_mib_last": rows[-1][1]["rss_mib"],
            "rss_mib_per_hour": round(slope_per_hour([(t, v["rss_mib"]) for t, v in warm]), 2),
            "fds_first": rows[0][1]["fds"],
            "fds_last": rows[-1][1]["fds"],
            "fds_per_hour": round(slope_per_hour([(t, v["fds"]) for t, v in warm]), 2),
            "children_max": max(v["children"] for _, v in rows),
        }
    return {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"python {platform.python_version()}",
        "minutes": round(seconds / 60, 1),
        "triggers_pushed": pushed,
        "events": events,
        "audit_records": len(records),
        "audit_chain_intact": system.audit_intact(),
        "processes": processes,
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--triggers", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=20, help="triggers per commit")
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        result = run(args.minutes, args.triggers, args.batch, Path(folder))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    summary = {key: value for key, value in result.items() if key != "samples"}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
