"""The trigger model: what a valid trigger file means, independent of how it was written.

Every value rule lives here, as a pydantic validator that raises :class:`RuleViolation`
with a rule id and a message naming the value it got. The parser maps each violation back
to the line the value came from, so a rule is written once and reported precisely.
"""

from __future__ import annotations

import itertools
import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from triggers.ids import CommitSha, Environment, is_commit_sha


class RuleViolation(ValueError):
    """A value broke a named rule; ``str()`` is the message a user reads."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class ApprovalStatus(StrEnum):
    APPROVED = "approved"
    PENDING = "pending"
    REJECTED = "rejected"


class ActionType(StrEnum):
    DEPLOY = "deploy"
    ROLLBACK = "rollback"


def _choice(rule: str, label: str, enum: type[StrEnum], value: object) -> StrEnum:
    text = str(value).strip().lower()
    try:
        return enum(text)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise RuleViolation(rule, f'{label} must be one of {allowed} (got "{value}")') from None


_DURATION_RE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def parse_duration(rule: str, label: str, value: object) -> float:
    """Seconds from ``"60"``, ``"60s"``, ``"1m"`` or ``"500ms"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION_RE.fullmatch(str(value).strip().lower())
        if match is None:
            raise RuleViolation(
                rule, f'{label} must be a duration like 60s, 1m or 500ms (got "{value}")'
            )
        seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"]]
    if not math.isfinite(seconds) or seconds <= 0:
        raise RuleViolation(rule, f'{label} must be a positive duration (got "{value}")')
    return seconds


def _positive_int(rule: str, label: str, value: object) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise RuleViolation(rule, f'{label} must be a whole number of at least 1 (got "{value}")')
    return int(text)


def _fraction(rule: str, label: str, value: object) -> float:
    try:
        number = float(str(value).strip().rstrip("%")) / (100 if "%" in str(value) else 1)
    except ValueError:
        number = math.nan
    if not 0 <= number <= 1:
        raise RuleViolation(
            rule, f'{label} must be a fraction between 0 and 1, like 0.01 or 1% (got "{value}")'
        )
    return number


class Rollout(BaseModel):
    """Optional ``### Rollout`` overrides; the configuration bounds what they may change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: tuple[int, ...] | None = None
    analysis_interval: float | None = None
    max_error_rate: float | None = None
    max_p99_latency: float | None = None
    failure_limit: int | None = None
    min_requests: int | None = None

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, value: object) -> tuple[int, ...] | None:
        if value is None:
            return None
        if isinstance(value, tuple | list):
            items = list(value)
        else:
            items = [item.strip().rstrip("%") for item in str(value).split(",")]
        message = (
            "Steps must be increasing canary weights between 1 and 100, "
            f'like 10, 25, 50 (got "{value}")'
        )
        try:
            steps = tuple(int(item) for item in items)
        except ValueError:
            raise RuleViolation("rollout.steps", message) from None
        increasing = all(a < b for a, b in itertools.pairwise(steps))
        if not steps or not increasing or steps[0] < 1 or steps[-1] > 100:
            raise RuleViolation("rollout.steps", message)
        return steps

    @field_validator("analysis_interval", "max_p99_latency", mode="before")
    @classmethod
    def _duration(cls, value: object, info: Any) -> float | None:
        label = {"analysis_interval": "Analysis-Interval", "max_p99_latency": "Max-P99-Latency"}
        name = info.field_name
        return None if value is None else parse_duration(f"rollout.{name}", label[name], value)

    @field_validator("max_error_rate", mode="before")
    @classmethod
    def _error_rate(cls, value: object) -> float | None:
        if value is None:
            return None
        return _fraction("rollout.max_error_rate", "Max-Error-Rate", value)

    @field_validator("failure_limit", "min_requests", mode="before")
    @classmethod
    def _count(cls, value: object, info: Any) -> int | None:
        label = {"failure_limit": "Failure-Limit", "min_requests": "Min-Requests"}
        name = info.field_name
        return None if value is None else _positive_int(f"rollout.{name}", label[name], value)


class Action(BaseModel):
    """Optional ``### Action``: a normal deploy, or a rollback to a revision."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: ActionType = ActionType.DEPLOY
    to_revision: int | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: object) -> StrEnum:
        return _choice("action.type", "Type", ActionType, value)

    @field_validator("to_revision", mode="before")
    @classmethod
    def _revision(cls, value: object) -> int | None:
        return None if value is None else _positive_int("action.to_revision", "To-Revision", value)

    @model_validator(mode="after")
    def _revision_needs_rollback(self) -> Action:
        if self.to_revision is not None and self.type is not ActionType.ROLLBACK:
            raise RuleViolation(
                "action.to_revision", "To-Revision is only allowed with Type: rollback"
            )
        return self


class Trigger(BaseModel):
    """One deployment request, as committed by an agent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    title: str
    changes: tuple[str, ...] = ()
    target: Environment
    status: ApprovalStatus
    approved_by: str | None = None
    sha: CommitSha
    timestamp: datetime
    rollout: Rollout | None = None
    action: Action = Action()

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        if not value.strip():
            raise RuleViolation("title.empty", "The title after '## Trigger:' must not be empty")
        return value.strip()

    @field_validator("rollout")
    @classmethod
    def _rollout(cls, value: Rollout | None) -> Rollout | None:
        # An empty ### Rollout overrides nothing; keep one spelling for "no overrides".
        return value if value is not None and value.model_dump(exclude_none=True) else None

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: object) -> StrEnum:
        return _choice("environment.target", "Target", Environment, value)

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: object) -> StrEnum:
        return _choice("approval.status", "Status", ApprovalStatus, value)

    @field_validator("sha", mode="before")
    @classmethod
    def _sha(cls, value: object) -> str:
        text = str(value).strip().lower()
        if not is_commit_sha(text):
            raise RuleViolation(
                "deployment.sha", f'SHA must be 7 to 40 hexadecimal digits (got "{value}")'
            )
        return text

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, value: object) -> datetime:
        if isinstance(value, datetime):
            moment = value
        else:
            try:
                moment = datetime.fromisoformat(str(value).strip())
            except ValueError:
                raise RuleViolation(
                    "deployment.timestamp",
                    f'Timestamp must be ISO 8601, like 2026-01-18T12:00:00Z (got "{value}")',
                ) from None
        if moment.utcoffset() is None:
            raise RuleViolation(
                "deployment.timestamp",
                f'Timestamp must carry a zone, Z or an offset like +02:00 (got "{value}")',
            )
        return moment

    @model_validator(mode="after")
    def _approver_named(self) -> Trigger:
        if self.status is ApprovalStatus.APPROVED and not (self.approved_by or "").strip():
            raise RuleViolation(
                "approval.approved_by",
                "Status approved needs an Approved-by line naming who approved",
            )
        return self

    @property
    def is_rollback(self) -> bool:
        return self.action.type is ActionType.ROLLBACK

    def summary(self) -> str:
        """One line an operator reads: ``production, approved, sha abc123d``."""
        text = f"{self.target}, {self.status}, sha {self.sha[:7]}"
        return f"{text}, rollback" if self.is_rollback else text
