"""Reconcile passes over real git history into a real Redis-compatible server."""

from __future__ import annotations

import os
from pathlib import Path

import redis
from rq.job import Job

from monkeytown_deploy.audit import AuditLog
from tests.watcher.conftest import APPROVER, Checkout, audit_events, job_ids, trigger_text
from triggers import TRIGGER_DIR, TriggerId, trigger_id
from watcher.decide import Policy
from watcher.reconcile import Reconciler
from watcher.state import TriggerStore


def _blob(checkout: Checkout, name: str) -> str:
    return checkout.git("rev-parse", f"HEAD:{TRIGGER_DIR}/{name}")


def _id(checkout: Checkout, name: str) -> TriggerId:
    return trigger_id(f"{TRIGGER_DIR}/{name}", _blob(checkout, name))


def test_committed_trigger_becomes_one_job(
    checkout: Checkout, reconciler: Reconciler, queue_client: redis.Redis, audit: AuditLog
) -> None:
    """A committed, approved trigger is enqueued once, with the agreed request and meta."""
    tip = checkout.add_trigger("deploy-one.md")
    report = reconciler.reconcile()
    identity = _id(checkout, "deploy-one.md")
    assert job_ids(queue_client) == [identity]
    job = Job.fetch(identity, connection=queue_client)
    assert job.func_name == "workers.jobs.run_trigger"
    request = job.args[0]
    assert request["sha"] == checkout.base and request["commit"] == tip
    assert request["target"] == "development" and request["action"] == "deploy"
    assert request["repo"] == os.fspath(checkout.path.resolve())
    assert set(request) >= {"blob", "branch", "committed_at", "enqueued_at", "to_revision"}
    assert job.meta == {
        "path": f"{TRIGGER_DIR}/deploy-one.md",
        "sha": checkout.base,
        "target": "development",
        "trigger_id": identity,
    }
    assert report.enqueued == [identity]
    assert TriggerStore(queue_client).state(identity)["state"] == "accepted"
    events = [record["event"] for record in audit_events(audit.path)]
    assert events == ["trigger.accepted", "trigger.enqueued"]


def test_second_pass_enqueues_nothing(
    checkout: Checkout, reconciler: Reconciler, queue_client: redis.Redis
) -> None:
    """Reconciling the same tip again, even from a fresh reconciler, adds no job."""
    checkout.add_trigger("deploy-again.md")
    reconciler.reconcile()
    again = Reconciler(checkout.path, "main", queue_client, reconciler.audit, reconciler.policy_for)
    report = again.reconcile()
    assert report.new == 0 and report.enqueued == []
    assert len(job_ids(queue_client)) == 1


def test_dirty_and_untracked_files_are_not_triggers(
    checkout: Checkout, reconciler: Reconciler, queue_client: redis.Redis
) -> None:
    """An untracked file or an uncommitted edit of a committed one enqueues nothing."""
    checkout.add_trigger("deploy-committed.md", status="pending")
    checkout.write("deploy-untracked.md", trigger_text("untracked", checkout.base))
    checkout.write("deploy-committed.md", trigger_text("edited", checkout.base))
    report = reconciler.reconcile()
    assert report.seen == 1
    assert job_ids(queue_client) == []


def test_pending_then_approving_commit_enqueues_once(
    checkout: Checkout, reconciler: Reconciler, queue_client: redis.Redis
) -> None:
    """A pending trigger is remembered, and enqueued when a later commit approves it."""
    checkout.add_trigger("deploy-later.md", status="pending")
    pending = _id(checkout, "deploy-later.md")
    reconciler.reconcile()
    assert job_ids(queue_client) == []
    assert TriggerStore(queue_client).state(pending)["state"] == "pending"

    checkout.add_trigger("deploy-later.md", status="approved")
    reconciler.reconcile()
    reconciler.reconcile("timer")
    assert job_ids(queue_client) == [_id(checkout, "deploy-later.md")]


def test_identical_content_recommitted_enqueues_nothing(
    checkout: Checkout, reconciler: Reconciler, queue_client: redis.Redis
) -> None:
    """Deleting a trigger and committing the same content again adds no job."""
    checkout.add_trigger("deploy-same.md")
    reconciler.reconcile()
    text = (checkout.folder / "deploy-same.md").read_text()
    (checkout.folder / "deploy-same.md").unlink()
    checkout.commit("remove the trigger")
    reconciler.reconcile()
    checkout.write("deploy-same.md", text)
    checkout.commit("the same trigger again")
    reconciler.reconcile()
    assert len(job_ids(queue_client)) == 1


def test_deleted_trigger_keeps_its_queued_job(
    checkout: Checkout, reconciler: Reconciler, queue_client: redis.Redis
) -> None:
    """Removing a trigger file after it was enqueued leaves the job queued."""
    checkout.add_trigger("deploy-keep.md")
    reconciler.reconcile()
    identity = _id(checkout, "deploy-keep.md")
    (checkout.folder / "deploy-keep.md").unlink()
    checkout.commit("remove the trigger")
    reconciler.reconcile()
    assert Job.fetch(identity, connection=queue_client).get_status() == "queued"


def test_symlink_and_other_files_are_rejected_with_their_reason(
    checkout: Checkout, reconciler: Reconciler, queue_client: redis.Redis
) -> None:
    """A symlink, an executable, a non-markdown file and an oversized file are rejected."""
    checkout.write("real.txt", "not a trigger\n")
    (checkout.folder / "deploy-link.md").symlink_to("real.txt")
    checkout.write("deploy-exec.md", trigger_text("exec", checkout.base))
    (checkout.folder / "deploy-exec.md").chmod(0o755)
    checkout.write("deploy-huge.md", trigger_text("huge", checkout.base) + "x" * 70_000)
    checkout.commit("odd files")
    reconciler.reconcile()
    store = TriggerStore(queue_client)
    rules = {}
    for name in ("deploy-link.md", "deploy-exec.md", "deploy-huge.md", "real.txt"):
        state = store.state(_id(checkout, name))
        assert state["state"] == "rejected"
        rules[name] = state["rule"]
    assert rules == {
        "deploy-link.md": "file.symlink",
        "deploy-exec.md": "file.mode",
        "deploy-huge.md": "file.size",
        "real.txt": "file.name",
    }
    assert job_ids(queue_client) == []


def test_invalid_trigger_is_rejected_with_file_and_line(
    checkout: Checkout, reconciler: Reconciler, queue_client: redis.Redis, audit: AuditLog
) -> None:
    """A malformed trigger is recorded as rejected with its rule and file:line message."""
    checkout.write("deploy-bad.md", trigger_text("bad", checkout.base, target="prod"))
    checkout.add_trigger("deploy-good.md")
    reconciler.reconcile()
    state = TriggerStore(queue_client).state(_id(checkout, "deploy-bad.md"))
    assert state["state"] == "rejected"
    assert state["rule"] == "environment.target"
    assert f"{TRIGGER_DIR}/deploy-bad.md:" in state["reason"] and "prod" in state["reason"]
    rejected = [r for r in audit_events(audit.path) if r["event"] == "trigger.rejected"]
    assert rejected[0]["rule"] == state["rule"]
    assert job_ids(queue_client) == [_id(checkout, "deploy-good.md")]


def test_unmerged_sha_is_rejected(
    checkout: Checkout, reconciler: Reconciler, queue_client: redis.Redis
) -> None:
    """A trigger naming a commit that is not on the branch is refused."""
    checkout.git("checkout", "-q", "-b", "feature")
    side = checkout.commit("unmerged code")
    checkout.git("checkout", "-q", "main")
    checkout.write("deploy-unmerged.md", trigger_text("unmerged", side))
    checkout.commit("trigger for unmerged code")
    reconciler.reconcile()
    state = TriggerStore(queue_client).state(_id(checkout, "deploy-unmerged.md"))
    assert state["rule"] == "deployment.sha_unreachable"
    assert job_ids(queue_client) == []


def test_thousand_triggers_in_one_commit(
    checkout: Checkout, reconciler: Reconciler, queue_client: redis.Redis
) -> None:
    """One commit adding 1,000 approved triggers enqueues 1,000 jobs."""
    for number in range(1000):
        checkout.write(f"deploy-{number:04}.md", trigger_text(f"bulk {number}", checkout.base))
    checkout.commit("a thousand triggers")
    report = reconciler.reconcile()
    assert len(report.enqueued) == 1000
    assert len(job_ids(queue_client)) == 1000


def test_forged_production_approval_rejected_and_merged_one_accepted(
    checkout: Checkout, reconciler: Reconciler, queue_client: redis.Redis
) -> None:
    """Under merge, an agent's own approved commit is rejected; an approver's merge is not."""
    checkout.add_trigger("deploy-forged.md", target="production")
    reconciler.reconcile()
    forged = TriggerStore(queue_client).state(_id(checkout, "deploy-forged.md"))
    assert forged["state"] == "rejected" and forged["rule"] == "approval.merge"

    checkout.git("checkout", "-q", "-b", "agent")
    checkout.add_trigger("deploy-reviewed.md", target="production")
    checkout.git("checkout", "-q", "main")
    checkout.git("merge", "-q", "--no-ff", "-m", "approve", "agent", env=APPROVER)
    reconciler.reconcile()
    assert job_ids(queue_client) == [_id(checkout, "deploy-reviewed.md")]


def test_crash_between_enqueue_and_state_does_not_enqueue_twice(
    checkout: Checkout, reconciler: Reconciler, queue_client: redis.Redis, audit: AuditLog
) -> None:
    """A job whose state was lost (a crash after enqueue) is found as a duplicate, not redone."""
    checkout.add_trigger("deploy-crash.md")
    reconciler.reconcile()
    identity = _id(checkout, "deploy-crash.md")
    queue_client.delete(f"monkeytown-deploy:trigger:{identity}")
    report = Reconciler(
        checkout.path, "main", queue_client, audit, reconciler.policy_for
    ).reconcile()
    assert report.duplicates == [identity] and report.enqueued == []
    assert job_ids(queue_client) == [identity]


def test_signature_policy_through_the_reconciler(
    checkout: Checkout,
    queue_client: redis.Redis,
    audit: AuditLog,
    signing_key: tuple[Path, Path],
) -> None:
    """Under signature, an unsigned production trigger is rejected and an SSH-signed one queued."""
    key, allowed = signing_key
    reconciler = Reconciler(
        checkout.path, "main", queue_client, audit,
        lambda env: Policy("signature", allowed_signers=allowed),
    )  # fmt: skip
    checkout.add_trigger("deploy-unsigned.md", target="production")
    reconciler.reconcile()
    unsigned = TriggerStore(queue_client).state(_id(checkout, "deploy-unsigned.md"))
    assert unsigned["state"] == "rejected" and unsigned["rule"] == "approval.signature"

    checkout.git("config", "gpg.format", "ssh")
    checkout.git("config", "user.signingkey", str(key))
    checkout.git("config", "user.email", "grace@monkeytown.test")
    checkout.write("deploy-signed.md", trigger_text("signed", checkout.base, target="production"))
    checkout.git("add", "-A")
    checkout.git("commit", "-q", "-S", "-m", "signed trigger")
    reconciler.reconcile()
    assert job_ids(queue_client) == [_id(checkout, "deploy-signed.md")]
