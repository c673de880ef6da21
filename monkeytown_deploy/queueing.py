"""Putting trigger jobs on the queue, and finding the newest one for a target cheaply.

Every trigger job is enqueued through :func:`enqueue_trigger`: RQ's ``unique=True`` under
the trigger id (so nothing is enqueued twice), plus an entry in a per-target sorted set
scored by the commit time. A job deciding whether a newer trigger supersedes it reads the
top of that set instead of unpickling every queued job: with thousands queued, the scan
made each job cost seconds and a backlog took hours to drain.
"""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue
from rq.job import Job, JobStatus

from monkeytown_deploy.keys import key

TRIGGER_JOB = "workers.jobs.run_trigger"
"""The job the workers run, named as a string: the watcher never imports the workers."""

_LIVE = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


def target_index(target: str) -> str:
    """The sorted set of trigger ids queued or running for *target*, scored by commit time."""
    return key("queued", target)


def enqueue_trigger(queue: Queue, request: dict[str, Any], *, timeout: int) -> Job:
    """Enqueue *request* as its trigger's one job; raises RQ's ``DuplicateJobError`` if known.

    The index entry is written first: a crash between the two leaves an entry whose job
    does not exist yet, which readers skip, never a job that readers cannot see.
    """
    trigger_id = request["trigger_id"]
    queue.connection.zadd(target_index(request["target"]), {trigger_id: request["committed_at"]})
    return queue.enqueue_call(
        TRIGGER_JOB,
        args=(request,),
        job_id=trigger_id,
        timeout=timeout,
        description=f"deploy {request['sha']} to {request['target']} ({request['path']})",
        meta={name: request[name] for name in ("path", "sha", "target", "trigger_id")},
        unique=True,
    )


def forget_trigger(client: redis.Redis, target: str, trigger_id: str) -> None:
    """Take a finished trigger job out of its target's index."""
    client.zrem(target_index(target), trigger_id)


def newer_trigger(client: redis.Redis, request: dict[str, Any], *, exclude: str) -> str | None:
    """The id of a live trigger job for the same target that is newer than *request*.

    Newer means a later commit, then (within one commit) a later enqueue. Only the top of
    the index is read; entries whose job has ended or vanished are dropped on the way.
    """
    index = target_index(request["target"])
    committed_at = float(request["committed_at"])
    mine = (committed_at, float(request.get("enqueued_at", 0)))
    while True:
        later = client.zrevrangebyscore(index, "+inf", f"({committed_at}", start=0, num=10)
        same = client.zrangebyscore(index, committed_at, committed_at)
        candidates = [m.decode() for m in (*later, *same) if m.decode() != exclude]
        if not candidates:
            return None
        newer, ended = _judge(client, candidates, mine)
        if newer is not None:
            return newer
        if not ended:
            return None
        client.zrem(index, *ended)
        if not later:
            return None


def _judge(
    client: redis.Redis, candidates: list[str], mine: tuple[float, float]
) -> tuple[str | None, list[str]]:
    ended: list[str] = []
    for job_id, job in zip(candidates, Job.fetch_many(candidates, connection=client), strict=True):
        if job is None or job.get_status(refresh=False) not in _LIVE:
            ended.append(job_id)
            continue
        other = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
        order = (float(other.get("committed_at", 0)), float(other.get("enqueued_at", 0)))
        if order > mine:
            return job_id, ended
    return None, ended
