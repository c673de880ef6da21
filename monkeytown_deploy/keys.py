"""Every Redis key the daemon uses is built here, under one prefix.

One function means one place to look when an operator asks what lives in Redis, and no
two modules that disagree about a key's spelling.
"""

from __future__ import annotations

PREFIX = "monkeytown-deploy"

QUEUE = "deployments"
"""The RQ queue every deployment and rollback job goes through."""


def key(*parts: str) -> str:
    """``monkeytown-deploy:<part>:<part>...``; parts must not contain ``:``."""
    for part in parts:
        if not part or ":" in part:
            raise ValueError(f"a Redis key part must be non-empty and free of ':' (got {part!r})")
    return ":".join((PREFIX, *parts))
