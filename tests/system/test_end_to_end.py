"""The whole path as users run it: an agent's commit to a promoted production canary."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.harness import System, running_system, wait_for

pytestmark = pytest.mark.slow


def test_an_approved_production_trigger_walks_every_stage_and_is_promoted(tmp_path: Path) -> None:
    """Invariant: one job per trigger, production runs the SHA, no canary left, chain intact."""
    with running_system(tmp_path) as system:
        sha = system.new_release("1.0")
        path = system.agent.propose_and_merge("release-1", "production", sha)

        succeeded = wait_for(
            lambda: system.events("job.succeeded"), 120, "the production job to succeed"
        )
        assert len(succeeded) == 1
        for env in ("development", "staging", "production"):
            assert system.image_of(env).endswith(f":{sha}"), env
        assert system.canary_weight() == 0
        accepted = system.events("trigger.accepted")
        assert [record["sha"] for record in accepted] == [sha]
        assert accepted[0].get("path", path) == path
        assert len(system.events("promote")) == 1
        assert system.job_ids()["finished"] == {accepted[0]["trigger_id"]}
        assert system.audit_intact()


def _agent_forges_approval(system: System) -> None:
    sha = system.new_release("forged")
    system.agent.commit_trigger("forged", "production", sha)


def test_an_agent_approving_its_own_production_trigger_is_refused(tmp_path: Path) -> None:
    """Invariant: an agent's own 'Status: approved' for production never deploys."""
    with running_system(tmp_path, workers=1) as system:
        _agent_forges_approval(system)

        rejected = wait_for(
            lambda: system.events("trigger.rejected"), 30, "the forged trigger to be rejected"
        )
        assert rejected[0]["rule"].startswith("approval")
        assert system.job_ids() == {
            "queued": set(),
            "started": set(),
            "finished": set(),
            "failed": set(),
        }
        assert system.audit_intact()
