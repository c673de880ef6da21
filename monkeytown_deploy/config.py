"""One validated configuration: a TOML file, overridden by ``MONKEYTOWN_DEPLOY_*`` variables.

Everything has a default that matches the Monkeytown deployment strategy, so the daemon
starts with no file at all; a file or the environment only says what differs.
"""

from __future__ import annotations

import contextvars
import os
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from triggers import Environment, Rollout

CONFIG_ENV = "MONKEYTOWN_DEPLOY_CONFIG"
_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "config_file", default=None
)


class ApprovalPolicy(StrEnum):
    """What counts as an approval, weakest first."""

    TRUST_FILE = "trust-file"
    MERGE = "merge"
    SIGNATURE = "signature"

    @property
    def strictness(self) -> int:
        return list(ApprovalPolicy).index(self)


class Component(BaseModel):
    """One Deployment the daemon rolls out, and the container that gets the new image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    deployment: str
    container: str


_DEFAULT_COMPONENTS = (
    Component(name="web", deployment="monkeytown-web", container="web"),
    Component(name="event-stream", deployment="monkeytown-event-stream", container="event-stream"),
)


class Canary(BaseModel):
    """How a production canary walks its steps and judges each one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: tuple[int, ...] = (10, 25, 50)
    analysis_interval: float = Field(60.0, ge=1.0)
    samples: int = Field(3, ge=1, description="metric samples taken at each step")
    failure_limit: int = Field(0, ge=0, description="failed samples a step tolerates")
    max_error_rate: float = Field(0.01, ge=0.0, le=1.0)
    max_p99_latency: float = Field(1.0, gt=0.0)
    min_requests: int = Field(50, ge=0)
    ingress: str = "monkeytown-web-canary"
    deployment_suffix: str = "-canary"

    @model_validator(mode="after")
    def _steps_increase(self) -> Canary:
        steps = self.steps
        if not steps or steps != tuple(sorted(set(steps))) or steps[0] < 1 or steps[-1] > 100:
            raise ValueError(f"steps must be increasing weights between 1 and 100 (got {steps})")
        return self

    def tightened_by(self, rollout: Rollout | None) -> Canary:
        """The canary a trigger's ``### Rollout`` asks for, never less careful than this one.

        A trigger may add steps, sample more slowly, or lower a threshold; a value that
        would loosen the configured bound is ignored in favour of the bound.
        """
        if rollout is None:
            return self
        changes: dict[str, Any] = {}
        if rollout.steps:
            changes["steps"] = tuple(sorted(set(rollout.steps) | set(self.steps)))
        if rollout.analysis_interval:
            changes["analysis_interval"] = max(rollout.analysis_interval, self.analysis_interval)
        if rollout.max_error_rate is not None:
            changes["max_error_rate"] = min(rollout.max_error_rate, self.max_error_rate)
        if rollout.max_p99_latency:
            changes["max_p99_latency"] = min(rollout.max_p99_latency, self.max_p99_latency)
        if rollout.failure_limit is not None:
            changes["failure_limit"] = min(rollout.failure_limit, self.failure_limit)
        if rollout.min_requests is not None:
            changes["min_requests"] = max(rollout.min_requests, self.min_requests)
        return self.model_copy(update=changes)


class Metrics(BaseModel):
    """Where the canary analysis reads error rate, p99 latency and request count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(None, description="JSON endpoint; default <base_url>/api/metrics")
    prometheus_url: str | None = None
    error_rate_query: str = (
        'sum(rate(http_requests_total{status=~"5.."}[1m])) / sum(rate(http_requests_total[1m]))'
    )
    p99_latency_query: str = (
        "histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket[1m])) by (le))"
    )
    requests_query: str = "sum(increase(http_requests_total[1m]))"


class EnvironmentSettings(BaseModel):
    """Everything the daemon needs to know about one environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str
    kube_context: str | None = None
    kube_api_url: str | None = Field(
        None, description="API server URL used without kubeconfig (a local proxy, a test server)"
    )
    components: tuple[Component, ...] = _DEFAULT_COMPONENTS
    base_url: str | None = Field(None, description="where /health, /ready, /api/status answer")
    image_template: str = "ghcr.io/anomalyco/monkeytown-{component}:{sha}"
    approval_policy: ApprovalPolicy | None = None
    approvers: tuple[str, ...] = ()
    allowed_signers: Path | None = None
    canary: Canary = Canary()
    metrics: Metrics = Metrics()
    progress_deadline: float = Field(600.0, gt=0)
    gate_timeout: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _template_has_sha(self) -> EnvironmentSettings:
        if "{sha}" not in self.image_template:
            raise ValueError(f"image_template must contain {{sha}} (got {self.image_template!r})")
        return self


def _default_environments() -> dict[Environment, EnvironmentSettings]:
    return {
        Environment.DEVELOPMENT: EnvironmentSettings(namespace="monkeytown-dev"),
        Environment.STAGING: EnvironmentSettings(namespace="monkeytown-staging"),
        Environment.PRODUCTION: EnvironmentSettings(namespace="monkeytown-prod"),
    }


def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` under systemd, else the XDG state folder."""
    if "STATE_DIRECTORY" in os.environ:
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "monkeytown-deploy"


class Settings(BaseSettings):
    """The daemon's whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="MONKEYTOWN_DEPLOY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    repo: Path | None = None
    branch: str | None = None
    remote: str | None = None
    fetch_interval: float = Field(30.0, gt=0)
    reconcile_interval: float = Field(30.0, gt=0)
    redis_url: SecretStr | None = None
    state_dir: Path = Field(default_factory=default_state_dir)
    audit_log: Path | None = None
    notify_webhook: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    listen: str | None = Field(None, pattern=r"^[^:]*:\d{1,5}$")
    dry_run: bool = False
    deploy_path: str = "deploy/overlays"
    job_timeout: float = Field(3600.0, gt=0)
    lease_ttl: float = Field(
        30.0, ge=1.0, description="seconds an environment lease outlives a silent worker"
    )
    environments: dict[Environment, EnvironmentSettings] = Field(
        default_factory=_default_environments
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_file.get())
        return init_settings, env_settings, toml

    @model_validator(mode="after")
    def _every_environment(self) -> Settings:
        missing = [env.value for env in Environment if env not in self.environments]
        if missing:
            raise ValueError(f"environments must configure {', '.join(missing)}")
        return self

    @property
    def audit_path(self) -> Path:
        return self.audit_log or self.state_dir / "audit.jsonl"

    def environment(self, env: Environment) -> EnvironmentSettings:
        return self.environments[env]

    def policy_for(self, env: Environment) -> ApprovalPolicy:
        """The approval policy in force for *env*.

        An explicit setting wins. Otherwise development trusts the file, and staging and
        production take the strictest policy the configuration makes possible: signatures
        when an allowed-signers file is set, merges when approvers are named. Production
        with neither still requires a merge, which nobody can satisfy: it fails closed.
        """
        env = Environment(env)
        settings = self.environments[env]
        if settings.approval_policy is not None:
            return settings.approval_policy
        if env is Environment.DEVELOPMENT:
            return ApprovalPolicy.TRUST_FILE
        if settings.allowed_signers is not None:
            return ApprovalPolicy.SIGNATURE
        if settings.approvers or env is Environment.PRODUCTION:
            return ApprovalPolicy.MERGE
        return ApprovalPolicy.TRUST_FILE


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists each as key, value and rule."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: invalid configuration\n  " + "\n  ".join(problems))
        self.source = source
        self.problems = problems


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read the configuration from *path* (or ``$MONKEYTOWN_DEPLOY_CONFIG``) and the environment.

    *overrides* (command-line options) win over both. Raises :class:`ConfigError` naming
    every bad key, its value and the rule it breaks.
    """
    chosen = path or os.environ.get(CONFIG_ENV)
    file = Path(chosen) if chosen else None
    if file is not None and not file.is_file():
        raise ConfigError(str(file), [f"config file {file} does not exist or is not a file"])
    token = _config_file.set(file)
    try:
        given = {key: value for key, value in overrides.items() if value is not None}
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(str(file or "environment"), _describe(exc)) from None
    except ValueError as exc:  # a TOML syntax error
        raise ConfigError(str(file or "environment"), [str(exc)]) from None
    finally:
        _config_file.reset(token)


def _describe(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        value = error.get("input")
        shown = "***" if _looks_secret(key) else repr(value)
        rule = error["msg"].removeprefix("Value error, ")
        problems.append(f"{key} = {shown}: {rule}")
    return problems


def _looks_secret(key: str) -> bool:
    return any(word in key for word in ("secret", "webhook", "password", "token", "redis_url"))
