"""Canary analysis: the two metric providers over HTTP, and how samples are judged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kubesim import SimApp
from monkeytown_deploy.config import Canary, Metrics
from workers.analysis import JsonMetrics, Judge, PrometheusMetrics, Reading, Verdict, providers_for

CANARY = Canary(min_requests=50)


@pytest.fixture
def app() -> Iterator[SimApp]:
    with SimApp(name="metrics") as sim_app:
        yield sim_app


def test_json_provider_reads_the_metrics_endpoint(app: SimApp) -> None:
    """/api/metrics gives error rate, p99 latency and the request count."""
    app.set_metrics(error_rate=0.02, p99_latency=0.3, requests=120)

    reading = JsonMetrics(f"{app.url}/api/metrics").read()

    assert (reading.error_rate, reading.p99_latency, reading.requests) == (0.02, 0.3, 120)


def test_prometheus_provider_runs_the_three_queries(app: SimApp) -> None:
    """The Prometheus provider reads each number with an instant query over the HTTP API."""
    app.set_metrics(error_rate=0.001, p99_latency=1.5, requests=80)

    reading = PrometheusMetrics(app.url, Metrics()).read()

    assert (reading.error_rate, reading.p99_latency, reading.requests) == (0.001, 1.5, 80)
    assert Judge(CANARY).judge([reading]).verdict is Verdict.FAIL


def test_prometheus_empty_vector_is_no_data(app: SimApp) -> None:
    """A query that matches no series gives no number, which is no data, not a pass."""
    metrics = Metrics(requests_query="sum(increase(unknown_series[1m]))")

    reading = PrometheusMetrics(app.url, metrics).read()

    assert reading.requests is None
    assert Judge(CANARY).judge([reading]).verdict is Verdict.NO_DATA


def test_unreachable_provider_is_no_data(app: SimApp) -> None:
    """A metrics endpoint that answers 503 yields no data rather than an exception."""
    app.set_metrics_down("503")

    sample = Judge(CANARY).judge([JsonMetrics(f"{app.url}/api/metrics").read()])

    assert sample.verdict is Verdict.NO_DATA
    assert "503" in sample.reasons[0]


@pytest.mark.parametrize(
    ("reading", "verdict"),
    [
        (Reading("p", 0.0, 0.2, 100), Verdict.PASS),
        (Reading("p", 0.01, 1.0, 100), Verdict.PASS),  # the limits themselves pass
        (Reading("p", 0.0101, 0.2, 100), Verdict.FAIL),
        (Reading("p", 0.0, 1.01, 100), Verdict.FAIL),
        (Reading("p", 0.5, 5.0, 49), Verdict.NO_DATA),  # too little traffic to judge
        (Reading("p", None, 0.2, 100), Verdict.NO_DATA),
    ],
)
def test_thresholds(reading: Reading, verdict: Verdict) -> None:
    """Error rate above 0.01 or p99 above 1 s fails; under min_requests is no data."""
    assert Judge(CANARY).judge([reading]).verdict is verdict


def test_worst_provider_decides_and_no_data_fails_closed() -> None:
    """Any failing provider fails the sample; no data counts as a failure when closed."""
    judge = Judge(CANARY, fail_closed=True)
    mixed = judge.judge([Reading("a", 0.0, 0.1, 100), Reading("b", 0.2, 0.1, 100)])
    silent = judge.judge([Reading("a", 0.0, 0.1, 100), Reading("b", problem="refused")])

    assert mixed.verdict is Verdict.FAIL
    assert silent.verdict is Verdict.NO_DATA
    assert judge.counts_as_failure(silent)
    assert not Judge(CANARY, fail_closed=False).counts_as_failure(silent)


def test_providers_follow_the_configuration() -> None:
    """The JSON provider defaults to <base_url>/api/metrics; Prometheus only when set."""
    found = providers_for(Metrics(prometheus_url="http://prom:9090"), "http://app")

    assert [p.name for p in found] == ["api-metrics", "prometheus"]
    assert isinstance(found[0], JsonMetrics) and found[0].url == "http://app/api/metrics"
