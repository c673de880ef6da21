"""Soak: thousands of triggers through the whole system, watching every process's footprint.

    python bench/soak.py --minutes 30 --triggers 10000 [--keep 1000] [--out FILE]

Starts the same process tree as the system tests (Redis with AOF, kubesim with an app
per environment, two watchers following a bare origin, two plain ``rq`` workers), then an
agent pushes commits at an accelerated pace, each adding a batch of development and
staging triggers for a new release, until both the time and the trigger count are
reached. Every 10 s it samples the RSS and open descriptors of each long-lived process
and how many children it has (a worker's work-horse comes and goes with each job). At
the end it waits for the queue to drain, verifies the audit chain, and reports each
process's memory and descriptor slope over the run.

``--keep`` bounds the trigger folder: each commit also deletes the oldest files beyond
that many, as a repository that prunes handled decisions would. A watcher's full pass
reads the whole folder, so its memory follows the folder's size (``bench/detect.py``
measures that); with the folder bounded, a slope that remains is a leak. ``--keep 0``
never deletes.
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
    """RSS (MiB) and open descriptors of *process*, and how many children it has now.

    Children are counted, not added: a work-horse is a fork that shares most of its
    pages with the worker, and summing RSS would count them twice.
    """
    with process.oneshot():
        rss = process.memory_info().rss / 2**20
        fds = process.num_fds()
    return {"rss_mib": round(rss, 2), "fds": fds, "children": len(process.children(True))}


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


def push_batch(system: System, batch: int, size: int, keep: int) -> int:
    """One commit: a new release and *size* triggers for it; returns how many were added.

    With *keep*, the same commit deletes the oldest trigger files beyond that many.
    """
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
    if keep:
        for old in sorted(folder.glob("soak-*.md"))[:-keep]:
            old.unlink()
    git(clone, "add", "--all", str(folder))
    git(clone, "commit", "-qm", f"Request deployments for release {batch}")
    system.agent.push()
    return size


def run(minutes: float, triggers: int, batch_size: int, keep: int, root: Path) -> dict[str, Any]:
    system = System(root, appendfsync="everysec")
    system.start()
    started = time.monotonic()
    samples = [sample(system, started)]
    pushed = batch = 0
    next_sample = started + 10
    try:
        while time.monotonic() - started < minutes * 60 or pushed < triggers:
            pushed += push_batch(system, batch, batch_size, keep)
            batch += 1
            pace = (minutes * 60) / max(1, triggers / batch_size)
            time.sleep(max(0.0, min(pace, started + batch * pace - time.monotonic())))
            if time.monotonic() >= next_sample:
                samples.append(sample(system, started))
                next_sample += 10
                print(json.dumps({"pushed": pushed, **samples[-1]}), flush=True)
        wait_for(lambda: _drained(system), 1800, "the queue to drain", interval=2)
        samples.append(sample(system, started))
        return {"keep": keep, **report(system, samples, pushed, time.monotonic() - started)}
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
    # Every accepted trigger's job must end exactly once, one way or another.
    ended = sum(events.get(name, 0) for name in ("job.succeeded", "job.superseded", "job.failed"))
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
        "jobs_unaccounted": events.get("trigger.accepted", 0) - ended,
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
    parser.add_argument(
        "--keep", type=int, default=1000, help="trigger files kept in the folder (0: all)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        result = run(args.minutes, args.triggers, args.batch, args.keep, Path(folder))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    summary = {key: value for key, value in result.items() if key != "samples"}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
