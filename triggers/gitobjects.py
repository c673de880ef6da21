"""Reading committed state from git, through the ``git`` command.

A subprocess per call leaves nothing behind in a long-running daemon (GitPython keeps
``cat-file`` helpers and descriptors open unless every handle is closed), and git's own
plumbing output is stable and quick to parse.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from triggers.ids import BlobSha, CommitSha


class GitError(RuntimeError):
    """A git command failed; the message carries git's own explanation."""


def git(repo: Path | str, *args: str, input: bytes | None = None, check: bool = True) -> bytes:
    """Run ``git -C repo args...`` and return its standard output."""
    completed = subprocess.run(
        ["git", "-C", str(repo), *args],
        input=input,
        capture_output=True,
        check=False,
        env=_GIT_ENV,
    )
    if check and completed.returncode != 0:
        detail = completed.stderr.decode(errors="replace").strip() or f"exit {completed.returncode}"
        raise GitError(f"git {' '.join(args[:3])} in {repo}: {detail}")
    return completed.stdout


# Never prompt for credentials, never page, and parse messages in one language.
_GIT_ENV = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "LC_ALL": "C"}


def resolve_commit(repo: Path | str, sha: str) -> CommitSha:
    """The full 40-digit id of the commit *sha* names (short SHAs are resolved)."""
    out = git(repo, "rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}", check=False)
    full = out.decode().strip()
    if not full:
        raise GitError(f"SHA {sha} does not name a commit in {repo}")
    return CommitSha(full)


def is_ancestor(repo: Path | str, commit: str, branch: str) -> bool:
    """True when *commit* is reachable from the tip of *branch*."""
    result = subprocess.run(
        ["git", "-C", str(repo), "merge-base", "--is-ancestor", commit, branch],
        capture_output=True,
        check=False,
        env=_GIT_ENV,
    )
    return result.returncode == 0


@dataclass(frozen=True)
class TreeEntry:
    """One entry of ``git ls-tree``: mode, type, object id, size and path."""

    mode: str
    kind: str
    object: BlobSha
    size: int | None
    path: str


def list_tree(repo: Path | str, revision: str, folder: str) -> list[TreeEntry]:
    """Every entry directly under *folder* at *revision* (empty when the folder is absent)."""
    out = git(repo, "ls-tree", "-z", "--long", "--full-tree", revision, "--", f"{folder}/")
    entries = []
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.decode("utf-8", "surrogateescape").partition("\t")
        mode, kind, obj, size = meta.split()
        entries.append(
            TreeEntry(mode, kind, BlobSha(obj), None if size == "-" else int(size), path)
        )
    return entries


def read_blobs(repo: Path | str, blobs: list[str]) -> dict[str, bytes]:
    """The content of many blobs in one ``git cat-file --batch`` call."""
    if not blobs:
        return {}
    out = git(repo, "cat-file", "--batch", input="\n".join(blobs).encode() + b"\n")
    contents: dict[str, bytes] = {}
    position = 0
    for _ in blobs:
        header_end = out.index(b"\n", position)
        header = out[position:header_end].decode().split()
        if len(header) < 3:  # "<id> missing"
            position = header_end + 1
            continue
        size = int(header[2])
        start = header_end + 1
        contents[header[0]] = out[start : start + size]
        position = start + size + 1
    return contents


def branch_tip(repo: Path | str, branch: str) -> CommitSha:
    return CommitSha(git(repo, "rev-parse", "--verify", f"{branch}^{{commit}}").decode().strip())


def current_branch(repo: Path | str) -> str:
    """The checked-out branch's short name."""
    name = git(repo, "symbolic-ref", "--short", "-q", "HEAD", check=False).decode().strip()
    if not name:
        raise GitError(f"{repo} has a detached HEAD; pass --branch to say which branch to follow")
    return name
