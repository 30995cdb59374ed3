"""The entry point's last-resort handling, run as a user runs prov (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from provisioner.entry import _command, _take_debug_flag

BOOM = """
import sys
from provisioner import lifecycle
def boom(*args, **kwargs):
    raise TypeError("something inside went wrong")
lifecycle.list_envs = boom
sys.argv = ["prov", *sys.argv[1:]]
from provisioner.entry import main
main()
"""


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BOOM, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PROV_HOME": str(tmp_path / "ph"), "HOME": str(tmp_path), **env},
        check=False,
        timeout=60,
    )


def test_internal_error_is_one_paragraph_and_exit_70(tmp_path: Path) -> None:
    result = _run(tmp_path, "ls")
    assert result.returncode == 70
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "internal error while running `prov ls`" in result.stderr
    assert "TypeError: something inside went wrong" in result.stderr
    assert "--debug" in result.stderr


def test_debug_flag_or_variable_shows_the_traceback(tmp_path: Path) -> None:
    for result in (_run(tmp_path, "ls", "--debug"), _run(tmp_path, "ls", PROV_DEBUG="1")):
        assert result.returncode == 70
        assert "Traceback" in result.stderr and "in boom" in result.stderr


def test_debug_flag_taken_only_before_double_dash() -> None:
    assert _take_debug_flag(["--debug", "ls"]) == (["ls"], True)
    assert _take_debug_flag(["exec", "x", "--", "cmd", "--debug"]) == (
        ["exec", "x", "--", "cmd", "--debug"],
        False,
    )
    assert _take_debug_flag(["ls"]) == (["ls"], False)


def test_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`prov --help | head -0`: the reader is gone; no traceback, a non-zero exit."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "provisioner", "--help"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=60,
        )
    finally:
        os.close(write)
    assert result.returncode != 0
    assert result.stderr == ""


def test_only_the_subcommand_is_named() -> None:
    """Arguments may hold secrets (`-e TOKEN=...`): the paragraph names the subcommand only."""
    assert _command(["-v", "up", "-e", "TOKEN=hunter2", "x"]) == "prov up"
    assert _command([]) == "prov"


def test_ctrl_c_during_start_up_imports(tmp_path: Path) -> None:
    """A KeyboardInterrupt while the CLI's modules load (here: typer's import raises
    it, as Ctrl-C at that moment would) is a quiet exit 130, not a traceback."""
    fake = tmp_path / "typer"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise KeyboardInterrupt\n")
    result = subprocess.run(
        [sys.executable, "-m", "provisioner", "ls"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        check=False,
        timeout=60,
    )
    assert result.returncode == 130
    assert "Traceback" not in result.stderr and "interrupted" in result.stderr
