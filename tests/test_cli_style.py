"""One error style and plain flags across the command line: `vlmclf --version`, usage errors as
one `error:` line with exit status 2, boolean flags shown without a value placeholder."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

import vlmclf
from vlmclf.cli import app


def test_version_prints_the_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"vlmclf {vlmclf.__version__}\n"


@pytest.mark.parametrize(("args", "message"), [
    (["eval", "--model", "random:clip", "--method", "clip", "--dataset", "x.jsonl",
      "--batch-size", "0"], "error: Invalid value for '--batch-size': must be >= 1, got 0"),
    (["eval", "--modell", "x"], "error: No such option: --modell"),
    (["eval"], "error: Missing option '--model'."),
    (["nosuch"], "error: No such command 'nosuch'."),
    (["results", "--format", "xml"], "error: Invalid value for '--format'"),
])  # fmt: skip
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert "--help`)" in lines[0] and "╭" not in result.output


def test_bare_vlmclf_still_shows_the_help():
    done = subprocess.run([sys.executable, "-m", "vlmclf"], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert "Usage: " in done.stdout + done.stderr and "eval" in done.stdout + done.stderr




def test_no_flag_of_any_command_shows_a_bool_placeholder():
    root = typer.main.get_command(app)
    paths = [["--help"]] + [[*path, "--help"] for path in command_paths(root)]
    for path in paths:
        result = CliRunner().invoke(app, path, terminal_width=200)
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, path
    assert len(paths) > 15


def command_paths(group, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    paths = []
    for name, command in group.commands.items():
        paths.append([*prefix, name])
        if hasattr(command, "commands"):
            paths.extend(command_paths(command, (*prefix, name)))
    return paths
