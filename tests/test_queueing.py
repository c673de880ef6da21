"""The per-target index that lets a job find a newer trigger without reading the queue."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from rq import Queue
from rq.exceptions import DuplicateJobError

from monkeytown_deploy.keys import QUEUE
from monkeytown_deploy.queueing import (
    enqueue_trigger,
    enqueue_triggers,
    forget_trigger,
    newer_trigger,
    target_index,
)


def request(
    trigger: str, committed_at: float, enqueued_at: float, target: str = "production"
) -> dict[str, Any]:
    return {
        "trigger_id": trigger, "path": f"t/{trigger}.md", "sha": "a" * 40, "target": target,
        "committed_at": committed_at, "enqueued_at": enqueued_at,
    }  # fmt: skip


def test_a_later_commit_for_the_same_target_is_newer(redis_client: redis.Redis) -> None:
    """A trigger from a later commit supersedes; another target's never does."""
    queue = Queue(QUEUE, connection=redis_client)
    old = request("trigger-old", 100.0, 1.0)
    enqueue_trigger(queue, old, timeout=60)
    enqueue_trigger(queue, request("trigger-dev", 300.0, 3.0, target="development"), timeout=60)
    assert newer_trigger(redis_client, old, exclude="trigger-old") is None

    enqueue_trigger(queue, request("trigger-new", 200.0, 2.0), timeout=60)
    assert newer_trigger(redis_client, old, exclude="trigger-old") == "trigger-new"


def test_within_one_commit_the_later_enqueue_is_newer(redis_client: redis.Redis) -> None:
    """Two triggers of one commit: the one enqueued later supersedes the other, not back."""
    queue = Queue(QUEUE, connection=redis_client)
    first, second = request("trigger-a", 100.0, 1.0), request("trigger-b", 100.0, 2.0)
    enqueue_trigger(queue, first, timeout=60)
    enqueue_trigger(queue, second, timeout=60)

    assert newer_trigger(redis_client, first, exclude="trigger-a") == "trigger-b"
    assert newer_trigger(redis_client, second, exclude="trigger-b") is None


def test_entries_whose_job_ended_are_dropped(redis_client: redis.Redis) -> None:
    """A newer entry whose job is gone no longer counts, and leaves the index."""
    queue = Queue(QUEUE, connection=redis_client)
    old = request("trigger-old", 100.0, 1.0)
    enqueue_trigger(queue, old, timeout=60)
    enqueue_trigger(queue, request("trigger-gone", 200.0, 2.0), timeout=60)
    queue.fetch_job("trigger-gone").delete()  # type: ignore[union-attr]

    assert newer_trigger(redis_client, old, exclude="trigger-old") is None
    assert redis_client.zrange(target_index("production"), 0, -1) == [b"trigger-old"]
    forget_trigger(redis_client, "production", "trigger-old")
    assert redis_client.zcard(target_index("production")) == 0


def test_a_trigger_is_enqueued_once(redis_client: redis.Redis) -> None:
    """Enqueueing the same trigger again is refused by RQ's unique check."""
    queue = Queue(QUEUE, connection=redis_client)
    enqueue_trigger(queue, request("trigger-x", 100.0, 1.0), timeout=60)
    with pytest.raises(DuplicateJobError):
        enqueue_trigger(queue, request("trigger-x", 100.0, 1.0), timeout=60)
    assert queue.count == 1


def test_a_batch_enqueues_new_jobs_and_leaves_existing_ones(redis_client: redis.Redis) -> None:
    """One pipelined batch: new ids become queued jobs in order, a known id is untouched."""
    queue = Queue(QUEUE, connection=redis_client)
    enqueue_trigger(queue, request("trigger-b", 100.0, 1.0), timeout=60)
    before = redis_client.hgetall("rq:job:trigger-b")
    batch = [request(name, 200.0, 2.0) for name in ("trigger-a", "trigger-b", "trigger-c")]

    jobs = enqueue_triggers(queue, batch, timeout=90)
    assert [job and job.id for job in jobs] == ["trigger-a", None, "trigger-c"]
    assert queue.job_ids == ["trigger-b", "trigger-a", "trigger-c"]
    assert redis_client.hgetall("rq:job:trigger-b") == before
    job = queue.fetch_job("trigger-c")
    assert job is not None
    assert (job.func_name, job.args, job.timeout, job.origin) == (
        "workers.jobs.run_trigger",
        (batch[2],),
        90,
        QUEUE,
    )
    assert job.get_status() == "queued" and job.enqueued_at is not None
    assert job.meta == {"path": "t/trigger-c.md", "sha": "a" * 40, "target": "production",
                        "trigger_id": "trigger-c"}  # fmt: skip
    assert redis_client.zscore(target_index("production"), "trigger-c") == 200.0
