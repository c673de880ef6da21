"""Failures sorted by whether trying again can help.

A :class:`TemporaryError` (an API 5xx, a 429, a 409 conflict, a reset connection, a
timeout) is retried with backoff where it happens; once retries run out it fails the job
like any other error. A :class:`PermanentError` (an invalid manifest, a missing overlay, a
failed analysis, a stuck rollout) stops at once and rolls back what the job changed.
"""

from __future__ import annotations


class DeployError(Exception):
    """Something stopped a deployment; the message says what, the value, and what to do."""


class TemporaryError(DeployError):
    """A failure that may pass; *delay* is the wait the other side asked for, if any."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(DeployError):
    """A failure that the same attempt would meet again; roll back and report."""


class LeaseLost(PermanentError):
    """Another worker holds the environment now; this one must stop touching it."""


class Superseded(DeployError):
    """A newer approved trigger for the same target is waiting; this one steps aside."""


class Withdrawn(PermanentError):
    """The trigger is no longer approved, or its SHA left the protected branch."""
