"""Generated inputs: the parser never raises, and valid triggers round-trip unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.triggers.test_parser import VALID
from triggers import (
    Action,
    ActionType,
    ApprovalStatus,
    Environment,
    ParseResult,
    Rollout,
    Trigger,
    parse_trigger,
    render_trigger,
)

# 2,500 + 2,500 + 1,000 examples: over 5,000 generated inputs on every run.
FUZZ = settings(max_examples=2_500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _is_a_clean_outcome(result: ParseResult) -> bool:
    if result.trigger is not None:
        return result.errors == ()
    return bool(result.errors) and all(p.line >= 1 and p.rule and p.message for p in result.errors)


@FUZZ
@given(st.binary(max_size=2_000))
def test_random_bytes_give_a_trigger_or_errors_never_an_exception(data: bytes) -> None:
    """Arbitrary bytes end as a valid trigger or as well-formed errors."""
    assert _is_a_clean_outcome(parse_trigger(data, "fuzz.md"))


_MUTATIONS = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, len(VALID)), st.text(max_size=20)),
    st.tuples(st.just("delete"), st.integers(0, len(VALID)), st.integers(1, 40)),
    st.tuples(st.just("swap-lines"), st.integers(0, 30), st.integers(0, 30)),
    st.tuples(st.just("markup"), st.integers(0, len(VALID)), st.sampled_from(["**", "#", "- ", "---\n", "`", "\n", "\r\n", ":", "  \n"])),
)  # fmt: skip


def _mutate(text: str, mutations: list[tuple[str, int, object]]) -> str:
    for kind, position, extra in mutations:
        if kind in {"insert", "markup"}:
            text = text[:position] + str(extra) + text[position:]
        elif kind == "delete":
            assert isinstance(extra, int)
            text = text[:position] + text[position + extra :]
        else:
            lines = text.split("\n")
            if position < len(lines) and isinstance(extra, int) and extra < len(lines):
                lines[position], lines[extra] = lines[extra], lines[position]
            text = "\n".join(lines)
    return text


@FUZZ
@given(st.lists(_MUTATIONS, min_size=1, max_size=6))
def test_mutated_triggers_give_a_trigger_or_errors_never_an_exception(
    mutations: list[tuple[str, int, object]],
) -> None:
    """A valid trigger with random edits still ends as a trigger or as clean errors."""
    assert _is_a_clean_outcome(parse_trigger(_mutate(VALID, mutations), "mutated.md"))


_WORDS = st.text(
    alphabet=st.characters(categories=["L", "N"], include_characters=" .,()'/+", max_codepoint=0x2FF),
    min_size=1,
    max_size=40,
).map(str.strip).filter(lambda s: s and s[0].isalnum() and s[-1].isalnum())  # fmt: skip

_ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
)
_MOMENTS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=_ZONES
)  # fmt: skip
_STEPS = st.lists(st.integers(1, 100), min_size=1, max_size=5, unique=True).map(sorted).map(tuple)
_ROLLOUTS = st.builds(
    Rollout,
    steps=st.none() | _STEPS,
    analysis_interval=st.none() | st.integers(1, 3_600).map(float),
    max_error_rate=st.none() | st.integers(0, 1_000).map(lambda n: n / 1_000),
    max_p99_latency=st.none() | st.integers(1, 10_000).map(lambda n: n / 1_000),
    failure_limit=st.none() | st.integers(1, 10),
    min_requests=st.none() | st.integers(1, 100_000),
)
_ACTIONS = st.one_of(
    st.just(Action()),
    st.builds(Action, type=st.just(ActionType.ROLLBACK), to_revision=st.none() | st.integers(1, 500)),
)  # fmt: skip


@st.composite
def triggers(draw: st.DrawFn) -> Trigger:
    status = draw(st.sampled_from(ApprovalStatus))
    approver = draw(_WORDS) if status is ApprovalStatus.APPROVED else draw(st.none() | _WORDS)
    return Trigger(
        title=draw(_WORDS),
        changes=tuple(draw(st.lists(_WORDS, max_size=4))),
        target=draw(st.sampled_from(Environment)),
        status=status,
        approved_by=approver,
        sha=draw(st.text(alphabet="0123456789abcdef", min_size=7, max_size=40)),
        timestamp=draw(_MOMENTS),
        rollout=draw(st.none() | _ROLLOUTS),
        action=draw(_ACTIONS),
    )


@settings(max_examples=1_000, deadline=None)
@given(triggers())
def test_valid_triggers_survive_render_parse_render_unchanged(trigger: Trigger) -> None:
    """Model -> markdown -> model gives the same trigger, and renders the same text again."""
    text = render_trigger(trigger)
    result = parse_trigger(text, "roundtrip.md")

    assert result.errors == (), result.error_lines()
    assert result.trigger == trigger
    assert render_trigger(result.trigger) == text
