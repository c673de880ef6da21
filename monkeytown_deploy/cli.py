"""The ``monkeytown-deploy`` command line.

Subcommands live beside the code they drive and are imported only when invoked, so
``validate`` stays quick and a machine without a cluster can still check triggers.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from monkeytown_deploy import __version__
from triggers import ParseResult, parse_trigger

# name -> "module:attribute" of a click command, loaded on first use.
LAZY_COMMANDS: dict[str, str] = {
    "config": "monkeytown_deploy.config_cli:config",
    "audit": "monkeytown_deploy.audit_cli:audit",
    "status": "monkeytown_deploy.ops:status",
    "rollback": "monkeytown_deploy.ops:rollback",
    "up": "monkeytown_deploy.up:up",
    "watch": "watcher.cli:watch",
    "worker": "workers.cli:worker",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported when they are used, not at start-up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module), attribute)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="monkeytown-deploy")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MONKEYTOWN_DEPLOY_CONFIG",
    help="TOML configuration file (env: MONKEYTOWN_DEPLOY_CONFIG). Defaults work without one.",
)
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Turn committed deployment-trigger files into staged, canary-gated deploys.

    \b
    Agents commit markdown triggers under .monkeytown/decisions/deployment-triggers/;
    the watcher puts each approved one on the Redis queue "deployments" exactly once,
    and workers roll it out: development, staging, then a production canary.

    \b
    Quick start:   monkeytown-deploy up --repo PATH --dry-run
    Check a file:  monkeytown-deploy validate path/to/trigger.md
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of lines.")
@click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also check that each SHA names a commit in this git repository.",
)
def validate(paths: tuple[Path, ...], as_json: bool, repo: Path | None) -> None:
    """Check trigger files (or folders of *.md) and report every problem.

    \b
    Exit status: 0 when every file is valid, 1 when any is not, 2 on a usage error.
    Each problem names the file, the line, and the rule it breaks.
    """
    files = _expand(paths)
    results = [_validate_file(path, repo) for path in files]
    if as_json:
        click.echo(json.dumps([_result_json(result) for result in results], indent=2))
    else:
        for result in results:
            _echo_result(result)
    sys.exit(0 if all(result.valid for result in results) else 1)


def _expand(paths: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.md")))
        elif path.is_file():
            files.append(path)
        else:
            raise click.BadParameter(f"{path} is neither a file nor a folder", param_hint="PATHS")
    if not files:
        raise click.BadParameter("no *.md files found", param_hint="PATHS")
    return files


def _validate_file(path: Path, repo: Path | None) -> ParseResult:
    result = parse_trigger(path.read_bytes(), str(path))
    if result.trigger is None or repo is None:
        return result
    from triggers.gitobjects import GitError, resolve_commit

    try:
        resolve_commit(repo, result.trigger.sha)
    except GitError as exc:
        line = _line_of(path, "sha")
        problem = (*result.errors, _sha_problem(line, str(exc)))
        return ParseResult(result.path, None, problem, result.warnings)
    return result


def _sha_problem(line: int, message: str) -> Any:
    from triggers import Problem

    return Problem(line, "deployment.sha_unknown", message)


def _line_of(path: Path, key_name: str) -> int:
    for number, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if text.strip().lstrip("*").lower().startswith(f"{key_name}:"):
            return number
    return 1


def _echo_result(result: ParseResult) -> None:
    if result.valid:
        assert result.trigger is not None
        click.echo(f"OK {result.path}: {result.trigger.summary()}")
    for line in result.error_lines():
        click.secho(line, fg="red", err=False)
    for warning in result.warnings:
        click.secho(f"{warning.format(result.path)} (warning)", fg="yellow")


def _result_json(result: ParseResult) -> dict[str, Any]:
    return {
        "path": result.path,
        "valid": result.valid,
        "errors": [problem.as_dict() for problem in result.errors],
        "warnings": [problem.as_dict() for problem in result.warnings],
        "trigger": result.trigger.model_dump(mode="json") if result.trigger else None,
    }
