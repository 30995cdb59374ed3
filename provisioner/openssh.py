"""Calls of the system OpenSSH client through prov's aliases (no paramiko here)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path


def system_ssh(config: Path, alias: str, command: str, timeout: float = 20.0) -> tuple[int, str]:
    """Run `command` with the system OpenSSH client through `alias` in `config`;
    (exit status, output).

    Output goes to a temp file, not a pipe: a ControlPersist master forked by
    ssh keeps its inherited descriptors open, and a pipe would never reach EOF.
    """
    argv = ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    with tempfile.TemporaryFile() as out:
        try:
            code = subprocess.run(
                [*argv, "--", alias, command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            ).returncode
        except FileNotFoundError:
            return 127, "the OpenSSH client `ssh` is not installed"
        except subprocess.TimeoutExpired:
            return 124, f"ssh did not finish within {timeout:g} s"
        out.seek(0)
        return code, out.read().decode(errors="replace")


def stop_master(config: Path, alias: str) -> None:
    """Close a ControlPersist master for `alias`, if one runs (best effort)."""
    subprocess.run(
        ["ssh", "-F", str(config), "-O", "exit", "--", alias],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=10,
        check=False,
    )
