"""Typed identifiers shared by the watcher, the workers and the CLI.

A commit SHA, a trigger id and an environment name are all strings on the wire; giving each
its own type keeps them from being swapped silently, and gives one place that says what a
well-formed value looks like.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import NewType

CommitSha = NewType("CommitSha", str)
"""A commit id, 7 to 40 lower-case hex digits (full 40 once resolved against a repo)."""

BlobSha = NewType("BlobSha", str)
"""A git blob id: the content address of one version of a trigger file."""

TriggerId = NewType("TriggerId", str)
"""``trigger-<hex>``: names one version of one trigger file; usable as an RQ job id."""

_SHA_RE = re.compile(r"[0-9a-f]{7,40}")
_TRIGGER_ID_RE = re.compile(r"trigger-[0-9a-f]{32}")


class Environment(StrEnum):
    """The environments a trigger can target, in the order a deploy walks them."""

    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"

    def stages(self) -> tuple[Environment, ...]:
        """Every environment a deploy to this target passes through, this one last."""
        order = tuple(Environment)
        return order[: order.index(self) + 1]


def is_commit_sha(value: str) -> bool:
    """True when *value* is 7 to 40 lower-case hex digits."""
    return _SHA_RE.fullmatch(value) is not None


def trigger_id(path: str, blob: str) -> TriggerId:
    """The identity of one committed version of one trigger file.

    The same path with the same content is the same trigger in every process and after any
    restart, which is what lets the watcher enqueue each one exactly once. Different content
    at the same path (an approval committed later, say) is a new trigger.
    """
    digest = hashlib.sha256(f"{path}\0{blob}".encode()).hexdigest()
    return TriggerId(f"trigger-{digest[:32]}")


def is_trigger_id(value: str) -> bool:
    """True when *value* has the shape :func:`trigger_id` produces."""
    return _TRIGGER_ID_RE.fullmatch(value) is not None
