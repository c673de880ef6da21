"""Prometheus metrics of the workers, safe across forking RQ work-horses.

Each deployment job runs in a forked work-horse, so counters live in prometheus_client's
multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set (``monkeytown-deploy worker``
sets it under the state folder); :func:`collect` merges every process's files.
"""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

DEPLOYMENTS = Counter(
    "monkeytown_deploy_deployments_total",
    "Deployment jobs by environment and outcome (started, succeeded, failed, rolled_back).",
    ["environment", "outcome"],
)
STAGE_SECONDS = Histogram(
    "monkeytown_deploy_stage_seconds",
    "Time a stage took, waits included.",
    ["environment", "stage"],
    buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800),
)
CANARY_WEIGHT = Gauge(
    "monkeytown_deploy_canary_weight",
    "Current canary traffic weight in percent (0 when no canary runs).",
    ["environment"],
    multiprocess_mode="livemax",
)
ANALYSIS_VERDICTS = Counter(
    "monkeytown_deploy_analysis_verdicts_total",
    "Canary analysis samples by verdict (pass, fail, no_data).",
    ["environment", "verdict"],
)
LEASE_WAIT_SECONDS = Histogram(
    "monkeytown_deploy_lease_wait_seconds",
    "Time a job waited for its environment lease.",
    ["environment"],
    buckets=(0.01, 0.1, 1, 5, 30, 60, 300, 900, 3600),
)


def collect() -> bytes:
    """The exposition text of every worker process (multiprocess) or of this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(registry))
    return bytes(generate_latest())


class MetricsServer:
    """``/metrics`` (and ``/health``) over HTTP from a background thread; :meth:`close` it.

    The worker command starts one per worker process; the work-horses it forks write
    their samples to the multiprocess folder, which :func:`collect` merges on each scrape.
    """

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        try:
            self.httpd = ThreadingHTTPServer((host or "127.0.0.1", int(port)), _MetricsHandler)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"cannot serve metrics on {listen!r}: {exc}; pass HOST:PORT with a free port"
            ) from exc
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name=f"metrics-{listen}", daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/metrics"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class _MetricsHandler(BaseHTTPRequestHandler):
    server_version = "monkeytown-worker"

    def do_GET(self) -> None:
        if self.path == "/metrics":
            body, content_type = collect(), CONTENT_TYPE_LATEST
        elif self.path == "/health":
            body, content_type = b'{"status": "ok"}', "application/json"
        else:
            self.send_error(404, f"no such endpoint {self.path}; try /metrics")
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the worker's log; stay quiet."""


def serve_metrics(listen: str) -> MetricsServer:
    """Serve every worker process's metrics on *listen* (``HOST:PORT``) until closed."""
    return MetricsServer(listen)


def use_multiprocess_dir(folder: Path) -> None:
    """Point prometheus_client at *folder* for this process and the work-horses it forks.

    Call before any metric is touched. Files a previous run left behind are removed, or
    their counts would be added to this run's.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def forget_process(pid: int) -> None:
    """Drop a finished work-horse's live gauges (its counters stay counted)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
