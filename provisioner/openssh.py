"""Calls of the system OpenSSH client through prov's aliases (no paramiko here)."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path


def run_captured(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run an ssh command line; (exit status, stdout and stderr), 124 when it
    did not finish within `timeout`. FileNotFoundError when there is no ssh.

    Output goes to a temp file, not a pipe: a ControlPersist master forked by
    ssh keeps its inherited descriptors open, and a pipe would never reach EOF.
    """
    with tempfile.TemporaryFile() as out:
        try:
            code = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            return 124, f"ssh did not finish within {timeout:g} s"
        out.seek(0)
        return code, out.read().decode(errors="replace")


def alias_argv(config: Path, alias: str, command: str) -> list[str]:
    """The system ssh running `command` through `alias` in `config`, never asking."""
    return [
        "ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
        "--", alias, command,
    ]  # fmt: skip


def system_ssh(config: Path, alias: str, command: str, timeout: float = 20.0) -> tuple[int, str]:
    """Run `command` with the system OpenSSH client through `alias` in `config`;
    (exit status, output)."""
    try:
        return run_captured(alias_argv(config, alias, command), timeout)
    except FileNotFoundError:
        return 127, "the OpenSSH client `ssh` is not installed"


def _control(config: Path, alias: str, operation: str) -> None:
    """`ssh -O OPERATION` to `alias`'s master, if one runs (best effort: no ssh
    on PATH, or one that hangs, means there is nothing to control)."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(
            ["ssh", "-F", str(config), "-O", operation, "--", alias],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )


def stop_master(config: Path, alias: str) -> None:
    """Close a ControlPersist master for `alias` and the sessions it carries."""
    _control(config, alias, "exit")


def stop_multiplexing(config: Path, alias: str) -> None:
    """Ask a running master to take no new sessions (`-O stop`): the sessions it
    carries go on, and the next ssh logs in afresh (a new PAM session, so new
    session variables)."""
    _control(config, alias, "stop")


def alias_problem(alias: str, host: str, port: int) -> str | None:
    """Why plain `ssh ALIAS` (no -F, as NTM and the user run it) would not reach
    `host`:`port`, or None when it does. OpenSSH finds ~/.ssh/config through
    the passwd entry, not $HOME, so a prov run with another HOME writes an
    Include that ssh never reads."""
    import os
    import pwd

    try:
        result = subprocess.run(
            ["ssh", "-G", "--", alias],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ssh -G {alias}` could not run ({exc})"
    seen = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    if seen.get("hostname") == host and seen.get("port") == str(port):
        return None
    passwd_home = pwd.getpwuid(os.geteuid()).pw_dir
    home = str(Path.home())
    why = (
        f"ssh reads {passwd_home}/.ssh/config (the home in your passwd entry), while prov "
        f"wrote the Include into {home}/.ssh/config (HOME)"
        if os.path.realpath(passwd_home) != os.path.realpath(home)
        else f"~/.ssh/config does not include prov's ssh config, or another Host block "
        f"for {alias} comes first"
    )
    return (
        f"plain `ssh {alias}` resolves to {seen.get('hostname', '?')}:{seen.get('port', '?')}, "
        f"not {host}:{port}: {why}"
    )
