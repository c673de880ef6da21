"""Worker metrics survive RQ's forked work-horses and are served for Prometheus."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis
from rq import Queue

from monkeytown_deploy.keys import QUEUE
from monkeytown_deploy.metrics import serve_metrics

ROOT = Path(__file__).parents[2]


def test_counts_from_forked_work_horses_add_up_on_scrape(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three jobs run in three forked work-horses show up as one summed counter."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    queue = Queue(QUEUE, connection=redis_client)
    for _ in range(3):
        queue.enqueue("tests.ops.jobs.count_deployment", "production")
    subprocess.run(
        [str(Path(sys.executable).with_name("rq")), "worker", QUEUE, "--burst",
         "--url", redis_url, "--path", str(ROOT)],
        cwd=ROOT, check=True, capture_output=True, timeout=120,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
    )  # fmt: skip

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    server = serve_metrics("127.0.0.1:0")
    try:
        with urllib.request.urlopen(server.url, timeout=5) as response:
            text = response.read().decode()
    finally:
        server.close()
    started = 'monkeytown_deploy_deployments_total{environment="production",outcome="started"} 3.0'
    assert started in text
    assert 'monkeytown_deploy_stage_seconds_count{environment="production",stage="canary"} 3.0' in (
        text
    )
