"""The shared vocabulary of monkeytown-deploy: trigger files, their rules, identifiers.

This package imports neither Redis, nor Kubernetes, nor the watcher or the workers; an
import-linter contract keeps it so.
"""

from triggers.ids import (
    BlobSha,
    CommitSha,
    Environment,
    TriggerId,
    is_commit_sha,
    is_trigger_id,
    trigger_id,
)
from triggers.model import Action, ActionType, ApprovalStatus, Rollout, RuleViolation, Trigger
from triggers.parser import (
    MAX_TRIGGER_BYTES,
    ParseResult,
    Problem,
    parse_trigger,
    render_trigger,
)

TRIGGER_DIR = ".monkeytown/decisions/deployment-triggers"
"""Where trigger files live, relative to the repository root."""

__all__ = [
    "MAX_TRIGGER_BYTES",
    "TRIGGER_DIR",
    "Action",
    "ActionType",
    "ApprovalStatus",
    "BlobSha",
    "CommitSha",
    "Environment",
    "ParseResult",
    "Problem",
    "Rollout",
    "RuleViolation",
    "Trigger",
    "TriggerId",
    "is_commit_sha",
    "is_trigger_id",
    "parse_trigger",
    "render_trigger",
    "trigger_id",
]
