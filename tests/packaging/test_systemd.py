"""The systemd units: systemd's own verifier and security score, and the directives they need."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from monkeytown_deploy.cli import LAZY_COMMANDS, main
from tests.packaging.conftest import EXAMPLE, ROOT

UNITS = ROOT / "systemd"
# The names systemd-analyze is given; a template is checked through one instance of it.
UNIT_NAMES = {
    "monkeytown-deploy-watcher.service": "monkeytown-deploy-watcher.service",
    "monkeytown-deploy-worker@.service": "monkeytown-deploy-worker@1.service",
}
INSTALLED_CLI = "/opt/monkeytown-deploy/bin/monkeytown-deploy"
CONFIG = "/etc/monkeytown-deploy/config.toml"
STATE = "/var/lib/monkeytown-deploy"
MAX_EXPOSURE = 2.0

systemd_analyze = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    systemd_analyze is None,
    reason="systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd)",
)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with every value it is given (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file-system root holding the units, systemd's own units and the installed CLI path.

    verify follows each unit's dependencies (sysinit.target, ...) and checks that ExecStart
    is executable, so an installation is laid out under a private --root.
    """
    root = tmp_path_factory.mktemp("root")
    system = root / "etc" / "systemd" / "system"
    system.mkdir(parents=True)
    for name in UNIT_NAMES:
        shutil.copy(UNITS / name, system / name)
    shutil.copytree(
        "/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True
    )
    cli = root / INSTALLED_CLI.lstrip("/")
    cli.parent.mkdir(parents=True)
    cli.write_text("#!/bin/sh\n")
    cli.chmod(0o755)
    return root


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(unit_root: Path) -> None:
    """`systemd-analyze verify` accepts both units without a single warning."""
    assert systemd_analyze is not None
    result = subprocess.run(
        [systemd_analyze, "verify", f"--root={unit_root}", *UNIT_NAMES.values()],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # unknown keys are only warnings


@needs_systemd_analyze
def test_verify_would_catch_a_broken_unit(unit_root: Path, tmp_path: Path) -> None:
    """The verify check is not vacuous: a misspelt key and kill mode are reported."""
    assert systemd_analyze is not None
    broken = unit_root / "etc" / "systemd" / "system" / "monkeytown-deploy-broken.service"
    text = (UNITS / "monkeytown-deploy-watcher.service").read_text()
    broken.write_text(text.replace("KillMode=control-group", "KillMode=group"))
    try:
        result = subprocess.run(
            [systemd_analyze, "verify", f"--root={unit_root}", broken.name],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        broken.unlink()

    assert "Failed to parse kill mode" in result.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNIT_NAMES.values())
def test_security_exposure_is_at_most_2(unit_root: Path, unit: str) -> None:
    """`systemd-analyze security` rates each unit's exposure at 2.0 or lower ("OK")."""
    assert systemd_analyze is not None
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", f"--root={unit_root}", "--no-pager", unit],
        capture_output=True,
        text=True,
        check=False,
    )

    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_units_carry_the_required_directives(name: str) -> None:
    """Each unit is a notify service with a watchdog, restarts, and kills its whole group."""
    service = parse_unit(UNITS / name)["Service"]

    required = {
        "Type": "notify",
        "Restart": "on-failure",
        "KillMode": "control-group",
        "User": "monkeytown-deploy",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "StateDirectory": "monkeytown-deploy",
    }
    for key, value in required.items():
        assert service[key] == [value], key
    assert int(service["WatchdogSec"][0]) > 0
    assert service["EnvironmentFile"] == ["-/etc/monkeytown-deploy/environment"]
    assert service["ReadWritePaths"] == [STATE]
    assert "@system-service" in service["SystemCallFilter"]
    assert set(service["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("monkeytown-deploy-watcher.service", "watch"),
        ("monkeytown-deploy-worker@.service", "worker"),
    ],
)
def test_units_run_the_cli_with_the_installed_configuration(name: str, command: str) -> None:
    """ExecStart runs the installed CLI with --config before the subcommand; check runs first."""
    service = parse_unit(UNITS / name)["Service"]

    assert service["ExecStart"] == [f"{INSTALLED_CLI} --config {CONFIG} {command}"]
    assert service["ExecStartPre"] == [f"{INSTALLED_CLI} --config {CONFIG} config check"]


@pytest.mark.parametrize("command", ["watch", "worker"])
def test_the_units_subcommands_exist(command: str) -> None:
    """The subcommands the units start are commands of the CLI."""
    assert command in LAZY_COMMANDS
    result = CliRunner().invoke(main, ["--config", str(EXAMPLE / "config.toml"), command, "-h"])

    assert result.exit_code == 0, result.output


def test_sysusers_creates_the_units_user() -> None:
    """The sysusers.d file creates the user the units run as, at home in the state folder."""
    lines = [
        line.split()
        for line in (UNITS / "monkeytown-deploy.sysusers").read_text().splitlines()
        if line and not line.startswith("#")
    ]

    assert [(fields[0], fields[1], fields[-1]) for fields in lines] == [
        ("u", "monkeytown-deploy", STATE)
    ]
