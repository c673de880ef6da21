"""One validated configuration: a TOML file, overridden by ``MONKEYTOWN_DEPLOY_*`` variables.

Everything has a default that matches the Monkeytown deployment strategy, so the daemon
starts with no file at all; a file or the environment only says what differs.
"""

from __future__ import annotations

import contextvars
import difflib
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from monkeytown_deploy.audit import STREAM_MAX
from triggers import Environment, Rollout

CONFIG_ENV = "MONKEYTOWN_DEPLOY_CONFIG"
_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "config_file", default=None
)


class SettingProblem(ValueError):
    """A validator's complaint about one key, which may sit below the model that raised it.

    Pydantic reports a model-level error at the model's own location, with the whole model
    as its input; ``key`` and ``value`` let the report name the exact key and value instead.
    """

    def __init__(self, key: str, value: object, rule: str) -> None:
        super().__init__(rule)
        self.key = key
        self.value = value


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _dns_label(value: str) -> str:
    """Kubernetes names (namespaces, Deployments, containers) are DNS-1123 labels."""
    if not _DNS_LABEL.match(value):
        raise ValueError(
            "must be a Kubernetes name: at most 63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _url(value: str | None, schemes: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.netloc or parts.scheme == "unix"):
        raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
    return value


def _http_url(value: str | None) -> str | None:
    return _url(value, ("http", "https"))


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

    _kubernetes_names = field_validator("deployment", "container")(_dns_label)


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

    _kubernetes_names = field_validator("ingress")(_dns_label)

    @field_validator("steps")
    @classmethod
    def _steps_increase(cls, steps: tuple[int, ...]) -> tuple[int, ...]:
        if not steps or steps != tuple(sorted(set(steps))) or steps[0] < 1 or steps[-1] > 100:
            raise ValueError("must be increasing canary weights between 1 and 100")
        return steps

    @model_validator(mode="after")
    def _a_step_can_fail(self) -> Canary:
        # With failure_limit >= samples every sample may fail and the step still passes.
        if self.failure_limit >= self.samples:
            raise SettingProblem(
                "failure_limit",
                self.failure_limit,
                f"must be less than samples ({self.samples}), or no step can ever fail",
            )
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

    _urls = field_validator("url", "prometheus_url")(_http_url)


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

    _namespace = field_validator("namespace")(_dns_label)
    _urls = field_validator("base_url", "kube_api_url")(_http_url)

    @field_validator("image_template")
    @classmethod
    def _template_has_sha(cls, template: str) -> str:
        fields = set(re.findall(r"{([^{}]*)}", template))
        if "sha" not in fields:
            raise ValueError("must contain {sha}, the tag each deploy sets")
        if unknown := fields - {"sha", "component"}:
            raise ValueError(
                f"may use only {{component}} and {{sha}} (unknown: {', '.join(sorted(unknown))})"
            )
        return template

    @field_validator("components")
    @classmethod
    def _components_unique(cls, components: tuple[Component, ...]) -> tuple[Component, ...]:
        names = [component.name for component in components]
        if not names:
            raise ValueError("must name at least one component to deploy")
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"component names must be unique (repeated: {', '.join(duplicates)})")
        return components

    @model_validator(mode="after")
    def _policy_can_be_met(self) -> EnvironmentSettings:
        policy = self.approval_policy
        if policy is ApprovalPolicy.MERGE and not self.approvers:
            raise SettingProblem(
                "approvers", [], "approval_policy merge needs at least one approver"
            )
        if policy is ApprovalPolicy.SIGNATURE and self.allowed_signers is None:
            raise SettingProblem(
                "allowed_signers", None, "approval_policy signature needs an allowed-signers file"
            )
        return self

    def endpoint(self, path: str) -> str | None:
        """The URL of *path* (``/health``, ``/ready``, ``/api/status``) under ``base_url``."""
        return self.base_url.rstrip("/") + path if self.base_url else None

    @property
    def metrics_url(self) -> str | None:
        """Where the canary analysis reads JSON metrics: ``metrics.url`` or the base URL's."""
        return self.metrics.url or self.endpoint("/api/metrics")


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
    audit_stream_max: int = Field(
        STREAM_MAX, ge=1000, description="records the Redis mirror of the audit log keeps"
    )
    notify_webhook: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    listen: str | None = Field(None, pattern=r"^[^:]*:\d{1,5}$")
    dry_run: bool = False
    deploy_path: str = "deploy/overlays"
    job_timeout: float = Field(3600.0, gt=0)
    lease_ttl: float = Field(
        30.0, ge=1.0, description="seconds an environment lease outlives a silent worker"
    )
    api_retry_seconds: float = Field(
        60.0, gt=0, description="how long a Kubernetes API call retries a temporary failure"
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

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            _url(url.get_secret_value(), ("redis", "rediss", "unix"))
        return url

    @field_validator("notify_webhook")
    @classmethod
    def _webhook_scheme(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            _http_url(url.get_secret_value())
        return url

    @field_validator("listen")
    @classmethod
    def _listen_port(cls, listen: str | None) -> str | None:
        if listen is not None and not 0 < int(listen.rpartition(":")[2]) < 65536:
            raise ValueError("port must be between 1 and 65535")
        return listen

    @field_validator("environments", mode="before")
    @classmethod
    def _fill_environments(cls, given: Any) -> Any:
        """Environments a file leaves out, or leaves without a namespace, keep the defaults.

        So ``[environments.production]`` with only ``approvers`` is a whole configuration,
        and so is a single ``MONKEYTOWN_DEPLOY_ENVIRONMENTS__STAGING__BASE_URL`` variable.
        """
        if not isinstance(given, dict):
            return given
        filled = dict(given)
        for env, defaults in _default_environments().items():
            entry = filled.get(env, {})
            if isinstance(entry, dict):
                filled[env.value] = {"namespace": defaults.namespace, **entry}
        return filled

    @model_validator(mode="after")
    def _every_environment(self) -> Settings:
        seen: dict[tuple[str | None, str], Environment] = {}
        for env, settings in self.environments.items():
            place = (settings.kube_context, settings.namespace)
            if place in seen:
                raise SettingProblem(
                    f"environments.{env}.namespace",
                    settings.namespace,
                    f"already used by {seen[place]} on the same kube_context: a deploy to "
                    f"one would overwrite the other",
                )
            seen[place] = env
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
    errors = exc.errors()
    # An unknown environment name is one problem, not one more for each key beneath it.
    bad_names = {error["loc"][:-1] for error in errors if error["loc"][-1:] == ("[key]",)}
    for error in errors:
        loc = error["loc"]
        if loc[-1:] != ("[key]",) and any(loc[: len(name)] == name for name in bad_names):
            continue
        parts = [str(part) for part in error["loc"] if part != "[key]"]
        value = "(missing)" if error["type"] == "missing" else error.get("input")
        rule = error["msg"].removeprefix("Value error, ")
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, SettingProblem):
            parts += cause.key.split(".")
            value = cause.value
        elif error["type"] == "extra_forbidden":
            rule = _unknown_key_rule(parts)
        key = ".".join(parts) or "(top level)"
        problems.append(f"{key} = {_shown(key, value)}: {rule}{_from_environment(parts)}")
    return problems


def _unknown_key_rule(parts: list[str]) -> str:
    model: type[BaseModel] = Settings
    for part in parts[:-1]:
        annotation = model.model_fields.get(part)
        inner = getattr(annotation, "annotation", None) if annotation else None
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            model = inner
        elif part in [env.value for env in Environment]:
            model = EnvironmentSettings
    known = sorted(model.model_fields)
    close = difflib.get_close_matches(parts[-1], known, n=1)
    hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known)}"
    return f"unknown key ({hint})"


def _from_environment(parts: list[str]) -> str:
    """Name the variable a bad value came from, since the file may not contain it at all."""
    name = "MONKEYTOWN_DEPLOY_" + "__".join(parts).upper()
    return f" (from ${name})" if parts and name in os.environ else ""


def _shown(key: str, value: object) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str) and "://" in value:
        return repr(mask_url(value, hide_path=_looks_secret(key)))
    return "***" if _looks_secret(key) else repr(value)


def mask_url(url: str, *, hide_path: bool = False) -> str:
    """*url* with its password replaced by ``***``, and its path too with *hide_path*.

    A Redis URL keeps its host, port and database so an operator can still tell which
    server is meant; an HTTP webhook's path is its secret, so only the host remains.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    if parts.password is not None:
        host = f"{parts.username or ''}:***@{host}"
    secret_path = hide_path and parts.scheme in ("http", "https") and parts.path.strip("/")
    path = "/***" if secret_path else parts.path
    return f"{parts.scheme}://{host}{path}"


def _looks_secret(key: str) -> bool:
    return any(word in key for word in ("secret", "webhook", "password", "token", "redis_url"))
