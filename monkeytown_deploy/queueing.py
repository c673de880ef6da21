"""Putting trigger jobs on the queue, and finding the newest one for a target cheaply.

Every trigger job is enqueued through :func:`enqueue_triggers`: RQ's unique enqueue under
the trigger id (so nothing is enqueued twice), plus an entry in a per-target sorted set
scored by the commit time. A job deciding whether a newer trigger supersedes it reads the
top of that set instead of unpickling every queued job: with thousands queued, the scan
made each job cost seconds and a backlog took hours to drain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from rq import Queue
from rq.exceptions import DuplicateJobError
from rq.job import Job, JobStatus
from rq.scripts import get_unique_enqueue_script
from rq.utils import now

from monkeytown_deploy.keys import key

TRIGGER_JOB = "workers.jobs.run_trigger"
"""The job the workers run, named as a string: the watcher never imports the workers."""

_LIVE = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


def target_index(target: str) -> str:
    """The sorted set of trigger ids queued or running for *target*, scored by commit time."""
    return key("queued", target)


def enqueue_trigger(queue: Queue, request: dict[str, Any], *, timeout: int) -> Job:
    """Enqueue *request* as its trigger's one job; raises RQ's ``DuplicateJobError`` if known."""
    [job] = enqueue_triggers(queue, [request], timeout=timeout)
    if job is None:
        raise DuplicateJobError(f"job {request['trigger_id']} already exists")
    return job


def enqueue_triggers(
    queue: Queue, requests: Sequence[dict[str, Any]], *, timeout: int
) -> list[Job | None]:
    """Enqueue each request as its trigger's one job, all in one round trip.

    Returns, per request, its new job, or None where a job with its id already existed
    (which is left untouched). Each job is saved and pushed by RQ's own unique-enqueue
    script, the atomic check-and-save behind ``enqueue_call(unique=True)``; what this adds
    is running the scripts of a whole batch in one pipeline, since one round trip per
    trigger was the largest cost of a big commit.

    Commands run in order, so each index entry is written before its job: a connection
    lost half-way leaves entries whose job does not exist yet, which readers skip, never
    a job that readers cannot see.
    """
    if not requests:
        return []
    connection = queue.connection
    unique_enqueue = get_unique_enqueue_script(connection)  # type: ignore[no-untyped-call]
    jobs = [_trigger_job(queue, request, timeout) for request in requests]
    with connection.pipeline(transaction=False) as pipe:
        for request in requests:
            index_entry = {request["trigger_id"]: request["committed_at"]}
            pipe.zadd(target_index(request["target"]), index_entry)
        pipe.sadd(queue.redis_queues_keys, queue.key)
        for job in jobs:
            ttl = -1 if job.ttl is None else job.ttl
            push = [job.id, "R", ttl, *_fields(job)]  # append to the queue's tail, like RQ
            unique_enqueue(keys=[job.key, queue.key], args=push, client=pipe)
        results = pipe.execute()
    saved = results[len(requests) + 1 :]
    return [job if result == 1 else None for job, result in zip(jobs, saved, strict=True)]


def _trigger_job(queue: Queue, request: dict[str, Any], timeout: int) -> Job:
    """The job RQ's ``enqueue_call`` would build for *request*, ready to be saved."""
    job = queue.create_job(
        TRIGGER_JOB,
        args=(request,),
        job_id=request["trigger_id"],
        timeout=timeout,
        description=f"deploy {request['sha']} to {request['target']} ({request['path']})",
        meta={name: request[name] for name in ("path", "sha", "target", "trigger_id")},
    )
    job.enqueued_at = now()
    return job


def _fields(job: Job) -> list[str | bytes]:
    """The job's hash as the field, value pairs the unique-enqueue script writes."""
    pairs: list[str | bytes] = []
    for name, value in job.to_dict().items():
        if value is not None:
            pairs += [name, value if isinstance(value, str | bytes) else str(value)]
    return pairs


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
