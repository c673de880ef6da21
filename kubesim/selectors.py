"""Label and field selectors, parsed from the query string the way the API server reads them.

Label selector grammar: comma-separated requirements, each one of `key=value`,
`key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key` (exists) or
`!key` (does not exist). Field selectors support `metadata.name` and
`metadata.namespace` with `=`, `==` and `!=`, which is what the workers use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class SelectorError(ValueError):
    """A selector in the query string could not be parsed; the API answers 400 BadRequest."""


@dataclass(frozen=True)
class Requirement:
    """One comma-separated clause of a label selector."""

    key: str
    operator: str  # one of "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        checks: dict[str, Callable[[], bool]] = {
            "=": lambda: value in self.values,
            "in": lambda: value in self.values,
            "!=": lambda: value not in self.values,
            "notin": lambda: value not in self.values,
            "exists": lambda: present,
            "!exists": lambda: not present,
        }
        return checks[self.operator]()


_SET_CLAUSE = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQUALITY_CLAUSE = re.compile(r"^\s*([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)\s*$")
_EXISTS_CLAUSE = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*$")


def _split_clauses(selector: str) -> list[str]:
    """Split on the commas that separate clauses, not those inside `in (a,b)` sets."""
    clauses, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            clauses.append(current)
            current = ""
        else:
            current += char
    clauses.append(current)
    return [clause for clause in clauses if clause.strip()]


def _parse_clause(clause: str) -> Requirement:
    if match := _SET_CLAUSE.match(clause):
        key, operator, values = match.groups()
        return Requirement(key, operator, frozenset(v.strip() for v in values.split(",")))
    if match := _EQUALITY_CLAUSE.match(clause):
        key, operator, value = match.groups()
        return Requirement(key, "!=" if operator == "!=" else "=", frozenset([value]))
    if match := _EXISTS_CLAUSE.match(clause):
        negated, key = match.groups()
        return Requirement(key, "!exists" if negated else "exists")
    raise SelectorError(f"unable to parse requirement {clause.strip()!r} in label selector")


def parse_label_selector(selector: str) -> list[Requirement]:
    """Parse a labelSelector query value; an empty selector matches everything."""
    return [_parse_clause(clause) for clause in _split_clauses(selector)]


def label_selector_from_match(selector: Mapping[str, Any]) -> list[Requirement]:
    """Turn a LabelSelector object (matchLabels, matchExpressions) into requirements."""
    requirements = [
        Requirement(key, "=", frozenset([value]))
        for key, value in (selector.get("matchLabels") or {}).items()
    ]
    operators = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expression in selector.get("matchExpressions") or []:
        operator = operators[expression["operator"]]
        values = frozenset(expression.get("values") or [])
        requirements.append(Requirement(expression["key"], operator, values))
    return requirements


def labels_match(requirements: list[Requirement], labels: Mapping[str, str] | None) -> bool:
    return all(requirement.matches(labels or {}) for requirement in requirements)


_FIELDS: dict[str, Callable[[dict[str, Any]], str]] = {
    "metadata.name": lambda obj: obj["metadata"].get("name", ""),
    "metadata.namespace": lambda obj: obj["metadata"].get("namespace", ""),
}


def parse_field_selector(selector: str) -> Callable[[dict[str, Any]], bool]:
    """Parse a fieldSelector query value into a predicate over stored objects."""
    predicates = []
    for clause in _split_clauses(selector):
        match = _EQUALITY_CLAUSE.match(clause)
        if not match or match.group(1) not in _FIELDS:
            supported = ", ".join(sorted(_FIELDS))
            raise SelectorError(
                f"field selector {clause.strip()!r} is not supported; use {supported}"
            )
        field, operator, value = match.groups()
        predicates.append((_FIELDS[field], operator == "!=", value))
    return lambda obj: all((read(obj) == value) != negate for read, negate, value in predicates)
