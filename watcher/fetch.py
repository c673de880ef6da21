"""Keeping the checkout current: ``git fetch`` and a fast-forward, nothing else.

The watcher never merges, rebases or resets: a branch that was force-pushed or has local
commits is left alone and reported, because moving it would deploy what nobody merged.
"""

from __future__ import annotations

from pathlib import Path

from triggers.gitobjects import GitError, git, is_ancestor


class FetchError(RuntimeError):
    """Fetching or fast-forwarding failed; the message says what to do."""


def fetch_and_fast_forward(repo: Path, remote: str, branch: str) -> bool:
    """Fetch *branch* from *remote* and fast-forward the local branch; True if it moved."""
    upstream = f"refs/remotes/{remote}/{branch}"
    try:
        git(repo, "fetch", "--quiet", "--no-tags", remote, f"+refs/heads/{branch}:{upstream}")
    except GitError as exc:
        raise FetchError(f"git fetch {remote} {branch} failed: {exc}") from exc
    local = _rev(repo, f"refs/heads/{branch}")
    remote_tip = _rev(repo, upstream)
    if remote_tip is None or local == remote_tip:
        return False
    if local is not None and not is_ancestor(repo, local, remote_tip):
        raise FetchError(
            f"{branch} at {local[:12]} is not an ancestor of {remote}/{branch} at "
            f"{remote_tip[:12]} (force-push or local commits); fix the checkout by hand, "
            "the watcher only fast-forwards"
        )
    _move(repo, branch, local, remote_tip)
    return True


def _move(repo: Path, branch: str, local: str | None, target: str) -> None:
    checked_out = git(repo, "symbolic-ref", "-q", "HEAD", check=False).decode().strip()
    try:
        if checked_out == f"refs/heads/{branch}":
            git(repo, "merge", "--ff-only", "--quiet", target)
        else:
            git(repo, "update-ref", f"refs/heads/{branch}", target, local or "")
    except GitError as exc:
        raise FetchError(f"fast-forward of {branch} to {target[:12]} failed: {exc}") from exc


def _rev(repo: Path, ref: str) -> str | None:
    out = git(repo, "rev-parse", "--verify", "--quiet", ref, check=False).decode().strip()
    return out or None
