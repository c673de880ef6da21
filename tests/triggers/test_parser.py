"""The trigger parser: every liberal and every strict rule, with the line it reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from triggers import ApprovalStatus, Environment, parse_trigger

VALID = """\
## Trigger: ChaosArchitect Architecture Update

### Changes
- New monitoring configuration
- Updated resource limits

### Environment
Target: production

### Approval
Status: approved
Approved-by: human-merge

### Deployment ID
SHA: abc123def4567890abc123def4567890abc12345
Timestamp: 2026-01-18T12:00:00Z
"""


def test_the_documented_example_parses_into_the_model() -> None:
    """The example from the architecture document yields every field of the model."""
    result = parse_trigger(VALID, "deploy.md")

    assert result.valid, result.error_lines()
    trigger = result.trigger
    assert trigger is not None
    assert trigger.title == "ChaosArchitect Architecture Update"
    assert trigger.changes == ("New monitoring configuration", "Updated resource limits")
    assert trigger.target is Environment.PRODUCTION
    assert trigger.status is ApprovalStatus.APPROVED
    assert trigger.approved_by == "human-merge"
    assert trigger.sha == "abc123def4567890abc123def4567890abc12345"
    assert trigger.timestamp == datetime(2026, 1, 18, 12, tzinfo=UTC)
    assert result.warnings == ()


# Liberal: each variant must parse to the same trigger as VALID, with no errors.
LIBERAL = {
    "lower-case keys": VALID.replace("Target:", "target:").replace("Status:", "status:"),
    "upper-case value": VALID.replace("Target: production", "Target: PRODUCTION"),
    "surrounding blanks": VALID.replace("Target: production", "   Target:    production   "),
    "CRLF line ends": VALID.replace("\n", "\r\n"),
    "bold keys": VALID.replace("Status: approved", "**Status:** approved"),
    "bold key, colon outside": VALID.replace("Status: approved", "**Status**: approved"),
    "blank lines between keys": VALID.replace("Status: approved\n", "Status: approved\n\n"),
    "trailing-space hard breaks": VALID.replace("Status: approved\n", "Status: approved  \n"),
    "backslash hard breaks": VALID.replace("Status: approved\n", "Status: approved\\\n"),
    "star bullets": VALID.replace("- New", "* New").replace("- Updated", "* Updated"),
    "keys as bullets": VALID.replace("Target: production", "- Target: production"),
    "upper-case SHA": VALID.replace("abc123def4567890abc123def4567890abc12345", "ABC123DEF4567890ABC123DEF4567890ABC12345"),
    "inline code SHA": VALID.replace("SHA: abc123def4567890abc123def4567890abc12345", "SHA: `abc123def4567890abc123def4567890abc12345`"),
    "setext underline under a key": VALID.replace("Timestamp: 2026-01-18T12:00:00Z\n", "Timestamp: 2026-01-18T12:00:00Z\n---\n"),
    "byte order mark": "\ufeff" + VALID,
    "key with space for hyphen": VALID.replace("Approved-by:", "Approved by:"),
    "lower-case section headings": VALID.replace("### Environment", "### environment"),
}  # fmt: skip


@pytest.mark.parametrize("variant", LIBERAL, ids=list(LIBERAL))
def test_harmless_variations_parse_like_the_canonical_form(variant: str) -> None:
    """Variations agents make harmlessly give the same trigger as the canonical file."""
    expected = parse_trigger(VALID).trigger
    result = parse_trigger(LIBERAL[variant], "deploy.md")

    assert result.errors == (), result.error_lines()
    assert result.trigger == expected


def test_unknown_sections_are_ignored_with_a_warning_naming_the_line() -> None:
    """An extra section is a warning, not an error, and its keys are not read."""
    text = VALID + "\n### Notes\nTarget: staging\n"
    result = parse_trigger(text, "deploy.md")

    assert result.valid
    assert result.trigger is not None and result.trigger.target is Environment.PRODUCTION
    assert [(w.line, w.rule) for w in result.warnings] == [(18, "section.unknown")]


def _replace(old: str, new: str) -> str:
    assert old in VALID
    return VALID.replace(old, new)


# Strict: (case, text, line, rule, words the message must contain)
STRICT = [
    ("unknown target", _replace("Target: production", "Target: prod"), 8, "environment.target", 'got "prod"'),
    ("typo in a key", _replace("Target: production", "Taget: production"), 8, "key.unknown", '"Target"'),
    ("key in the wrong section", _replace("Approved-by: human-merge", "Approved-by: human-merge\nTarget: staging"), 13, "key.unknown", "Environment"),
    ("duplicate key", _replace("Target: production", "Target: production\nTarget: staging"), 9, "key.duplicate", "line 8"),
    ("missing key", _replace("SHA: abc123def4567890abc123def4567890abc12345\n", ""), 14, "key.missing", "SHA"),
    ("empty key", _replace("Target: production", "Target:"), 8, "key.empty", "Target"),
    ("missing section", _replace("### Environment\nTarget: production\n", ""), 1, "section.missing", "Environment"),
    ("duplicate section", VALID + "\n### Environment\nTarget: staging\n", 18, "section.duplicate", "line 7"),
    ("approved without approver", _replace("Approved-by: human-merge\n", ""), 11, "approval.approved_by", "Approved-by"),
    ("unknown status", _replace("Status: approved", "Status: yes"), 11, "approval.status", 'got "yes"'),
    ("two titles", VALID + "\n## Trigger: Another\n", 18, "title.duplicate", "line 1"),
    ("no title", _replace("## Trigger: ChaosArchitect Architecture Update", "## Something"), 1, "title.missing", "## Trigger:"),
    ("empty title", _replace("## Trigger: ChaosArchitect Architecture Update", "## Trigger:"), 1, "title.empty", "title"),
    ("short SHA", _replace("SHA: abc123def4567890abc123def4567890abc12345", "SHA: abc12"), 15, "deployment.sha", 'got "abc12"'),
    ("non-hex SHA", _replace("SHA: abc123def4567890abc123def4567890abc12345", "SHA: xyz1234"), 15, "deployment.sha", "hexadecimal"),
    ("naive timestamp", _replace("2026-01-18T12:00:00Z", "2026-01-18T12:00:00"), 16, "deployment.timestamp", "zone"),
    ("garbled timestamp", _replace("2026-01-18T12:00:00Z", "yesterday"), 16, "deployment.timestamp", "ISO 8601"),
    ("line without a colon", _replace("Target: production", "Target production"), 8, "line.syntax", "Key: value"),
    ("bad rollout steps", VALID + "\n### Rollout\nSteps: 50, 25\n", 19, "rollout.steps", "increasing"),
    ("bad analysis interval", VALID + "\n### Rollout\nAnalysis-Interval: soon\n", 19, "rollout.analysis_interval", "duration"),
    ("bad error rate", VALID + "\n### Rollout\nMax-Error-Rate: 2\n", 19, "rollout.max_error_rate", "between 0 and 1"),
    ("bad action type", VALID + "\n### Action\nType: redeploy\n", 19, "action.type", 'got "redeploy"'),
    ("revision without rollback", VALID + "\n### Action\nTo-Revision: 3\n", 19, "action.to_revision", "rollback"),
    ("bad revision", VALID + "\n### Action\nType: rollback\nTo-Revision: -1\n", 20, "action.to_revision", "whole number"),
    ("NUL byte", VALID.replace("Target", "Tar\0get"), 8, "input.nul", "NUL"),
    ("too large", VALID + "x" * 70_000, 1, "input.size", "64 KiB"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "text", "line", "rule", "words"), STRICT, ids=[c[0] for c in STRICT]
)
def test_mistakes_that_matter_are_errors_naming_line_and_rule(
    case: str, text: str, line: int, rule: str, words: str
) -> None:
    """Each strict rule is reported with its rule id, the right line and a helpful message."""
    result = parse_trigger(text, "deploy-x.md")

    assert not result.valid
    assert result.trigger is None
    found = {(p.line, p.rule) for p in result.errors}
    assert (line, rule) in found, result.error_lines()
    problem = next(p for p in result.errors if p.rule == rule)
    assert words in problem.message
    assert problem.format("deploy-x.md").startswith(f"deploy-x.md:{line}: ")


def test_invalid_utf8_is_an_error_with_its_line() -> None:
    """Bytes that are not UTF-8 are rejected, naming the line of the first bad byte."""
    data = VALID.encode().replace(b"Target: production", b"Target: \xff\xfe")
    result = parse_trigger(data, "deploy.md")

    assert [(p.line, p.rule) for p in result.errors] == [(8, "input.encoding")]


def test_every_error_of_a_file_is_reported_not_only_the_first() -> None:
    """Three independent mistakes give three errors, in line order."""
    text = (
        _replace("Target: production", "Target: prod")
        .replace("Status: approved", "Status: maybe")
        .replace("2026-01-18T12:00:00Z", "2026-01-18T12:00:00")
    )
    result = parse_trigger(text, "deploy.md")

    assert [p.rule for p in result.errors] == [
        "environment.target",
        "approval.status",
        "deployment.timestamp",
    ]


def test_the_documented_error_format() -> None:
    """A bad target reads exactly as the documentation promises."""
    result = parse_trigger(_replace("Target: production", "Target: prod"), "deploy-x.md")

    assert result.error_lines() == [
        'deploy-x.md:8: Target must be one of development, staging, production (got "prod") '
        "[environment.target]"
    ]


def test_rollout_and_action_sections_are_read() -> None:
    """The optional sections fill the rollout overrides and the rollback action."""
    text = VALID + (
        "\n### Rollout\nSteps: 5, 10%, 20\nAnalysis-Interval: 2m\nMax-Error-Rate: 0.5%\n"
        "Max-P99-Latency: 800ms\nFailure-Limit: 2\nMin-Requests: 100\n"
        "\n### Action\nType: rollback\nTo-Revision: 3\n"
    )
    result = parse_trigger(text)

    assert result.valid, result.error_lines()
    trigger = result.trigger
    assert trigger is not None and trigger.rollout is not None
    assert trigger.rollout.steps == (5, 10, 20)
    assert trigger.rollout.analysis_interval == 120
    assert trigger.rollout.max_error_rate == pytest.approx(0.005)
    assert trigger.rollout.max_p99_latency == pytest.approx(0.8)
    assert (trigger.rollout.failure_limit, trigger.rollout.min_requests) == (2, 100)
    assert trigger.is_rollback and trigger.action.to_revision == 3


def test_offsets_are_kept_and_pending_needs_no_approver() -> None:
    """A timestamp offset survives, and a pending trigger without Approved-by is valid."""
    text = _replace("Status: approved\nApproved-by: human-merge", "Status: pending").replace(
        "2026-01-18T12:00:00Z", "2026-01-18T14:00:00+02:00"
    )
    trigger = parse_trigger(text).trigger

    assert trigger is not None
    assert trigger.status is ApprovalStatus.PENDING
    assert trigger.timestamp.utcoffset() == timedelta(hours=2)
    assert trigger.timestamp == datetime(2026, 1, 18, 12, tzinfo=timezone.utc)  # noqa: UP017
