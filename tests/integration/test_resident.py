"""The resident: a later `prov` run is served by a warm prov, and is the same run.

Each test has a resident of its own, in a run dir of its own
(XDG_RUNTIME_DIR), removed at the end.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Prov

SERVED = re.compile(r"served by prov's resident \(pid (\d+),")


def _doctor_pid(prov: Prov, env: dict[str, str]) -> int | None:
    found = SERVED.search(prov.run("doctor", env=env).stdout)
    return int(found.group(1)) if found else None


@pytest.fixture
def served(prov: Prov, tmp_path: Path) -> Iterator[tuple[dict[str, str], int]]:
    """The env that reaches a started resident, and the resident's pid."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(run), "PROV_RESIDENT_IDLE": "300"}
    try:
        assert _doctor_pid(prov, env) is None  # the first run has its own process
        deadline = time.monotonic() + 60
        pid = None
        while pid is None and time.monotonic() < deadline:
            time.sleep(0.3)
            pid = _doctor_pid(prov, env)
        assert pid is not None, "no resident served a run within 60 s"
        assert f"provisioner.resident {run}/" in Path(f"/proc/{pid}/cmdline").read_text(
            errors="replace"
        ).replace("\0", " ")
        yield env, pid
    finally:
        subprocess.run(["pkill", "-f", f"provisioner.resident {run}/"], check=False)


def _children(pid: int) -> list[str]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return found.stdout.split()


# What the live environments' listing may change between two runs a moment
# apart (uptime crossing a minute, memory in use, a home being written).
_LIVE = ("status", "memory", "home_disk", "disk")


def _steady(stdout: str) -> str:
    """`ls --json`'s output without its live fields; any other output as it is."""
    try:
        listed = json.loads(stdout)
    except ValueError:
        return stdout
    if not isinstance(listed, list):
        return stdout
    return json.dumps([{k: v for k, v in e.items() if k not in _LIVE} for e in listed])


def test_a_served_run_answers_as_a_run_of_its_own(
    prov: Prov, served: tuple[dict[str, str], int]
) -> None:
    """Output, errors and exit codes are the same, served or not."""
    env, _ = served
    alone = {**env, "PROV_RESIDENT": "0"}
    for args in (
        ("ls", "--json"),
        ("status", "nosuch"),
        ("nosuch",),
        ("up", "bad name!"),
        ("up", "--help"),
    ):
        there, here = prov.run(*args, env=env), prov.run(*args, env=alone)
        assert (there.returncode, _steady(there.stdout), there.stderr) == (
            here.returncode,
            _steady(here.stdout),
            here.stderr,
        ), args
    assert prov.run("nosuch", env=env).returncode == 2


def test_a_served_run_has_the_terminal_the_signals_and_hands_over(
    prov: Prov, served: tuple[dict[str, str], int]
) -> None:
    env, pid = served
    name = prov.name("resident")
    prov.project(name)
    prov.up(name, "--project", str(prov.project(name)))
    try:
        # Handed over: the client itself becomes ssh, with its exit code.
        trip = prov.run("ssh", name, "--", "echo over; exit 3", env=env)
        assert (trip.returncode, trip.stdout.strip()) == (3, "over"), trip.stderr

        # A terminal: rm's confirmation is asked on it, and the answer is read from it.
        child, fd = pty.fork()
        if child == 0:
            os.execve(  # noqa: S606 - the test is the terminal's user
                sys.executable,
                [sys.executable, "-m", "provisioner", "rm", name],
                {**prov.env, **env},
            )
        seen = b""
        deadline = time.monotonic() + 30
        while b"Remove" not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                seen += os.read(fd, 4096)
        os.write(fd, b"n\n")
        _, status = os.waitpid(child, 0)
        os.close(fd)
        assert b"Remove " in seen, seen
        assert os.waitstatus_to_exitcode(status) != 0
        names = [e["name"] for e in json.loads(prov.run("ls", "--json", env=env).stdout)]
        assert name in names  # "n" was read: nothing was removed

        # Ctrl-C on the client ends the served run as it ends a run of its own.
        codes = []
        for extra in ({}, {"PROV_RESIDENT": "0"}):
            follow = subprocess.Popen(
                [sys.executable, "-m", "provisioner", "logs", "-f", name],
                env={**prov.env, **env, **extra},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(2)
            follow.send_signal(signal.SIGINT)
            codes.append(follow.wait(timeout=30))
        assert codes[0] == codes[1]
        deadline = time.monotonic() + 10
        while _children(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _children(pid) == []
    finally:
        prov.run("rm", "--yes", name)


def test_another_user_cannot_reach_it_and_a_shared_dir_is_not_used(
    prov: Prov, served: tuple[dict[str, str], int]
) -> None:
    """As another user on the host would try: connect to the socket itself."""
    env, _ = served
    folder = Path(env["XDG_RUNTIME_DIR"]) / f"prov-{os.getuid()}"
    (sock,) = folder.glob("*.sock")
    Path(env["XDG_RUNTIME_DIR"]).chmod(0o755)
    attempt = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
            str(sock),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert attempt.returncode != 0
    assert "PermissionError" in attempt.stderr, attempt.stderr
    # A run dir others may enter is never used: the run has its own process.
    folder.chmod(0o755)
    try:
        assert _doctor_pid(prov, env) is None
    finally:
        folder.chmod(0o700)
    assert _doctor_pid(prov, env) is not None


def test_it_leaves_when_idle(prov: Prov, tmp_path: Path) -> None:
    run = tmp_path / "idle"
    run.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(run), "PROV_RESIDENT_IDLE": "1"}
    try:
        prov.run("ls", env=env)
        folder = run / f"prov-{os.getuid()}"
        deadline = time.monotonic() + 60
        while not list(folder.glob("*.sock")) and time.monotonic() < deadline:
            time.sleep(0.2)
        (sock,) = folder.glob("*.sock")
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(sock))  # listening
        probe.close()
        deadline = time.monotonic() + 30
        while sock.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not sock.exists()
        gone = subprocess.run(
            ["pgrep", "-f", f"provisioner.resident {run}/"], capture_output=True, check=False
        )
        assert gone.returncode == 1  # no such process
    finally:
        subprocess.run(["pkill", "-f", f"provisioner.resident {run}/"], check=False)
