"""``monkeytown-deploy config check`` and ``config show``.

``check`` is what an operator runs before restarting the daemon (and what the systemd
units run in ``ExecStartPre``): it reports every problem, each as key, value and rule, and
exits 1 when there is one. ``show`` prints the configuration the daemon would run with,
after the file, the environment and the defaults are merged, with secrets masked.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from monkeytown_deploy.config import (
    ApprovalPolicy,
    ConfigError,
    Settings,
    load_settings,
    mask_url,
)
from triggers import Environment


@click.group()
def config() -> None:
    """Check or show the effective configuration (file + MONKEYTOWN_DEPLOY_* + defaults)."""


@config.command()
@click.pass_obj
def check(obj: dict[str, Any] | None) -> None:
    """Validate the configuration and report every problem.

    \b
    Exit status: 0 when the configuration is usable, 1 when it is not.
    Each problem names the key, the value and the rule it breaks.
    """
    path = _config_path(obj)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        _report(exc.source, exc.problems)
        sys.exit(1)

    problems = host_problems(settings)
    source = str(path or "defaults and environment")
    if problems:
        _report(source, problems)
        sys.exit(1)
    for warning in config_warnings(settings):
        click.secho(f"warning: {warning}", fg="yellow")
    policies = ", ".join(f"{env} {settings.policy_for(env)}" for env in Environment)
    click.echo(f"OK {source}: approval {policies}")


@config.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["toml", "json"]),
    default="toml",
    show_default=True,
    help="TOML reads like the file it came from; JSON is for scripts.",
)
@click.pass_obj
def show(obj: dict[str, Any] | None, fmt: str) -> None:
    """Print the effective configuration, secrets masked."""
    try:
        settings = load_settings(_config_path(obj))
    except ConfigError as exc:
        _report(exc.source, exc.problems)
        sys.exit(1)
    shown = masked(settings)
    click.echo(json.dumps(shown, indent=2) if fmt == "json" else to_toml(shown), nl=False)


def _config_path(obj: dict[str, Any] | None) -> Path | None:
    path = (obj or {}).get("config_path")
    return Path(path) if path else None


def _report(source: str, problems: list[str]) -> None:
    click.secho(f"{source}: {len(problems)} problem(s)", fg="red", err=True)
    for problem in problems:
        click.secho(f"  {problem}", fg="red", err=True)


def host_problems(settings: Settings) -> list[str]:
    """Problems only this machine can show: files that must exist, folders it must write."""
    problems = []
    for env, env_settings in settings.environments.items():
        signers = env_settings.allowed_signers
        if signers is not None and not (signers.is_file() and os.access(signers, os.R_OK)):
            problems.append(
                f"environments.{env}.allowed_signers = {str(signers)!r}: must be a readable "
                "file (git's allowed-signers format)"
            )
    for key, folder in (
        ("state_dir", settings.state_dir),
        ("audit_log", settings.audit_path.parent),
    ):
        if not _writable_or_creatable(folder):
            problems.append(
                f"{key} = {str(folder)!r}: must be a folder this user ({_user()}) can write"
            )
    return problems


def _writable_or_creatable(folder: Path) -> bool:
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


def config_warnings(settings: Settings) -> list[str]:
    """Settings that are valid but probably not what a production operator wants."""
    warnings = []
    for env in (Environment.STAGING, Environment.PRODUCTION):
        if settings.policy_for(env) is ApprovalPolicy.TRUST_FILE:
            warnings.append(
                f"environments.{env}.approval_policy = 'trust-file': any agent can approve "
                f"its own {env} deploy; use merge or signature"
            )
    production = settings.environment(Environment.PRODUCTION)
    if settings.policy_for(Environment.PRODUCTION) is ApprovalPolicy.MERGE and not (
        production.approvers
    ):
        warnings.append(
            "environments.production.approvers = []: no approver is named, so no production "
            "deploy can be approved (set approvers or allowed_signers)"
        )
    if production.canary.min_requests == 0:
        warnings.append(
            "environments.production.canary.min_requests = 0: a canary that receives no "
            "traffic passes its analysis"
        )
    if production.base_url is None:
        warnings.append(
            "environments.production.base_url is unset: the health and smoke gates have "
            "nothing to check"
        )
    return warnings


_SECRETS = ("redis_url", "notify_webhook", "webhook_secret")


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as plain data, with each secret masked but still recognisable."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    for key in _SECRETS:
        secret = getattr(settings, key)
        if secret is None:
            continue
        value = secret.get_secret_value()
        data[key] = mask_url(value, hide_path=True) if "://" in value else "***"
    data["audit_log"] = str(settings.audit_path)
    return data


def to_toml(data: dict[str, Any], table: str = "") -> str:
    """TOML for plain data: scalars, lists, nested tables and arrays of tables.

    ``None`` has no TOML form, so an unset key is written as a comment.
    """
    lines: list[str] = []
    nested: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in data.items():
        name = f"{table}.{key}" if table else key
        if isinstance(value, dict):
            nested.append((name, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((name, value))
        elif value is None:
            lines.append(f"# {key} is unset")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines) + "\n" if lines else ""
    if table and not lines and nested:
        out = ""  # a table holding only tables needs no header of its own
    for name, value in nested:
        out += f"\n[{name}]\n" + to_toml(value, name).lstrip("\n")
    for name, items in arrays:
        for item in items:
            out += f"\n[[{name}]]\n" + to_toml(item, name).lstrip("\n")
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string
