"""The `meshd` command group itself: version, help, unknown commands."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from meshd import __version__
from meshd.cli import cli


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_the_group() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_console_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "meshd", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert __version__ in out.stdout
