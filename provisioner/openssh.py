"""Calls of the system OpenSSH client through prov's aliases (no paramiko here)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path


class AliasCheck:
    """The system OpenSSH client running `command` through `alias`, in the background.

    Output goes to a temp file, not a pipe: a ControlPersist master forked by
    ssh keeps its inherited descriptors open, and a pipe would never reach EOF.
    """

    def __init__(self, config: Path, alias: str, command: str) -> None:
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        argv = ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [*argv, "--", alias, command],
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=subprocess.STDOUT,
            )
        except FileNotFoundError:
            self._proc = None

    def result(self, timeout: float = 20.0) -> tuple[int, str]:
        if self._proc is None:
            return 127, "the OpenSSH client `ssh` is not installed"
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            return 124, f"ssh did not finish within {timeout:g} s"
        self._out.seek(0)
        return code, self._out.read().decode(errors="replace")

    def __enter__(self) -> AliasCheck:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._out.close()


def system_ssh(config: Path, alias: str, command: str, timeout: float = 20.0) -> tuple[int, str]:
    """Run `command` with the system OpenSSH client through `alias` in `config`."""
    with AliasCheck(config, alias, command) as check:
        return check.result(timeout)


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
