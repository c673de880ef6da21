"""Canary analysis: read the metrics, judge each sample, decide a step.

Two providers read the same three numbers (error rate, p99 latency in seconds, request
count over the window): the application's JSON endpoint ``/api/metrics`` and, when
configured, Prometheus over its HTTP API. A sample is the worst verdict of the providers:

- ``fail``: error rate above the limit or p99 above the limit;
- ``no_data``: fewer requests than ``min_requests``, a missing number, or a provider that
  did not answer; in production this fails closed (it counts as a failed sample), so
  silence is never taken for health;
- ``pass``: everything present and within the limits.

A step fails as soon as its failed samples exceed ``failure_limit``, without waiting for
the rest of its window: a breach is acted on at the first sample that sees it.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from monkeytown_deploy.config import Canary, Metrics
from workers.errors import TemporaryError
from workers.http import get_json


class Verdict(StrEnum):
    PASS = "pass"  # noqa: S105 -- a verdict, not a password
    FAIL = "fail"
    NO_DATA = "no_data"

    @property
    def severity(self) -> int:
        return {Verdict.PASS: 0, Verdict.NO_DATA: 1, Verdict.FAIL: 2}[self]


@dataclass(frozen=True)
class Reading:
    """What one provider saw; None where it had no number."""

    provider: str
    error_rate: float | None = None
    p99_latency: float | None = None
    requests: float | None = None
    problem: str | None = None  # why the provider gave no reading


@dataclass(frozen=True)
class Sample:
    """One judged sample: every provider's reading and the verdict with its reasons."""

    verdict: Verdict
    readings: tuple[Reading, ...]
    reasons: tuple[str, ...] = ()

    def fields(self) -> dict[str, Any]:
        """The sample as audit fields."""
        return {
            "verdict": self.verdict.value,
            "reasons": list(self.reasons),
            "readings": [reading.__dict__ for reading in self.readings],
        }


class Provider(Protocol):
    name: str

    def read(self) -> Reading: ...


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass
class JsonMetrics:
    """The application's ``/api/metrics``: ``error_rate``, ``p99_latency``, ``requests``."""

    url: str
    name: str = "api-metrics"

    def read(self) -> Reading:
        try:
            status, body = get_json(self.url)
        except TemporaryError as error:
            return Reading(self.name, problem=str(error))
        if status != 200 or not isinstance(body, dict):
            return Reading(self.name, problem=f"GET {self.url} answered {status}")
        count = next(
            (body[k] for k in ("requests", "request_count", "requests_total") if k in body), None
        )
        return Reading(
            self.name, _number(body.get("error_rate")), _number(body.get("p99_latency")),
            _number(count),
        )  # fmt: skip


@dataclass
class PrometheusMetrics:
    """Instant queries against Prometheus's ``/api/v1/query``."""

    url: str
    metrics: Metrics
    name: str = "prometheus"

    def read(self) -> Reading:
        values: dict[str, float | None] = {}
        queries = {
            "error_rate": self.metrics.error_rate_query,
            "p99_latency": self.metrics.p99_latency_query,
            "requests": self.metrics.requests_query,
        }
        for metric, query in queries.items():
            try:
                values[metric] = self._query(query)
            except TemporaryError as error:
                return Reading(self.name, problem=str(error))
        return Reading(self.name, values["error_rate"], values["p99_latency"], values["requests"])

    def _query(self, query: str) -> float | None:
        url = f"{self.url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        status, body = get_json(url)
        if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
            raise TemporaryError(f"Prometheus query {query!r} answered {status}")
        result = body.get("data", {}).get("result") or []
        if not result:
            return None  # an empty vector: no series, no data
        return _number(result[0].get("value", [None, None])[1])


def providers_for(metrics: Metrics, base_url: str | None) -> list[Provider]:
    """The configured providers: the JSON endpoint (explicit or under base_url), Prometheus."""
    found: list[Provider] = []
    json_url = metrics.url or (f"{base_url.rstrip('/')}/api/metrics" if base_url else None)
    if json_url:
        found.append(JsonMetrics(json_url))
    if metrics.prometheus_url:
        found.append(PrometheusMetrics(metrics.prometheus_url, metrics))
    return found


@dataclass
class Judge:
    """The thresholds of one canary, applied to readings."""

    canary: Canary
    fail_closed: bool = True

    def judge(self, readings: list[Reading]) -> Sample:
        if not readings:
            return Sample(Verdict.NO_DATA, (), ("no metrics provider configured",))
        verdicts: list[tuple[Verdict, str | None]] = [self._one(r) for r in readings]
        worst = max((verdict for verdict, _ in verdicts), key=lambda v: v.severity)
        reasons = tuple(reason for _, reason in verdicts if reason)
        return Sample(worst, tuple(readings), reasons)

    def _one(self, reading: Reading) -> tuple[Verdict, str | None]:
        who = reading.provider
        if reading.problem:
            return Verdict.NO_DATA, f"{who}: {reading.problem}"
        if reading.requests is None or reading.requests < self.canary.min_requests:
            return Verdict.NO_DATA, (
                f"{who}: {reading.requests} requests in the window, "
                f"fewer than min_requests {self.canary.min_requests}"
            )
        if reading.error_rate is None or reading.p99_latency is None:
            return Verdict.NO_DATA, f"{who}: error_rate or p99_latency missing"
        if reading.error_rate > self.canary.max_error_rate:
            return Verdict.FAIL, (
                f"{who}: error rate {reading.error_rate:.4f} above {self.canary.max_error_rate}"
            )
        if reading.p99_latency > self.canary.max_p99_latency:
            return Verdict.FAIL, (
                f"{who}: p99 latency {reading.p99_latency:.3f}s above "
                f"{self.canary.max_p99_latency}s"
            )
        return Verdict.PASS, None

    def counts_as_failure(self, sample: Sample) -> bool:
        if sample.verdict is Verdict.NO_DATA:
            return self.fail_closed
        return sample.verdict is Verdict.FAIL


@dataclass
class StepResult:
    """How one canary step's window ended."""

    passed: bool
    samples: list[Sample] = field(default_factory=list)
    reason: str = ""
