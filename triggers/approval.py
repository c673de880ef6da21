"""Approval that an agent cannot forge: what makes a committed trigger count as approved.

An agent can write ``Status: approved`` into a file itself, so for anything beyond
development the text is not enough. A policy names what else must be true, and is checked
against git alone, which is why the watcher (before enqueueing) and the workers (again,
before deploying) can both call it and get the same answer.

Public API::

    check_approval(repo, branch, path, commit, trigger, policy, approvers, allowed_signers)
        -> ApprovalVerdict(approved: bool, rule: str, reason: str)
    sha_reachable(repo, sha, branch) -> CommitSha | None
    last_change(repo, commit, path) -> CommitSha | None
    POLICIES = ("trust-file", "merge", "signature")

*policy* is a plain string (``trust-file``, ``merge`` or ``signature``) because this
package must not import the configuration. *commit* is the branch tip at which the trigger
was read. Rules a verdict can name:

- ``approval.status``: the file does not say ``Status: approved``.
- ``approval.trust-file``: trust-file policy; the text is the approval.
- ``approval.merge``: the commit that last changed the file on *branch* (following first
  parents only, so a merged side branch shows as its merge commit) must be a merge
  committed by one of *approvers*, who is not the author of the side-branch commit that
  wrote the file. Approvers are matched on committer e-mail or name, case-insensitively.
  This trusts the committer field, so it relies on the hosting side (branch protection)
  to make sure only the merge button writes merges to the protected branch.
- ``approval.signature``: that same commit must verify with ``git verify-commit`` against
  the *allowed_signers* file (SSH signatures; ssh-keygen must be installed).
- ``approval.policy``: the policy name is unknown (fails closed).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from triggers.gitobjects import _GIT_ENV, GitError, git, is_ancestor, resolve_commit
from triggers.ids import CommitSha
from triggers.model import ApprovalStatus, Trigger

POLICIES = ("trust-file", "merge", "signature")


@dataclass(frozen=True)
class ApprovalVerdict:
    """Whether a trigger counts as approved, the rule that decided, and why, in words."""

    approved: bool
    rule: str
    reason: str


@dataclass(frozen=True)
class _Identity:
    name: str
    email: str

    def matches(self, approver: str) -> bool:
        wanted = approver.strip().lower()
        if "<" in wanted:  # "Name <email>"
            wanted = wanted.split("<", 1)[1].rstrip(">").strip()
        return wanted in (self.email.lower(), self.name.lower())

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


def check_approval(  # noqa: PLR0917 - the signature the workers were promised
    repo: Path | str,
    branch: str,
    path: str,
    commit: str,
    trigger: Trigger,
    policy: str,
    approvers: Sequence[str] = (),
    allowed_signers: Path | None = None,
) -> ApprovalVerdict:
    """Decide whether *trigger*, read from *path* at *commit* on *branch*, is approved.

    Never raises for a trigger that fails a rule; a :class:`GitError` means git itself could
    not answer (a missing repository, say) and the check should be retried later.
    """
    if trigger.status is not ApprovalStatus.APPROVED:
        return ApprovalVerdict(
            False, "approval.status", f'the file says "Status: {trigger.status}", not approved'
        )
    if policy == "trust-file":
        return ApprovalVerdict(True, "approval.trust-file", "trust-file policy: the text suffices")
    if policy not in POLICIES:
        allowed = ", ".join(POLICIES)
        return ApprovalVerdict(
            False, "approval.policy", f'unknown approval policy "{policy}" (use one of {allowed})'
        )
    changed_by = last_change(repo, commit, path)
    if changed_by is None:
        return ApprovalVerdict(
            False, f"approval.{policy}", f"{path} is not part of {branch} at {commit[:12]}"
        )
    if policy == "merge":
        return _check_merge(repo, path, changed_by, approvers)
    return _check_signature(repo, changed_by, allowed_signers)


def last_change(repo: Path | str, commit: str, path: str) -> CommitSha | None:
    """The commit that last changed *path*, walking first parents back from *commit*.

    On a branch that only receives merges this is the merge that brought the file in; a
    commit made straight on the branch shows as itself.
    """
    out = git(repo, "log", "-1", "--first-parent", "--format=%H", commit, "--", path)
    found = out.decode().strip()
    return CommitSha(found) if found else None


def sha_reachable(repo: Path | str, sha: str, branch: str) -> CommitSha | None:
    """The full SHA *sha* names when that commit is reachable from *branch*, else None."""
    try:
        full = resolve_commit(repo, sha)
    except GitError:
        return None
    return full if is_ancestor(repo, full, branch) else None


def _check_merge(
    repo: Path | str, path: str, merge: CommitSha, approvers: Sequence[str]
) -> ApprovalVerdict:
    parents = _parents(repo, merge)
    if len(parents) < 2:
        return ApprovalVerdict(
            False,
            "approval.merge",
            f"{merge[:12]} changed {path} directly on the protected branch; "
            "it must arrive in a merge made by an approver",
        )
    committer = _identity(repo, merge, "c")
    if not any(committer.matches(approver) for approver in approvers):
        known = ", ".join(approvers) or "none configured"
        return ApprovalVerdict(
            False,
            "approval.merge",
            f"merge {merge[:12]} was committed by {committer}, who is not an approver "
            f"(approvers: {known})",
        )
    written_by = last_change(repo, parents[1], path)
    author = _identity(repo, written_by, "a") if written_by else None
    if author is not None and (author.email.lower() == committer.email.lower()):
        return ApprovalVerdict(
            False,
            "approval.merge",
            f"{committer} both wrote {path} ({str(written_by)[:12]}) and merged it; "
            "an approver may not approve their own trigger",
        )
    return ApprovalVerdict(True, "approval.merge", f"merged by approver {committer}")


def _check_signature(
    repo: Path | str, commit: CommitSha, allowed_signers: Path | None
) -> ApprovalVerdict:
    if allowed_signers is None or not Path(allowed_signers).is_file():
        return ApprovalVerdict(
            False,
            "approval.signature",
            f"no allowed-signers file (got {allowed_signers}); set allowed_signers for "
            "this environment to verify signed commits",
        )
    result = subprocess.run(
        [
            "git", "-C", str(repo),
            "-c", f"gpg.ssh.allowedSignersFile={Path(allowed_signers).resolve()}",
            "verify-commit", "--raw", commit,
        ],
        capture_output=True,
        check=False,
        env=_GIT_ENV,
    )  # fmt: skip
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        why = detail[-1] if detail else "no signature"
        return ApprovalVerdict(
            False,
            "approval.signature",
            f"{commit[:12]} carries no valid signature from an allowed signer ({why})",
        )
    return ApprovalVerdict(True, "approval.signature", f"{commit[:12]} signed by an allowed key")


def _parents(repo: Path | str, commit: str) -> list[str]:
    return git(repo, "show", "-s", "--format=%P", commit).decode().split()


def _identity(repo: Path | str, commit: str, who: str) -> _Identity:
    """Author (``who="a"``) or committer (``"c"``) of *commit*."""
    out = git(repo, "show", "-s", f"--format=%{who}n%x00%{who}e", commit).decode().strip()
    name, _, email = out.partition("\0")
    return _Identity(name, email)
