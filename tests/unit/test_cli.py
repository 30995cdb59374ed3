"""The CLI's contract without a daemon: parsing, exit codes, one-paragraph errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest import MonkeyPatch
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


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["up"], "prov up needs an environment name"),
        (["up", "a", "b", "--port", "2200"], "--port applies to one environment, not 2"),
        (["up", "a", "b", "--branch", "x"], "--branch applies to one environment, not 2"),
        (["up", "a", "--devcontainer", "x", "--no-devcontainer"], "opposite things"),
    ],
)
def test_up_flags_that_cannot_go_together_are_refused_before_any_work(
    argv: list[str], says: str, tmp_path: Path, monkeypatch: MonkeyPatch
) -> None:
    """What `up` cannot do as asked is a usage error (exit 2), and nothing is made."""
    monkeypatch.setenv("PROV_HOME", str(tmp_path / "home"))
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and says in result.output
    assert not (tmp_path / "home").exists()


def test_only_the_command_asked_is_built_and_it_still_parses(monkeypatch: MonkeyPatch) -> None:
    """main() registers only the command argv names (after the options before it,
    values included), so typer builds one; with none, a misspelt one or a group,
    the listing and the group stay whole, and the one left parses as before."""
    from provisioner import cli

    def kept(argv: list[str]) -> tuple[list[str], list[str]]:
        monkeypatch.setattr(app, "registered_commands", list(full_commands))
        monkeypatch.setattr(app, "registered_groups", list(full_groups))
        cli._only_the_command_asked(argv)
        names = [
            c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands
        ]
        return names, [str(g.name) for g in app.registered_groups]

    full_commands, full_groups = list(app.registered_commands), list(app.registered_groups)
    assert kept(["--engine", "ssh-test", "up", "x"]) == (["up"], [])
    assert kept(["-v", "--docker-host", "unix:///x", "ssh-test"]) == (["ssh-test"], [])
    assert kept(["engine", "ls"]) == ([], ["engine"])
    for whole in (["--help"], ["nope"], []):
        assert len(kept(whole)[0]) == len(full_commands)
    kept(["up", "no.dots"])
    result = runner.invoke(app, ["up", "no.dots"])
    assert result.exit_code == 2 and "Invalid environment name" in result.output
