"""The approval policies, checked against real git history and real SSH signatures."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.watcher.conftest import Checkout, trigger_text
from triggers import TRIGGER_DIR, parse_trigger
from triggers.approval import ApprovalVerdict, check_approval, sha_reachable

APPROVER = {"GIT_COMMITTER_NAME": "Grace Human", "GIT_COMMITTER_EMAIL": "grace@monkeytown.test"}


def _verdict(repo: Checkout, name: str, policy: str, **kwargs: Any) -> ApprovalVerdict:
    path = f"{TRIGGER_DIR}/{name}"
    tip = repo.head()
    content = repo.git("show", f"{tip}:{path}").encode()
    trigger = parse_trigger(content, path).trigger
    assert trigger is not None
    return check_approval(repo.path, "main", path, tip, trigger, policy, **kwargs)


def _merge_from_side_branch(repo: Checkout, name: str, env: dict[str, str]) -> None:
    repo.git("checkout", "-q", "-b", "agent-work")
    repo.add_trigger(name, target="production")
    repo.git("checkout", "-q", "main")
    repo.git("merge", "-q", "--no-ff", "-m", "merge agent work", "agent-work", env=env)


def test_agent_commit_on_branch_is_rejected_under_merge(checkout: Checkout) -> None:
    """An agent's own commit saying approved for production fails the merge rule."""
    checkout.add_trigger("deploy-forged.md", target="production")
    verdict = _verdict(checkout, "deploy-forged.md", "merge", approvers=["grace@monkeytown.test"])
    assert not verdict.approved
    assert verdict.rule == "approval.merge"
    assert "directly on the protected branch" in verdict.reason


def test_merge_by_an_approver_is_accepted(checkout: Checkout) -> None:
    """The same trigger merged into main by a configured approver passes the merge rule."""
    _merge_from_side_branch(checkout, "deploy-merged.md", APPROVER)
    verdict = _verdict(checkout, "deploy-merged.md", "merge", approvers=["Grace Human"])
    assert verdict.approved, verdict.reason
    assert verdict.rule == "approval.merge"


def test_merge_by_a_non_approver_is_rejected(checkout: Checkout) -> None:
    """A merge made by someone not on the approver list does not approve anything."""
    _merge_from_side_branch(checkout, "deploy-agent-merge.md", {})
    verdict = _verdict(
        checkout, "deploy-agent-merge.md", "merge", approvers=["grace@monkeytown.test"]
    )
    assert not verdict.approved
    assert "not an approver" in verdict.reason


def test_approver_cannot_merge_their_own_trigger(checkout: Checkout) -> None:
    """An approver who also wrote the trigger commit cannot approve it by merging."""
    own = {
        **APPROVER,
        "GIT_AUTHOR_NAME": "Grace Human",
        "GIT_AUTHOR_EMAIL": "grace@monkeytown.test",
    }
    checkout.git("checkout", "-q", "-b", "grace-work")
    checkout.write("deploy-own.md", trigger_text("own", checkout.base, target="production"))
    checkout.commit("grace writes a trigger", env=own)
    checkout.git("checkout", "-q", "main")
    checkout.git("merge", "-q", "--no-ff", "-m", "merge", "grace-work", env=own)
    verdict = _verdict(checkout, "deploy-own.md", "merge", approvers=["grace@monkeytown.test"])
    assert not verdict.approved
    assert "may not approve their own" in verdict.reason


def test_pending_status_is_never_approved(checkout: Checkout) -> None:
    """A file that says pending is not approved under any policy."""
    checkout.add_trigger("deploy-pending.md", status="pending")
    verdict = _verdict(checkout, "deploy-pending.md", "trust-file")
    assert not verdict.approved
    assert verdict.rule == "approval.status"


def test_unknown_policy_fails_closed(checkout: Checkout) -> None:
    """A misspelt policy name rejects instead of trusting the file."""
    checkout.add_trigger("deploy-x.md")
    verdict = _verdict(checkout, "deploy-x.md", "trust-me")
    assert not verdict.approved
    assert verdict.rule == "approval.policy"


def test_sha_reachable_only_from_the_branch(checkout: Checkout) -> None:
    """A SHA on an unmerged branch is refused; one on main is returned in full."""
    checkout.git("checkout", "-q", "-b", "unmerged")
    side = checkout.commit("unmerged code")
    checkout.git("checkout", "-q", "main")
    assert sha_reachable(checkout.path, checkout.base[:8], "main") == checkout.base
    assert sha_reachable(checkout.path, side, "main") is None
    assert sha_reachable(checkout.path, "deadbeef", "main") is None


def test_signed_commit_is_accepted_and_unsigned_rejected(
    checkout: Checkout, signing_key: tuple[Path, Path]
) -> None:
    """Under signature, an SSH-signed trigger commit passes and an unsigned one fails."""
    key, allowed = signing_key
    checkout.add_trigger("deploy-unsigned.md", target="production")
    unsigned = _verdict(checkout, "deploy-unsigned.md", "signature", allowed_signers=allowed)
    assert not unsigned.approved
    assert unsigned.rule == "approval.signature"

    checkout.git("config", "gpg.format", "ssh")
    checkout.git("config", "user.signingkey", str(key))
    checkout.git("config", "user.email", "grace@monkeytown.test")
    checkout.write("deploy-signed.md", trigger_text("signed", checkout.base, target="production"))
    checkout.git("add", "-A")
    checkout.git("commit", "-q", "-S", "-m", "signed trigger")
    signed = _verdict(checkout, "deploy-signed.md", "signature", allowed_signers=allowed)
    assert signed.approved, signed.reason


def test_signature_from_an_unknown_key_is_rejected(
    checkout: Checkout, signing_key: tuple[Path, Path], tmp_path: Path
) -> None:
    """A commit signed by a key missing from the allowed-signers file fails."""
    _, allowed = signing_key
    other = tmp_path / "agent_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    checkout.git("config", "gpg.format", "ssh")
    checkout.git("config", "user.signingkey", str(other))
    checkout.write("deploy-agent-signed.md", trigger_text("x", checkout.base, target="production"))
    checkout.git("add", "-A")
    checkout.git("commit", "-q", "-S", "-m", "agent signs its own trigger")
    verdict = _verdict(checkout, "deploy-agent-signed.md", "signature", allowed_signers=allowed)
    assert not verdict.approved
