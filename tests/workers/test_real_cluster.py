"""The development scenario against a real cluster, when one is named (opt-in)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from monkeytown_deploy.config import CONFIG_ENV
from workers.jobs import run_trigger

from .conftest import DeployRepo


@pytest.mark.cluster
def test_development_deploy_on_a_real_cluster(
    request: pytest.FixtureRequest,
    deploy_repo: DeployRepo,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With --kube-context, the example tree deploys to that cluster's monkeytown-dev."""
    context = request.config.getoption("--kube-context")
    if not context:
        pytest.skip("no real cluster: pass --kube-context or MONKEYTOWN_DEPLOY_TEST_KUBE_CONTEXT")
    config = tmp_path / "config.toml"
    config.write_text(
        f'redis_url = "{redis_url}"\nstate_dir = "{tmp_path}"\n'
        f'[environments.development]\nnamespace = "monkeytown-dev"\n'
        f'kube_context = "{context}"\napproval_policy = "trust-file"\n'
        f'image_template = "{os.environ.get("MONKEYTOWN_DEPLOY_TEST_IMAGE", "nginx:{sha}")}"\n'
    )
    monkeypatch.setenv(CONFIG_ENV, str(config))

    result = run_trigger(deploy_repo.trigger("development", deploy_repo.releases[0]))

    assert result["deployed"] == deploy_repo.releases[0]
