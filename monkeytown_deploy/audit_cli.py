"""``monkeytown-deploy audit``: read, follow, verify and rotate the audit log.

The log is JSON for machines; these commands make it readable for the operator who wants
to know what happened to a trigger, and check that nobody rewrote it since.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import redis

from monkeytown_deploy import audit as auditlog
from monkeytown_deploy.config import ConfigError, Settings, load_settings
from triggers import Environment

_RELATIVE = re.compile(r"^(?P<amount>\d+(?:\.\d+)?)(?P<unit>[smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

# Event outcomes an operator scans for, by colour.
_GOOD = {"ok", "passed", "pass", "succeeded", "success", "accepted", "ready", "deployed"}
_BAD = {"failed", "fail", "rejected", "error", "rolled_back", "no_data", "timeout"}
_WAITING = {"pending", "waiting", "superseded", "duplicate", "requested"}
_LONGEST = 160
_SHOWN_FIRST = ("ts", "event", "environment", "stage", "outcome", "seq", "prev", "hash")


def parse_since(value: str) -> datetime:
    """``15m``, ``2h``, ``1d`` ago, or an ISO 8601 time (local time when no zone is given)."""
    relative = _RELATIVE.match(value.strip())
    if relative:
        span = timedelta(**{_UNITS[relative["unit"]]: float(relative["amount"])})
        return datetime.now(UTC) - span
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration like 15m, 2h, 1d nor an ISO 8601 time "
            "like 2026-01-18T12:00:00Z",
            param_hint="--since",
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


def record_time(record: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(record.get("ts", "")).replace("Z", "+00:00"))
    except ValueError:
        return None


def record_filter(
    trigger_id: str | None, environment: str | None, since: datetime | None
) -> Callable[[dict[str, Any]], bool]:
    """A predicate for records about *trigger_id* (or its prefix), *environment*, *since*."""

    def matches(record: dict[str, Any]) -> bool:
        if trigger_id and not str(record.get("trigger_id") or "").startswith(trigger_id):
            return False
        if environment and record.get("environment") != environment:
            return False
        if since is not None:
            moment = record_time(record)
            if moment is None or moment < since:
                return False
        return True

    return matches


def render(record: dict[str, Any]) -> str:
    """One record as one readable line (styled; click drops the colour when piped)."""
    moment = record_time(record)
    when = moment.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if moment else "?"
    event = str(record.get("event", "?"))
    parts = [click.style(when, dim=True), click.style(f"{event:<20}", fg=_event_colour(event))]
    for name in ("environment", "stage"):
        if record.get(name):
            parts.append(str(record[name]))
    outcome = record.get("outcome")
    if outcome:
        parts.append(click.style(str(outcome), fg=_outcome_colour(str(outcome)), bold=True))
    parts.extend(_fields(record))
    return " ".join(parts)


def _fields(record: dict[str, Any]) -> Iterable[str]:
    for name, value in record.items():
        if name in _SHOWN_FIRST or value is None or value in ("", [], {}):
            continue
        if isinstance(value, str):
            shown = value[:12] if name == "sha" else value
            shown = json.dumps(shown) if " " in shown else shown
        else:
            shown = json.dumps(value, separators=(",", ":"))
        if len(shown) > _LONGEST:  # a rendered plan or a traceback: --json has it whole
            shown = shown[: _LONGEST - 1] + "…"
        yield f"{click.style(name, dim=True)}={shown}"


def _event_colour(event: str) -> str | None:
    if event.startswith("operator.") or event.startswith("audit."):
        return "magenta"
    if event.endswith(("failed", "rejected")) or event.startswith("rollback"):
        return "red"
    if event.endswith(("succeeded", "completed", "passed", "promote", "ready")):
        return "green"
    return "cyan"


def _outcome_colour(outcome: str) -> str | None:
    if outcome in _GOOD:
        return "green"
    if outcome in _BAD:
        return "red"
    if outcome in _WAITING:
        return "yellow"
    return None


class Progress:
    """A transient last line, on a terminal, for what an operator is waiting on.

    A canary step, its analysis samples and a rollout wait can each take minutes with no
    new event; this line says what is going on until the next event replaces it.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.line = ""

    def echo(self, text: str) -> None:
        """Print *text* above the progress line, keeping the progress line last."""
        self._clear()
        click.echo(text)
        self._show()

    def update(self, record: dict[str, Any]) -> None:
        self.line = self.describe(record, self.line)
        self._clear()
        self._show()

    @staticmethod
    def describe(record: dict[str, Any], current: str) -> str:
        """What the operator is waiting on after *record*; empty when nothing."""
        event = record.get("event")
        env = record.get("environment") or ""
        if event == "rollout.wait":
            target = record.get("deployment") or record.get("component") or "the rollout"
            return f"{env}: waiting for {target} to roll out"
        if event == "canary.step":
            weight = record.get("canary_weight", record.get("weight"))
            return f"{env}: canary at {weight}%, analysing"
        if event == "analysis.sample" and current:
            sample = record.get("sample")
            return f"{current.split(' · ', maxsplit=1)[0]} · sample {sample}" if sample else current
        if event in ("rollout.ready", "stage.completed", "promote", "job.succeeded"):
            return ""
        if event in ("job.failed", "rollback.completed", "analysis.verdict"):
            return ""
        return current

    def _clear(self) -> None:
        if self.enabled and self.line:
            click.echo("\r\x1b[2K", nl=False)

    def _show(self) -> None:
        if self.enabled and self.line:
            click.echo(click.style(f"⏳ {self.line}…", fg="yellow"), nl=False)


def settings_from(ctx: click.Context) -> Settings:
    """The configuration the root command was given, or a clean error naming the problem."""
    root = ctx.find_root()
    config_path = (root.obj or {}).get("config_path")
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def audit() -> None:
    """Read, follow, verify and rotate the hash-chained audit log."""


@audit.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they are written.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON records unchanged.")
@click.option("--trigger", "trigger_id", metavar="ID", help="Only this trigger (or id prefix).")
@click.option("--env", "environment", type=click.Choice([env.value for env in Environment]))
@click.option("--since", metavar="TIME", help="Only events since TIME: 15m, 2h, 1d or ISO 8601.")
@click.option("-n", "--lines", type=click.IntRange(min=0), help="Start with the last N events.")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Log file to read (default: the configured audit log).",
)
@click.option(
    "--redis-url",
    envvar="MONKEYTOWN_DEPLOY_REDIS_URL",
    help="Read the Redis stream mirror instead, where every host's events land.",
)
@click.pass_context
def tail(  # noqa: PLR0917 (click passes every option)
    ctx: click.Context,
    follow: bool,
    as_json: bool,
    trigger_id: str | None,
    environment: str | None,
    since: str | None,
    lines: int | None,
    path: Path | None,
    redis_url: str | None,
) -> None:
    """Print audit events, one readable line each; --follow keeps going.

    \b
    Examples:
      monkeytown-deploy audit tail --trigger trigger-3f2a --since 1d
      monkeytown-deploy audit tail -f --env production
      monkeytown-deploy audit tail -f --redis-url redis://redis.internal:6379/0
    """
    matches = record_filter(trigger_id, environment, parse_since(since) if since else None)
    progress = Progress(enabled=follow and not as_json and sys.stdout.isatty())

    def show(record: dict[str, Any]) -> None:
        if not matches(record):
            return
        if as_json:
            click.echo(json.dumps(record, ensure_ascii=False))
            return
        progress.echo(render(record))
        progress.update(record)

    try:
        if redis_url:
            _tail_stream(redis_url, since, lines, follow, show)
        else:
            _tail_file(path or settings_from(ctx).audit_path, lines, follow, show)
    except KeyboardInterrupt:
        pass


def _tail_file(
    path: Path, lines: int | None, follow: bool, show: Callable[[dict[str, Any]], None]
) -> None:
    if not follow and not path.is_file():
        raise click.ClickException(f"no audit log at {path} (nothing recorded yet?)")
    follower = auditlog.FileFollower(path)
    history = follower.poll()
    for record in history[-lines:] if lines else ([] if lines == 0 else history):
        show(record)
    if not follow:
        follower.close()
        return
    try:
        for record in auditlog.follow(follower, stop=lambda: False):
            show(record)
    finally:
        follower.close()


def _tail_stream(
    url: str,
    since: str | None,
    lines: int | None,
    follow: bool,
    show: Callable[[dict[str, Any]], None],
) -> None:
    client = redis.Redis.from_url(url)
    try:
        start = auditlog.stream_start(parse_since(since) if since else None)
        follower = auditlog.StreamFollower(client, start="$" if lines == 0 else start)
        history = follower.poll()
        for record in history[-lines:] if lines else history:
            show(record)
        while follow:
            for record in follower.poll(block_ms=500):
                show(record)
    except redis.RedisError as exc:
        raise click.ClickException(
            f"cannot read the audit stream at {auditlog.redact(url)}: {exc}"
        ) from None
    finally:
        client.close()


@audit.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def verify(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Check the hash chain; exit 1 naming the first broken record and what is wrong.

    \b
    FILES default to the configured audit log. Give rotated files oldest first, the
    current one last, to check the chain across rotations as well.
    """
    paths = list(files) or [settings_from(ctx).audit_path]
    if not paths[0].is_file():
        raise click.ClickException(f"no audit log at {paths[0]}")
    for report in auditlog.verify_files(paths):
        if report.broken is not None:
            click.secho(f"BROKEN {report.broken}", fg="red", err=False)
            click.echo(
                f"  {report.records} records before it are intact (last intact seq "
                f"{report.last_seq}); see docs/operations.md, 'Verify and rotate the audit log'"
            )
            sys.exit(1)
        click.echo(
            f"OK {report.path}: {report.records} records intact, up to seq {report.last_seq}, "
            f"head {report.last_hash[:16]}"
        )


@audit.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def rotate(ctx: click.Context, file: Path | None) -> None:
    """Move the log aside and start a new file that continues its hash chain.

    Safe while watchers and workers run: they wait on the log's lock and reopen the new
    file. A damaged log is rotated too; the new file's first record names the damage.
    """
    path = file or settings_from(ctx).audit_path
    if not path.is_file():
        raise click.ClickException(f"no audit log at {path}")
    archived = auditlog.rotate(path)
    click.echo(f"rotated {path} to {archived}")
    click.echo(f"verify both with: monkeytown-deploy audit verify {archived} {path}")
