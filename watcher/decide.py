"""From a committed tree entry to a decision: accepted, pending or rejected, with the rule.

Nothing here touches Redis or the queue; a :class:`Judge` reads git and the trigger rules
and says what a file means. Every rejection names the rule it broke and a message a person
can act on, so a bad file is recorded and the daemon goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from triggers import MAX_TRIGGER_BYTES, Environment, Trigger, TriggerId, parse_trigger, trigger_id
from triggers.approval import check_approval
from triggers.gitobjects import GitError, TreeEntry, is_ancestor, resolve_commit
from triggers.ids import CommitSha
from triggers.model import ApprovalStatus

REGULAR_FILE = "100644"


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    PENDING = "pending"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Policy:
    """The approval policy of one environment, in the plain terms ``triggers`` takes."""

    name: str
    approvers: tuple[str, ...] = ()
    allowed_signers: Path | None = None


@dataclass(frozen=True)
class Snapshot:
    """The branch tip a reconcile reads: every decision is about this one commit."""

    repo: Path
    branch: str
    commit: CommitSha
    committed_at: float


@dataclass(frozen=True)
class Decision:
    """What one committed version of one trigger file means."""

    trigger_id: TriggerId
    path: str
    blob: str
    outcome: Outcome
    rule: str
    reason: str
    trigger: Trigger | None = None
    sha: CommitSha | None = None

    @property
    def target(self) -> str:
        return str(self.trigger.target) if self.trigger else ""


@dataclass
class Judge:
    """Decides trigger files at one snapshot; remembers SHA reachability for the pass."""

    snapshot: Snapshot
    policy_for: Callable[[Environment], Policy]
    resolved: dict[str, CommitSha] = field(default_factory=dict)
    _reachable: dict[str, CommitSha | None] = field(default_factory=dict)

    def decide_all(
        self, entries: Iterable[TreeEntry], contents: Mapping[str, bytes]
    ) -> list[Decision]:
        return [self.decide(entry, contents.get(entry.object)) for entry in entries]

    def decide(self, entry: TreeEntry, content: bytes | None) -> Decision:
        identity = trigger_id(entry.path, entry.object)

        def reject(rule: str, reason: str, trigger: Trigger | None = None) -> Decision:
            return Decision(
                identity, entry.path, entry.object, Outcome.REJECTED, rule, reason, trigger
            )

        unfit = file_problem(entry)
        if unfit is not None:
            return reject(*unfit)
        if content is None:
            return reject("file.unreadable", f"{entry.path}: blob {entry.object} is missing")
        parsed = parse_trigger(content, entry.path)
        if parsed.trigger is None or parsed.errors:
            first = parsed.errors[0].rule if parsed.errors else "trigger.invalid"
            return reject(first, "; ".join(parsed.error_lines()) or f"{entry.path}: invalid")
        trigger = parsed.trigger
        if trigger.status is ApprovalStatus.PENDING:
            return Decision(
                identity, entry.path, entry.object, Outcome.PENDING, "approval.status",
                "Status: pending; a later commit that approves it will be deployed", trigger,
            )  # fmt: skip
        if trigger.status is not ApprovalStatus.APPROVED:
            return reject("approval.status", f"{entry.path}: Status: {trigger.status}", trigger)
        sha = self._reachable_sha(trigger.sha)
        if sha is None:
            return reject(
                "deployment.sha_unreachable",
                f"{entry.path}: SHA {trigger.sha} is not a commit reachable from "
                f"{self.snapshot.branch}; merge the code first, then commit the trigger",
                trigger,
            )
        return self._approve(identity, entry, trigger, sha)

    def _approve(
        self, identity: TriggerId, entry: TreeEntry, trigger: Trigger, sha: CommitSha
    ) -> Decision:
        policy = self.policy_for(Environment(trigger.target))
        verdict = check_approval(
            self.snapshot.repo, self.snapshot.branch, entry.path, self.snapshot.commit,
            trigger, policy.name, policy.approvers, policy.allowed_signers,
        )  # fmt: skip
        outcome = Outcome.ACCEPTED if verdict.approved else Outcome.REJECTED
        reason = verdict.reason if verdict.approved else f"{entry.path}: {verdict.reason}"
        return Decision(
            identity, entry.path, entry.object, outcome, verdict.rule, reason, trigger, sha
        )

    def _reachable_sha(self, sha: str) -> CommitSha | None:
        if sha not in self._reachable:
            full = self.resolved.get(sha) or _resolve(self.snapshot.repo, sha)
            if full is not None:
                self.resolved[sha] = full  # a SHA names the same commit forever
            reachable = full is not None and is_ancestor(
                self.snapshot.repo, full, self.snapshot.commit
            )
            self._reachable[sha] = full if reachable else None
        return self._reachable[sha]


def _resolve(repo: Path, sha: str) -> CommitSha | None:
    try:
        return resolve_commit(repo, sha)
    except GitError:
        return None  # not (yet) fetched: not remembered, a later pass may find it


def file_problem(entry: TreeEntry) -> tuple[str, str] | None:
    """Why a tree entry cannot be a trigger (rule, reason), or None when it may be one."""
    if entry.mode == "120000":
        return "file.symlink", f"{entry.path} is a symbolic link; commit a regular file"
    if entry.kind != "blob":
        return "file.not_regular", f"{entry.path} is a {entry.kind}, not a regular file"
    if entry.mode != REGULAR_FILE:
        return "file.mode", f"{entry.path} has mode {entry.mode}; triggers are plain 100644 files"
    if not entry.path.endswith(".md"):
        return "file.name", f"{entry.path} does not end in .md; trigger files are markdown"
    if entry.size is not None and entry.size > MAX_TRIGGER_BYTES:
        return (
            "file.size",
            f"{entry.path} is {entry.size} bytes; a trigger may be at most "
            f"{MAX_TRIGGER_BYTES} bytes (64 KiB)",
        )
    return None


def readable(entries: Iterable[TreeEntry]) -> list[str]:
    """The blobs worth reading: entries that may be triggers."""
    return [entry.object for entry in entries if file_problem(entry) is None]
