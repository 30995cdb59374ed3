"""The CLI's contract without a daemon: parsing, exit codes, one-paragraph errors."""

from __future__ import annotations

from typer.testing import CliRunner

from provisioner.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    """`prov --help` names every command."""
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "ssh-test"):
        assert command in result.output


def test_invalid_name_is_usage_error_without_traceback() -> None:
    """A bad name exits 2 with one 'error:' paragraph and no traceback."""
    result = runner.invoke(app, ["up", "no.dots"])
    assert result.exit_code == 2
    assert result.output.startswith("error: Invalid environment name 'no.dots'.")
    assert "Traceback" not in result.output


def test_bad_port_is_usage_error() -> None:
    """--port 0 is refused before anything touches Docker."""
    result = runner.invoke(app, ["up", "ok", "--port", "0"])
    assert result.exit_code == 2
    assert "Invalid port 0" in result.output
