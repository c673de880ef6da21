"""A simulated monkeytown application: health, readiness, status, metrics and a Prometheus.

Endpoints:

    GET /health        {"status": "healthy"}   (settable, with any HTTP code)
    GET /ready         200 or 503
    GET /api/status    {"agents": [...]}
    GET /api/metrics   {"error_rate": 0.0, "p99_latency": 0.1, "requests": 1000, ...}
    GET /api/v1/query?query=...   a Prometheus instant-vector answer (POST form too)

A Prometheus query is answered with the metric whose name the first matching rule maps it
to: a test's own substring rules first (set_queries), then defaults ("error" and "5.."
mean error_rate; "latency", "duration" and "quantile" mean p99_latency; "request" means
requests). A query nothing maps, or a metric without a value, gives an empty vector, as
Prometheus does for a series with no data.

Metrics can follow the live canary: link() the app to an API server's Ingress and add
rules such as `add_rule("error_rate", 0.05, min_weight=25)`; while the Ingress is a canary
(`nginx.ingress.kubernetes.io/canary: "true"`) whose canary-weight is within a rule's
range, the rule's value replaces the base value (later rules win).

Control over HTTP: `GET /_sim/app` for the state, `POST /_sim/app` with any of the keys
of SimApp.control(). The `refused` metrics-down mode closes the app's listening socket,
so it can only be set and cleared from Python or through the API server's
`/_sim/apps/<name>` route that `python -m kubesim` adds.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

from kubesim._http import BackgroundServer, Closeable, JSONRequestHandler, SimHTTPServer
from kubesim.apiserver import ApiServer
from kubesim.resources import INGRESSES

MetricsDown = Literal["503", "reset", "refused"]

CANARY = "nginx.ingress.kubernetes.io/canary"
CANARY_WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"

DEFAULT_METRICS = {"error_rate": 0.0, "p99_latency": 0.1, "requests": 1000.0}

DEFAULT_QUERIES = (
    ("error", "error_rate"),
    ("5..", "error_rate"),
    ("latency", "p99_latency"),
    ("duration", "p99_latency"),
    ("quantile", "p99_latency"),
    ("request", "requests"),
)

_METRIC_PATHS = ("/api/metrics", "/api/v1/query")


@dataclass(frozen=True)
class MetricRule:
    """While the canary weight is within [min_weight, max_weight], `metric` reads `value`."""

    metric: str
    value: float
    min_weight: int = 0
    max_weight: int = 100

    def applies(self, weight: int | None) -> bool:
        return weight is not None and self.min_weight <= weight <= self.max_weight


@dataclass(frozen=True)
class CanaryLink:
    """Where the canary weight is read: an Ingress in the API server's store."""

    server: ApiServer
    namespace: str
    ingress: str

    def weight(self) -> int:
        """The canary weight, 0 when the Ingress is missing or is not a canary."""
        ingress = self.server.store.find(INGRESSES, self.namespace, self.ingress)
        annotations = (ingress or {}).get("metadata", {}).get("annotations") or {}
        if annotations.get(CANARY) != "true":
            return 0
        return int(annotations.get(CANARY_WEIGHT) or 0)


class AppHandler(JSONRequestHandler):
    """Answers the application endpoints and the app's own control path."""

    @property
    def app(self) -> SimApp:
        return self.server.owner  # type: ignore[no-any-return]

    def do_GET(self) -> None:
        body = self.read_body()
        path = self.url_path
        self.app.count_hit(path)
        if path == "/_sim/app":
            self.answer_control(body)
        elif path in _METRIC_PATHS and self.app.metrics_down:
            self.answer_metrics_down()
        elif path == "/api/v1/query":
            self.answer_query(body)
        else:
            self.answer_endpoint(path)

    do_POST = do_GET

    def answer_endpoint(self, path: str) -> None:
        app = self.app
        if path == "/health":
            self.send_json(app.health_code, {"status": app.health})
        elif path == "/ready":
            self.send_json(200 if app.ready else 503, {"ready": app.ready})
        elif path == "/api/status":
            self.send_json(200, {"agents": app.agents})
        elif path == "/api/metrics":
            self.send_json(200, app.metrics())
        else:
            self.send_json(404, {"error": f"no such endpoint {path}"})

    def answer_metrics_down(self) -> None:
        if self.app.metrics_down == "reset":
            self.reset_connection()
        else:
            self.send_json(503, {"status": "error", "error": "metrics backend unavailable"})

    def answer_query(self, body: bytes) -> None:
        query = self.query.get("query") or dict(parse_qsl(body.decode())).get("query")
        if not query:
            error = {"status": "error", "errorType": "bad_data", "error": "query is required"}
            self.send_json(400, error)
            return
        value = self.app.query_value(query)
        result = [] if value is None else [{"metric": {}, "value": [time.time(), str(value)]}]
        self.send_json(
            200, {"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    def answer_control(self, body: bytes) -> None:
        if self.command == "GET":
            self.send_json(200, self.app.state())
            return
        try:
            settings = json.loads(body or b"{}")
            if settings.get("metrics_down") == "refused":
                raise ValueError(
                    "metrics_down 'refused' closes this very port; set it from Python or "
                    "through the API server's /_sim/apps/<name> route"
                )
            self.send_json(200, self.app.control(settings))
        except (ValueError, TypeError, KeyError) as error:
            self.send_json(400, {"error": str(error)})


class SimApp(Closeable):
    """One environment's simulated application, listening on 127.0.0.1 from construction on.

    `apiserver` is the server a control request's `link` refers to.
    """

    def __init__(
        self, port: int = 0, *, name: str = "app", apiserver: ApiServer | None = None
    ) -> None:
        self.name = name
        self.apiserver = apiserver
        self.health = "healthy"
        self.health_code = 200
        self.ready = True
        self.agents: list[Any] = []
        self.metrics_down: MetricsDown | None = None
        self._base_metrics = dict(DEFAULT_METRICS)
        self._queries: dict[str, str] = {}
        self._rules: list[MetricRule] = []
        self._link: CanaryLink | None = None
        self._hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._background: BackgroundServer | None = self._listen(port)
        self._port = self._background.port

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def close(self) -> None:
        if self._background is not None:
            self._background.close()
            self._background = None

    # Settings

    def set_health(self, status: str = "healthy", code: int = 200) -> None:
        """What /health answers: {"status": status} with HTTP `code`."""
        self.health, self.health_code = status, code

    def set_ready(self, ready: bool) -> None:
        self.ready = ready

    def set_agents(self, agents: list[Any]) -> None:
        self.agents = list(agents)

    def set_metrics(self, **values: float) -> None:
        """Set base metric values, e.g. set_metrics(error_rate=0.02, p99_latency=1.5)."""
        with self._lock:
            self._base_metrics.update({name: float(value) for name, value in values.items()})

    def set_queries(self, mapping: dict[str, str]) -> None:
        """Map Prometheus query substrings to metric names, checked before the defaults."""
        with self._lock:
            self._queries = dict(mapping)

    def add_rule(
        self, metric: str, value: float, *, min_weight: int = 0, max_weight: int = 100
    ) -> MetricRule:
        rule = MetricRule(metric, float(value), min_weight, max_weight)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def link(self, server: ApiServer, namespace: str, ingress: str) -> None:
        """Read the canary weight from `ingress` in `namespace` on `server` for the rules."""
        self._link = CanaryLink(server, namespace, ingress)

    def unlink(self) -> None:
        self._link = None

    def set_metrics_down(self, mode: MetricsDown | None) -> None:
        """Make the metrics endpoints answer 503, reset connections, or refuse them; None heals.

        `refused` stops the whole app listening (health included), since a refused
        connection needs a closed port; clearing it listens again on the same port.
        """
        if mode not in (None, "503", "reset", "refused"):
            raise ValueError(f"metrics_down must be 503, reset, refused or null, not {mode!r}")
        if mode == "refused":
            self.close()
        elif self._background is None:
            self._background = self._listen(self._port)
        self.metrics_down = mode

    # Readings

    def canary_weight(self) -> int | None:
        """The linked canary weight, or None when the app is not linked."""
        return self._link.weight() if self._link else None

    def metrics(self) -> dict[str, float]:
        """The metric values right now: base values, overridden by the rules that apply."""
        weight = self.canary_weight()
        with self._lock:
            values = dict(self._base_metrics)
            for rule in self._rules:
                if rule.applies(weight):
                    values[rule.metric] = rule.value
        return values

    def query_value(self, query: str) -> float | None:
        """The value a Prometheus query returns, or None for an empty vector."""
        with self._lock:
            rules = [*self._queries.items(), *DEFAULT_QUERIES]
        metric = next((name for substring, name in rules if substring in query), None)
        return self.metrics().get(metric) if metric else None

    def hits(self, path: str) -> int:
        """How many requests `path` has had, e.g. how often the analysis sampled metrics."""
        with self._lock:
            return self._hits[path]

    def count_hit(self, path: str) -> None:
        with self._lock:
            self._hits[path] += 1

    # Control

    def state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "health": self.health,
            "health_code": self.health_code,
            "ready": self.ready,
            "agents": self.agents,
            "metrics": self.metrics(),
            "canary_weight": self.canary_weight(),
            "rules": [asdict(rule) for rule in self._rules],
            "metrics_down": self.metrics_down,
        }

    def control(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Apply control settings and return the new state.

        Keys: health, health_code, ready, agents, metrics {name: value}, queries
        {substring: metric}, rules [{metric, value, min_weight, max_weight}] (replaces
        the rules), link {namespace, ingress} or null, metrics_down.
        """
        known = {
            "health",
            "health_code",
            "ready",
            "agents",
            "metrics",
            "queries",
            "rules",
            "link",
            "metrics_down",
        }
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"unknown app settings {sorted(unknown)}; known: {sorted(known)}")
        if "health" in settings or "health_code" in settings:
            self.set_health(
                settings.get("health", self.health),
                int(settings.get("health_code", self.health_code)),
            )
        if "ready" in settings:
            self.set_ready(bool(settings["ready"]))
        if "agents" in settings:
            self.set_agents(settings["agents"])
        self.set_metrics(**settings.get("metrics", {}))
        if "queries" in settings:
            self.set_queries(settings["queries"])
        if "rules" in settings:
            self.clear_rules()
            for rule in settings["rules"]:
                self.add_rule(**rule)
        if "link" in settings:
            self._control_link(settings["link"])
        if "metrics_down" in settings:
            self.set_metrics_down(settings["metrics_down"])
        return self.state()

    def _control_link(self, link: dict[str, str] | None) -> None:
        if link is None:
            self.unlink()
        elif self.apiserver is None:
            raise ValueError(f"app {self.name!r} has no API server to link to; pass apiserver=")
        else:
            self.link(self.apiserver, link["namespace"], link["ingress"])

    def _listen(self, port: int) -> BackgroundServer:
        return BackgroundServer(SimHTTPServer(port, AppHandler, self), f"kubesim-app-{self.name}")
