"""Reads trigger files: liberal where agents vary harmlessly, strict where a mistake matters.

The parser walks markdown-it block tokens, so headings, lists, emphasis and line breaks are
understood the way any markdown renderer understands them, and turns the known sections
into ``Key: value`` pairs that remember their line. Value rules live in
:mod:`triggers.model`; this module only knows the layout.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token
from pydantic import ValidationError

from triggers.model import ActionType, RuleViolation, Trigger

MAX_TRIGGER_BYTES = 64 * 1024

# One parser for the whole process: building a MarkdownIt compiles its rule chains. Only
# the rules that shape a trigger are on; links, images and entities only cost time (their
# text still comes through, as literal text). Inline parsing runs on demand, for the few
# lines that carry markup, rather than for every paragraph.
_BLOCK_RULES = ["heading", "lheading", "list", "hr", "fence", "html_block"]
_INLINE_RULES = ["newline", "escape", "backticks", "emphasis"]
_MARKDOWN = MarkdownIt("zero").enable([*_BLOCK_RULES, *_INLINE_RULES])
_MARKDOWN.disable("inline")
_INLINE_MARKUP = re.compile(r"[*_`\\]| {2}$", re.MULTILINE)

_TITLE_RE = re.compile(r"trigger\s*:(?P<title>.*)", re.IGNORECASE)
_KEY_LINE_RE = re.compile(r"(?P<key>[A-Za-z][A-Za-z0-9 _-]*?)\s*:(?P<value>.*)")


@dataclass(frozen=True)
class Key:
    """A ``Key: value`` a section accepts, and where its value goes in the model."""

    name: str
    loc: tuple[str, ...]
    required: bool = False


@dataclass(frozen=True)
class Section:
    heading: str
    keys: tuple[Key, ...] = ()
    required: bool = False

    def find(self, normalized: str) -> Key | None:
        return _key_index(self).get(normalized)


@functools.cache
def _key_index(section: Section) -> dict[str, Key]:
    return {_normalize(key.name): key for key in section.keys}


CHANGES = Section("Changes")
SECTIONS: tuple[Section, ...] = (
    CHANGES,
    Section("Environment", (Key("Target", ("target",), required=True),), required=True),
    Section(
        "Approval",
        (Key("Status", ("status",), required=True), Key("Approved-by", ("approved_by",))),
        required=True,
    ),
    Section(
        "Deployment ID",
        (Key("SHA", ("sha",), required=True), Key("Timestamp", ("timestamp",), required=True)),
        required=True,
    ),
    Section(
        "Rollout",
        (
            Key("Steps", ("rollout", "steps")),
            Key("Analysis-Interval", ("rollout", "analysis_interval")),
            Key("Max-Error-Rate", ("rollout", "max_error_rate")),
            Key("Max-P99-Latency", ("rollout", "max_p99_latency")),
            Key("Failure-Limit", ("rollout", "failure_limit")),
            Key("Min-Requests", ("rollout", "min_requests")),
        ),
    ),
    Section(
        "Action", (Key("Type", ("action", "type")), Key("To-Revision", ("action", "to_revision")))
    ),
)
# Stands for the content of an unknown heading: warned about once, at the heading.
_IGNORED = Section("(ignored)")
_SECTION_BY_NAME = {_name.heading.lower(): _name for _name in SECTIONS}

# Model-level rules span two keys; the error belongs on the line of this one.
_RULE_LOCATIONS = {
    "approval.approved_by": ("status",),
    "action.to_revision": ("action", "to_revision"),
}


@dataclass(frozen=True)
class Problem:
    """One error or warning, tied to a line of the file (1-based)."""

    line: int
    rule: str
    message: str

    def format(self, path: str) -> str:
        return f"{path}:{self.line}: {self.message} [{self.rule}]"

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "rule": self.rule, "message": self.message}


@dataclass(frozen=True)
class ParseResult:
    path: str
    trigger: Trigger | None
    errors: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()

    @property
    def valid(self) -> bool:
        return self.trigger is not None and not self.errors

    def error_lines(self) -> list[str]:
        return [problem.format(self.path) for problem in self.errors]


@dataclass
class _Reading:
    """What the token walk has gathered so far."""

    title: str | None = None
    title_line: int = 1
    changes: list[str] = field(default_factory=list)
    values: dict[tuple[str, ...], str] = field(default_factory=dict)
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)
    section_lines: dict[str, int] = field(default_factory=dict)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def error(self, line: int, rule: str, message: str) -> None:
        self.errors.append(Problem(line, rule, message))

    def warn(self, line: int, rule: str, message: str) -> None:
        self.warnings.append(Problem(line, rule, message))


def parse_trigger(data: bytes | str, path: str = "<trigger>") -> ParseResult:
    """Parse and validate one trigger file; never raises for bad input."""
    text, problem = _decode(data)
    if problem is not None:
        return ParseResult(path, None, (problem,))

    reading = _Reading()
    _walk(_MARKDOWN.parse(text), reading)
    _check_required(reading)
    trigger = _build(reading)

    errors = tuple(sorted(reading.errors, key=lambda p: p.line))
    return ParseResult(path, None if errors else trigger, errors, tuple(reading.warnings))


def _decode(data: bytes | str) -> tuple[str, Problem | None]:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > MAX_TRIGGER_BYTES:
        return "", Problem(
            1, "input.size", f"A trigger file may be at most 64 KiB (got {len(raw)} bytes)"
        )
    if b"\0" in raw:
        line = raw[: raw.index(b"\0")].count(b"\n") + 1
        return "", Problem(line, "input.nul", "A trigger file must not contain NUL bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return "", Problem(
            line, "input.encoding", f"A trigger file must be UTF-8 (bad byte at offset {exc.start})"
        )
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n"), None


def _walk(tokens: Sequence[Token], reading: _Reading) -> None:
    section: Section | None = None
    index = 0
    while index < len(tokens):
        token = tokens[index]
        line = token.map[0] + 1 if token.map else 1
        if token.type == "heading_open" and token.markup.startswith("#"):
            section = _heading(token, tokens[index + 1], line, section, reading)
        elif token.type in ("heading_open", "paragraph_open"):
            # A setext heading is a paragraph an agent underlined with --- or ===.
            for number, text in _inline_lines(tokens[index + 1], line):
                _content_line(section, number, text, reading)
        elif token.type in ("bullet_list_open", "ordered_list_open"):
            end = _closing(tokens, index)
            _list(section, tokens[index:end], reading)
            index = end
        elif token.type in ("fence", "html_block"):
            if section is not None and section is not _IGNORED:
                reading.warn(
                    line, "content.ignored", f"{token.type} in ### {section.heading} ignored"
                )
            if token.nesting == 1:
                index = _closing(tokens, index)
        index += 1


def _heading(
    token: Token, inline: Token, line: int, section: Section | None, reading: _Reading
) -> Section | None:
    text = _inline_text(inline)
    level = len(token.markup)
    title = _TITLE_RE.fullmatch(text)
    if level == 2 and title is not None:
        if reading.title is not None:
            reading.error(
                line,
                "title.duplicate",
                f"Only one '## Trigger:' heading per file (first on line {reading.title_line})",
            )
        else:
            reading.title, reading.title_line = title["title"].strip(), line
        return None
    if level == 3 and text.strip().lower() in _SECTION_BY_NAME:
        known = _SECTION_BY_NAME[text.strip().lower()]
        if known.heading in reading.section_lines:
            first = reading.section_lines[known.heading]
            reading.error(
                line,
                "section.duplicate",
                f"### {known.heading} appears twice (first on line {first})",
            )
        reading.section_lines.setdefault(known.heading, line)
        return known
    reading.warn(line, "section.unknown", f'Unknown heading "{text}" ignored, with its content')
    return _IGNORED


def _list(section: Section | None, tokens: Sequence[Token], reading: _Reading) -> None:
    for token in tokens:
        if token.type != "inline":
            continue
        line = token.map[0] + 1 if token.map else 1
        if section is CHANGES:
            reading.changes.append(" ".join(text for _, text in _inline_lines(token, line)))
        else:
            for number, text in _inline_lines(token, line):
                _content_line(section, number, text, reading)


def _content_line(section: Section | None, line: int, text: str, reading: _Reading) -> None:
    if not text.strip() or section is _IGNORED:
        return
    if section is None:
        reading.warn(line, "content.ignored", f'Text outside a known section ignored: "{text}"')
    elif section is CHANGES:
        reading.changes.append(text.strip())
    else:
        _key_value(section, line, text, reading)


def _key_value(section: Section, line: int, text: str, reading: _Reading) -> None:
    match = _KEY_LINE_RE.fullmatch(text.strip())
    if match is None:
        reading.error(
            line,
            "line.syntax",
            f'Expected "Key: value" in ### {section.heading} (got "{text.strip()}")',
        )
        return
    name, value = match["key"], match["value"].strip()
    key = section.find(_normalize(name))
    if key is None:
        reading.error(line, "key.unknown", _unknown_key_message(section, name))
    elif key.loc in reading.values:
        first = reading.lines[key.loc]
        reading.error(line, "key.duplicate", f"{key.name} is given twice (first on line {first})")
    elif not value:
        reading.lines[key.loc] = line
        reading.values[key.loc] = ""
        reading.error(line, "key.empty", f"{key.name} must not be empty")
    else:
        reading.lines[key.loc] = line
        reading.values[key.loc] = value


def _unknown_key_message(section: Section, name: str) -> str:
    allowed = [key.name for key in section.keys]
    message = f'Unknown key "{name}" in ### {section.heading}; allowed: {", ".join(allowed)}'
    homes = {_normalize(k.name): (k.name, s) for s in SECTIONS for k in s.keys}
    guess = difflib.get_close_matches(_normalize(name), list(homes), n=1, cutoff=0.7)
    if guess:
        proper, home = homes[guess[0]]
        where = "" if home is section else f" in ### {home.heading}"
        message += f' (did you mean "{proper}"{where}?)'
    return message


def _check_required(reading: _Reading) -> None:
    if reading.title is None:
        reading.error(1, "title.missing", "A trigger starts with a '## Trigger: <title>' heading")
    for section in SECTIONS:
        heading_line = reading.section_lines.get(section.heading)
        if section.required and heading_line is None:
            reading.error(
                reading.title_line,
                "section.missing",
                f"The ### {section.heading} section is missing",
            )
            continue
        for key in section.keys:
            if key.required and heading_line is not None and key.loc not in reading.values:
                reading.error(
                    heading_line,
                    "key.missing",
                    f"### {section.heading} needs a {key.name}: line",
                )
    status = reading.values.get(("status",), "").strip().lower()
    if status == "approved" and not reading.values.get(("approved_by",)):
        reading.error(
            reading.lines[("status",)],
            "approval.approved_by",
            "Status approved needs an Approved-by line naming who approved",
        )


def _build(reading: _Reading) -> Trigger | None:
    if reading.errors:
        # Still validate what was given, so one pass reports every bad value.
        _validate(reading, partial=True)
        return None
    return _validate(reading, partial=False)


def _validate(reading: _Reading, *, partial: bool) -> Trigger | None:
    raw: dict[str, Any] = {"title": reading.title or "", "changes": tuple(reading.changes)}
    for loc, value in reading.values.items():
        if value:
            target = raw
            for part in loc[:-1]:
                target = target.setdefault(part, {})
            target[loc[-1]] = value
    try:
        return Trigger.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            _report(error, reading, partial=partial)
        return None


def _report(error: Any, reading: _Reading, *, partial: bool) -> None:
    violation = (error.get("ctx") or {}).get("error")
    loc = tuple(str(part) for part in error["loc"])
    if isinstance(violation, RuleViolation):
        rule, message = violation.rule, str(violation)
        loc = _RULE_LOCATIONS.get(rule, loc)
    elif error["type"] == "missing" and partial:
        return  # already reported as a missing key or section
    else:
        rule, message = "value.invalid", f"{'.'.join(loc)}: {error['msg']}"
    if partial and not isinstance(violation, RuleViolation):
        return
    problem = Problem(reading.lines.get(loc, reading.title_line), rule, message)
    if problem not in reading.errors:
        reading.errors.append(problem)


def _closing(tokens: Sequence[Token], index: int) -> int:
    depth = 0
    for position in range(index, len(tokens)):
        depth += tokens[position].nesting
        if depth == 0:
            return position
    return len(tokens) - 1


def _inline_lines(inline: Token, first_line: int) -> Iterator[tuple[int, str]]:
    """The source lines of an inline token, with markup such as ``**`` dropped."""
    if _INLINE_MARKUP.search(inline.content) is None:
        for offset, text in enumerate(inline.content.split("\n")):
            yield first_line + offset, text
        return
    children: list[Token] = []
    _MARKDOWN.inline.parse(inline.content, _MARKDOWN, {}, children)
    parts: list[str] = []
    line = first_line
    for child in children:
        if child.type in ("softbreak", "hardbreak"):
            yield line, "".join(parts)
            parts, line = [], line + 1
        elif child.type in ("text", "code_inline"):
            parts.append(child.content)
    yield line, "".join(parts)


def _inline_text(inline: Token) -> str:
    return " ".join(text for _, text in _inline_lines(inline, 1)).strip()


_SEPARATORS = re.compile(r"[\s_-]+")


@functools.lru_cache(maxsize=1024)
def _normalize(name: str) -> str:
    return _SEPARATORS.sub("-", name.strip().lower())


def render_trigger(trigger: Trigger) -> str:
    """The canonical markdown for *trigger*; parsing it gives the same trigger back."""
    out = [f"## Trigger: {trigger.title}", ""]
    if trigger.changes:
        out += ["### Changes", *(f"- {change}" for change in trigger.changes), ""]
    out += ["### Environment", f"Target: {trigger.target}", ""]
    out += ["### Approval", f"Status: {trigger.status}"]
    if trigger.approved_by:
        out.append(f"Approved-by: {trigger.approved_by}")
    out += ["", "### Deployment ID", f"SHA: {trigger.sha}"]
    out += [f"Timestamp: {trigger.timestamp.isoformat()}", ""]
    if trigger.rollout is not None:
        out += ["### Rollout", *_rollout_lines(trigger), ""]
    if trigger.action.type is not ActionType.DEPLOY or trigger.action.to_revision:
        out += ["### Action", f"Type: {trigger.action.type}"]
        if trigger.action.to_revision is not None:
            out.append(f"To-Revision: {trigger.action.to_revision}")
        out.append("")
    return "\n".join(out)


def _rollout_lines(trigger: Trigger) -> list[str]:
    rollout = trigger.rollout
    assert rollout is not None
    fields: list[tuple[str, object]] = [
        ("Steps", ", ".join(map(str, rollout.steps)) if rollout.steps else None),
        (
            "Analysis-Interval",
            f"{rollout.analysis_interval!r}s" if rollout.analysis_interval else None,
        ),
        ("Max-Error-Rate", rollout.max_error_rate),
        ("Max-P99-Latency", f"{rollout.max_p99_latency!r}s" if rollout.max_p99_latency else None),
        ("Failure-Limit", rollout.failure_limit),
        ("Min-Requests", rollout.min_requests),
    ]
    return [f"{name}: {value}" for name, value in fields if value is not None]
