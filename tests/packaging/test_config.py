"""The configuration: every bad value is reported with its key, value and rule."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from monkeytown_deploy.cli import main
from monkeytown_deploy.config import ApprovalPolicy, ConfigError, load_settings
from tests.packaging.conftest import EXAMPLE, VENV_BIN, WriteConfig
from triggers import Environment, Rollout

# (TOML text, key, value as reported, a phrase of the rule)
BAD_CONFIGS = [
    ('fetch_interval = "soon"', "fetch_interval", "'soon'", "valid number"),
    ("reconcile_interval = 0", "reconcile_interval", "0", "greater than 0"),
    ("job_timeout = -5", "job_timeout", "-5", "greater than 0"),
    ("audit_stream_max = 10", "audit_stream_max", "10", "greater than or equal to 1000"),
    ('redis_url = "http://redis:6379/0"', "redis_url", "'http://redis:6379/***'", "redis://"),
    ('notify_webhook = "hooks.slack.com/x"', "notify_webhook", "***", "https://"),
    ('listen = "localhost"', "listen", "'localhost'", "should match pattern"),
    ('listen = "0.0.0.0:70000"', "listen", "'0.0.0.0:70000'", "between 1 and 65535"),
    ('brnach = "main"', "brnach", "'main'", "did you mean branch?"),
    ("dry_run = 3", "dry_run", "3", "valid boolean"),
    ("[environments.prod]", "environments.prod", "'prod'", "'development', 'staging'"),
    (
        '[environments.staging]\nnamespace = "Monkeytown_Staging"',
        "environments.staging.namespace",
        "'Monkeytown_Staging'",
        "Kubernetes name",
    ),
    (
        '[environments.production]\nimage_template = "ghcr.io/m/{component}:latest"',
        "environments.production.image_template",
        "'ghcr.io/m/{component}:latest'",
        "must contain {sha}",
    ),
    (
        '[environments.production]\nimage_template = "ghcr.io/{org}/{component}:{sha}"',
        "environments.production.image_template",
        "'ghcr.io/{org}/{component}:{sha}'",
        "unknown: org",
    ),
    (
        '[environments.production]\nbase_url = "monkeytown.ai"',
        "environments.production.base_url",
        "'monkeytown.ai'",
        "http://",
    ),
    (
        '[environments.production]\napproval_policy = "anyone"',
        "environments.production.approval_policy",
        "'anyone'",
        "'trust-file', 'merge' or 'signature'",
    ),
    (
        '[environments.production]\napproval_policy = "merge"',
        "environments.production.approvers",
        "[]",
        "needs at least one approver",
    ),
    (
        '[environments.production]\napproval_policy = "signature"',
        "environments.production.allowed_signers",
        "None",
        "needs an allowed-signers file",
    ),
    (
        "[environments.production.canary]\nsteps = [50, 25]",
        "environments.production.canary.steps",
        "[50, 25]",
        "increasing canary weights",
    ),
    (
        "[environments.production.canary]\nsteps = [10, 150]",
        "environments.production.canary.steps",
        "[10, 150]",
        "between 1 and 100",
    ),
    (
        "[environments.production.canary]\nmax_error_rate = 1.5",
        "environments.production.canary.max_error_rate",
        "1.5",
        "less than or equal to 1",
    ),
    (
        "[environments.production.canary]\nmax_p99_latency = 0",
        "environments.production.canary.max_p99_latency",
        "0",
        "greater than 0",
    ),
    (
        "[environments.production.canary]\nanalysis_interval = 0.1",
        "environments.production.canary.analysis_interval",
        "0.1",
        "greater than or equal to 1",
    ),
    (
        "[environments.production.canary]\nsamples = 2\nfailure_limit = 2",
        "environments.production.canary.failure_limit",
        "2",
        "less than samples (2)",
    ),
    (
        "[environments.production.canary]\nmin_requests = -1",
        "environments.production.canary.min_requests",
        "-1",
        "greater than or equal to 0",
    ),
    (
        "[environments.production.canary]\ningres = 'x'",
        "environments.production.canary.ingres",
        "'x'",
        "did you mean ingress?",
    ),
    (
        '[environments.production.metrics]\nprometheus_url = "prometheus:9090"',
        "environments.production.metrics.prometheus_url",
        "'prometheus:9090'",
        "http://",
    ),
    (
        "[environments.production]\nprogress_deadline = 0",
        "environments.production.progress_deadline",
        "0",
        "greater than 0",
    ),
    (
        "[[environments.production.components]]\n"
        'name = "web"\ndeployment = "Monkeytown_Web"\ncontainer = "web"',
        "environments.production.components.0.deployment",
        "'Monkeytown_Web'",
        "Kubernetes name",
    ),
    (
        "[[environments.production.components]]\n"
        'name = "web"\ndeployment = "a"\ncontainer = "a"\n'
        "[[environments.production.components]]\n"
        'name = "web"\ndeployment = "b"\ncontainer = "b"',
        "environments.production.components",
        "",
        "repeated: web",
    ),
    (
        '[environments.staging]\nnamespace = "monkeytown-prod"',
        "environments.production.namespace",
        "'monkeytown-prod'",
        "already used by staging",
    ),
]


@pytest.mark.parametrize(("text", "key", "value", "rule"), BAD_CONFIGS)
def test_bad_configuration_names_key_value_and_rule(
    write_config: WriteConfig, text: str, key: str, value: str, rule: str
) -> None:
    """Each bad configuration is refused with one line naming the key, the value and the rule."""
    path = write_config(text)

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    [problem] = caught.value.problems
    assert problem.startswith(f"{key} = {value}"), problem
    assert rule in problem
    assert caught.value.source == str(path)


@pytest.mark.parametrize(("text", "key", "value", "rule"), BAD_CONFIGS)
def test_config_check_exits_1_and_prints_the_problem(
    write_config: WriteConfig, text: str, key: str, value: str, rule: str
) -> None:
    """`config check` exits 1 and prints the key, value and rule of a bad configuration."""
    path = write_config(text)

    result = CliRunner().invoke(main, ["--config", str(path), "config", "check"])

    assert result.exit_code == 1, result.output
    assert f"{key} = {value}" in result.output
    assert rule in result.output


def test_the_error_table_is_large_enough() -> None:
    """The table of bad configurations covers at least fifteen distinct keys."""
    assert len({key for _, key, _, _ in BAD_CONFIGS}) >= 15


def test_config_check_reports_every_problem_at_once(write_config: WriteConfig) -> None:
    """Several bad keys in one file are all reported by one run of the installed command."""
    path = write_config(
        'fetch_interval = "soon"\nlisten = "x:0"\nbrnach = "main"\n'
        '[environments.staging]\nnamespace = "Bad_Name"\n'
        "[environments.production.canary]\nsteps = [50, 10]\n"
    )

    result = subprocess.run(
        [VENV_BIN / "monkeytown-deploy", "--config", path, "config", "check"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 1
    assert "5 problem(s)" in result.stderr
    for key in (
        "fetch_interval",
        "listen",
        "brnach",
        "environments.staging.namespace",
        "environments.production.canary.steps",
    ):
        assert f"\n  {key} = " in result.stderr


def test_toml_syntax_error_names_the_line(write_config: WriteConfig) -> None:
    """A TOML syntax error is reported with the line where parsing stopped."""
    path = write_config('branch = "main"\nfetch_interval = = 3\n')

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert "line 2" in caught.value.problems[0]


def test_missing_config_file_is_a_problem(tmp_path: Path) -> None:
    """A --config path that does not exist makes `config check` exit 1 naming the path."""
    missing = tmp_path / "nowhere.toml"

    result = CliRunner().invoke(main, ["--config", str(missing), "config", "check"])

    assert result.exit_code == 1
    assert f"config file {missing} does not exist" in result.output


def test_environment_variable_is_named_when_it_is_the_bad_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bad MONKEYTOWN_DEPLOY_* value is reported with the variable it came from."""
    monkeypatch.setenv("MONKEYTOWN_DEPLOY_ENVIRONMENTS__PRODUCTION__NAMESPACE", "Prod!")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    [problem] = caught.value.problems
    assert problem.startswith("environments.production.namespace = 'Prod!'")
    assert "(from $MONKEYTOWN_DEPLOY_ENVIRONMENTS__PRODUCTION__NAMESPACE)" in problem


def test_environment_variables_override_the_file(
    monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig
) -> None:
    """MONKEYTOWN_DEPLOY_* variables win over the file, and nested ones keep the rest."""
    path = write_config(
        'branch = "main"\n[environments.production]\nbase_url = "https://monkeytown.ai"\n'
        'approvers = ["maria@monkeytown.ai"]\n'
    )
    monkeypatch.setenv("MONKEYTOWN_DEPLOY_BRANCH", "release")
    monkeypatch.setenv("MONKEYTOWN_DEPLOY_ENVIRONMENTS__PRODUCTION__KUBE_CONTEXT", "prod-eu")

    settings = load_settings(path)

    production = settings.environment(Environment.PRODUCTION)
    assert settings.branch == "release"
    assert production.kube_context == "prod-eu"
    assert production.base_url == "https://monkeytown.ai"
    assert production.approvers == ("maria@monkeytown.ai",)


def test_a_partial_file_keeps_the_default_environments(write_config: WriteConfig) -> None:
    """A file configuring only production still has all three environments and namespaces."""
    path = write_config('[environments.production]\napprovers = ["maria@monkeytown.ai"]\n')

    settings = load_settings(path)

    namespaces = {env: settings.environment(env).namespace for env in Environment}
    assert namespaces == {
        Environment.DEVELOPMENT: "monkeytown-dev",
        Environment.STAGING: "monkeytown-staging",
        Environment.PRODUCTION: "monkeytown-prod",
    }
    assert settings.policy_for(Environment.PRODUCTION) is ApprovalPolicy.MERGE


def test_defaults_follow_the_deployment_strategy() -> None:
    """With no file, thresholds and components are the strategy's: 1% errors, p99 1 s."""
    settings = load_settings()

    production = settings.environment(Environment.PRODUCTION)
    assert production.canary.max_error_rate == 0.01
    assert production.canary.max_p99_latency == 1.0
    assert [c.deployment for c in production.components] == [
        "monkeytown-web",
        "monkeytown-event-stream",
    ]


def test_sample_configuration_passes_config_check() -> None:
    """The example config.toml passes `config check` and requires merges in production."""
    result = CliRunner().invoke(main, ["--config", str(EXAMPLE / "config.toml"), "config", "check"])

    assert result.exit_code == 0, result.output
    assert "production merge" in result.output


def test_config_check_refuses_an_unreadable_allowed_signers_file(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """An allowed-signers file that does not exist on this host makes `config check` exit 1."""
    missing = tmp_path / "allowed_signers"
    path = write_config(
        f'[environments.production]\napproval_policy = "signature"\nallowed_signers = "{missing}"\n'
    )

    result = CliRunner().invoke(main, ["--config", str(path), "config", "check"])

    assert result.exit_code == 1
    assert f"environments.production.allowed_signers = {str(missing)!r}" in result.output


def test_config_check_warns_about_self_approval_in_production(write_config: WriteConfig) -> None:
    """trust-file in production is allowed but `config check` warns that agents self-approve."""
    path = write_config('[environments.production]\napproval_policy = "trust-file"\n')

    result = CliRunner().invoke(main, ["--config", str(path), "config", "check"])

    assert result.exit_code == 0
    assert "warning: environments.production.approval_policy = 'trust-file'" in result.output


SECRET_ENV = {
    "MONKEYTOWN_DEPLOY_REDIS_URL": "redis://deploy:hunter2@redis.internal:6380/2",
    "MONKEYTOWN_DEPLOY_NOTIFY_WEBHOOK": "https://hooks.slack.com/services/T01/B02/s3cr3tpath",
    "MONKEYTOWN_DEPLOY_WEBHOOK_SECRET": "push-hmac-key",
}


def test_config_show_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """`config show` prints the effective configuration with no secret in it."""
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)

    result = CliRunner().invoke(main, ["--config", str(EXAMPLE / "config.toml"), "config", "show"])

    assert result.exit_code == 0, result.output
    for secret in ("hunter2", "s3cr3tpath", "push-hmac-key"):
        assert secret not in result.output
    shown = tomllib.loads(result.output)
    assert shown["redis_url"] == "redis://deploy:***@redis.internal:6380/2"
    assert shown["notify_webhook"] == "https://hooks.slack.com/***"
    assert shown["webhook_secret"] == "***"


def test_config_show_round_trips(write_config: WriteConfig) -> None:
    """The TOML `config show` prints loads back into the same configuration."""
    original = load_settings(EXAMPLE / "config.toml")
    shown = CliRunner().invoke(main, ["--config", str(EXAMPLE / "config.toml"), "config", "show"])

    reloaded = load_settings(write_config(shown.output))

    # show prints where the audit log goes, which the file left to the default
    assert reloaded.audit_path == original.audit_path
    assert reloaded.model_dump(exclude={"audit_log"}) == original.model_dump(exclude={"audit_log"})


def test_config_show_json_is_the_effective_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`config show --format json` reflects the file, the environment and the defaults."""
    monkeypatch.setenv("MONKEYTOWN_DEPLOY_ENVIRONMENTS__STAGING__BASE_URL", "https://stg.example")

    result = CliRunner().invoke(
        main,
        ["--config", str(EXAMPLE / "config.toml"), "config", "show", "--format", "json"],
    )

    shown = json.loads(result.output)
    assert shown["environments"]["staging"]["base_url"] == "https://stg.example"
    assert shown["environments"]["production"]["approvers"] == [
        "maria@monkeytown.ai",
        "tomas@monkeytown.ai",
    ]
    assert shown["environments"]["development"]["namespace"] == "monkeytown-dev"


@pytest.mark.parametrize(
    ("rollout", "expected"),
    [
        (Rollout(steps=(5, 10)), {"steps": (5, 10, 25, 50)}),
        (Rollout(max_error_rate=0.5), {"max_error_rate": 0.01}),
        (Rollout(max_error_rate=0.001), {"max_error_rate": 0.001}),
        (Rollout(max_p99_latency=5.0), {"max_p99_latency": 1.0}),
        (Rollout(max_p99_latency=0.25), {"max_p99_latency": 0.25}),
        (Rollout(analysis_interval=1.0), {"analysis_interval": 60.0}),
        (Rollout(analysis_interval=300.0), {"analysis_interval": 300.0}),
        (Rollout(failure_limit=3), {"failure_limit": 0}),
        (Rollout(min_requests=5), {"min_requests": 50}),
        (Rollout(min_requests=500), {"min_requests": 500}),
    ],
)
def test_trigger_rollout_only_tightens_the_configured_canary(
    rollout: Rollout, expected: dict[str, object]
) -> None:
    """A trigger's ### Rollout makes the canary more careful and never less."""
    canary = load_settings(EXAMPLE / "config.toml").environment(Environment.PRODUCTION).canary

    tightened = canary.tightened_by(rollout)

    for field, value in expected.items():
        assert getattr(tightened, field) == value
    untouched = set(type(canary).model_fields) - set(expected)
    assert {f: getattr(tightened, f) for f in untouched} == {
        f: getattr(canary, f) for f in untouched
    }
