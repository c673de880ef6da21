"""``monkeytown-deploy validate``: lines, JSON, exit codes and the --repo check."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from click.testing import CliRunner

from monkeytown_deploy.cli import main
from tests.triggers.test_parser import VALID
from triggers import parse_trigger

SHA = "abc123def4567890abc123def4567890abc12345"


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_valid_file_prints_ok_and_exits_zero(tmp_path: Path) -> None:
    """A valid trigger prints one OK line with target, status and short SHA."""
    path = _write(tmp_path, "deploy-a.md", VALID)
    result = CliRunner().invoke(main, ["validate", str(path)])

    assert result.exit_code == 0
    assert result.output.strip() == f"OK {path}: production, approved, sha abc123d"


def test_a_folder_means_its_markdown_files_and_any_invalid_one_fails(tmp_path: Path) -> None:
    """A folder validates each *.md; one invalid file makes the exit status 1."""
    _write(tmp_path, "good.md", VALID)
    bad = _write(tmp_path, "deploy-x.md", VALID.replace("Target: production", "Target: prod"))
    _write(tmp_path, "notes.txt", "not a trigger")
    result = CliRunner().invoke(main, ["validate", str(tmp_path)])

    assert result.exit_code == 1
    assert f"OK {tmp_path / 'good.md'}" in result.output
    assert f'{bad}:8: Target must be one of development, staging, production (got "prod")' in (
        result.output
    )
    assert "notes.txt" not in result.output


def test_json_output_lists_errors_warnings_and_the_trigger(tmp_path: Path) -> None:
    """--json gives path, valid, errors with line and rule, warnings and the trigger."""
    good = _write(tmp_path, "good.md", VALID + "\n### Notes\nhello\n")
    bad = _write(tmp_path, "bad.md", VALID.replace("Status: approved", "Status: yes"))
    result = CliRunner().invoke(main, ["validate", "--json", str(good), str(bad)])

    assert result.exit_code == 1
    report = json.loads(result.output)
    assert [entry["valid"] for entry in report] == [True, False]
    assert report[0]["trigger"]["sha"] == SHA
    assert report[0]["warnings"][0]["rule"] == "section.unknown"
    assert report[1]["errors"] == [
        {
            "line": 11,
            "rule": "approval.status",
            "message": 'Status must be one of approved, pending, rejected (got "yes")',
        }
    ]
    assert report[1]["trigger"] is None


def test_usage_errors_exit_two(tmp_path: Path) -> None:
    """A missing path or a folder without triggers is a usage error, exit status 2."""
    runner = CliRunner()
    assert runner.invoke(main, ["validate", str(tmp_path / "nope.md")]).exit_code == 2
    assert runner.invoke(main, ["validate", str(tmp_path)]).exit_code == 2
    assert runner.invoke(main, ["validate"]).exit_code == 2


def test_repo_option_checks_that_the_sha_names_a_commit(git_repo: Path, tmp_path: Path) -> None:
    """--repo accepts a SHA (short or full) of a real commit and rejects an unknown one."""
    (git_repo / "README").write_text("hello\n")
    subprocess.run(["git", "add", "."], cwd=git_repo, check=True)
    subprocess.run(["git", "commit", "-qm", "first"], cwd=git_repo, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=git_repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    known = _write(tmp_path, "known.md", VALID.replace(SHA, head[:10]))
    unknown = _write(tmp_path, "unknown.md", VALID)
    runner = CliRunner()

    assert runner.invoke(main, ["validate", "--repo", str(git_repo), str(known)]).exit_code == 0
    result = runner.invoke(main, ["validate", "--repo", str(git_repo), str(unknown)])
    assert result.exit_code == 1
    assert f"{unknown}:15: SHA {SHA} does not name a commit" in result.output
    assert "[deployment.sha_unknown]" in result.output


def test_the_bundled_example_is_valid() -> None:
    """The example trigger shipped in the package passes validation."""
    example = Path(__file__).parents[2] / "monkeytown_deploy" / "examples"
    assert CliRunner().invoke(main, ["validate", str(example)]).exit_code == 0


def test_the_example_in_the_format_documentation_is_valid() -> None:
    """The complete example agents learn from in docs/triggers.md parses cleanly."""
    docs = (Path(__file__).parents[2] / "docs" / "triggers.md").read_text()
    example = docs.split("```markdown\n", 1)[1].split("```", 1)[0]
    result = parse_trigger(example, "docs/triggers.md")

    assert result.valid, result.error_lines()
    assert result.warnings == ()
