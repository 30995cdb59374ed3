"""devcontainer.json's lifecycle commands, run inside as the agent.

Through the environment's alias (so with the session's variables, the
file's containerEnv and remoteEnv among them), in the project dir: the
create phases (onCreateCommand, updateContentCommand, postCreateCommand) once
per container, postStartCommand at each start. The commands of one phase
given as an object run in parallel, as the spec says. Each output line goes
to the reporter as it comes; a failure is raised with its exit code.

Whether the create phases have run is a root-only marker inside the
container (the agent cannot fake or remove it), written after they succeed:
a failed one runs again at the next `up`.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from provisioner import openssh
from provisioner.devcontainer import Command, DevContainer
from provisioner.engine import Engine
from provisioner.errors import CommandFailed
from provisioner.progress import Reporter

CREATED_MARKER = "/etc/prov/devcontainer-created"
COMMAND_TIMEOUT = 3600.0


def _script(project: str, command: Command) -> str:
    return f"cd {shlex.quote(project)} && exec {shlex.join(command.argv)}"


def _run_one(
    config: Path, alias: str, project: str, command: Command, on_line: Callable[[str], None]
) -> tuple[int, list[str]]:
    """Run one command, passing each output line on while it runs (read from a
    temp file: a pipe would be held open by an ssh master it forked)."""
    argv = openssh.alias_argv(config, alias, _script(project, command))
    prefix = f"[{command.label}] " if command.label else ""
    lines: list[str] = []
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        pending = b""
        position = 0
        deadline = time.monotonic() + COMMAND_TIMEOUT

        def drain() -> None:
            nonlocal pending, position
            out.seek(position)
            chunk = out.read()
            position += len(chunk)
            pending += chunk
            *whole, pending = pending.split(b"\n")
            for raw in whole:
                text = raw.decode(errors="replace").rstrip("\r")
                lines.append(text)
                on_line(prefix + text)

        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                lines.append(f"(stopped after {COMMAND_TIMEOUT:g} s)")
                return 124, lines
            drain()
            time.sleep(0.1)
        drain()
        if pending:
            text = pending.decode(errors="replace")
            lines.append(text)
            on_line(prefix + text)
        return proc.returncode, lines


def run_phase(
    config: Path,
    alias: str,
    project: str,
    commands: tuple[Command, ...],
    on_line: Callable[[str], None],
) -> None:
    """Run one phase's commands (in parallel when there are several); raise
    CommandFailed naming the first that failed and its exit code."""
    results: dict[int, tuple[int, list[str]]] = {}
    lock = threading.Lock()

    def locked(line: str) -> None:
        with lock:
            on_line(line)

    def work(index: int, command: Command) -> None:
        results[index] = _run_one(config, alias, project, command, locked)

    threads = [
        threading.Thread(target=work, args=(i, c), daemon=True) for i, c in enumerate(commands)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, command in enumerate(commands):
        code, lines = results.get(index, (255, ["(did not run)"]))
        if code != 0:
            tail = " | ".join(line for line in lines[-5:] if line.strip())
            raise CommandFailed(
                f"devcontainer.json's {command.shown()} failed with exit code {code}",
                f"Run as the agent in {project}; its last output: {tail or '(none)'}.",
                "fix the command (or what it needs) and run `prov up` again: the environment "
                "is running and the create commands run again until they succeed; `prov ssh` "
                "to look inside.",
            )


def run_in(
    engine: Engine,
    container_id: str,
    dc: DevContainer,
    config: Path,
    alias: str,
    project: str,
    new: bool,
    started: bool,
    reporter: Reporter,
) -> None:
    """The create phases, unless this container's marker says they succeeded
    (a `new` container has none), then postStartCommand when it `started`
    now or the create phases ran. The marker is written as soon as the create
    phases succeed, so a failing postStartCommand does not run them again."""
    if not dc.create_commands and not dc.start_commands:
        return
    created = bool(dc.create_commands) and (
        new or engine.read_file(container_id, CREATED_MARKER) is None
    )
    steps: list[tuple[tuple[Command, ...], bool]] = []
    if created:
        last = len(dc.create_commands) - 1
        steps += [(group, i == last) for i, group in enumerate(dc.create_commands)]
    if started or created:
        steps += [(group, False) for group in dc.start_commands]
    for group, last_create in steps:
        reporter.step(f"{group[0].phase} (devcontainer.json, as the agent)")
        run_phase(config, alias, project, group, lambda line: reporter.note("| " + line))
        if last_create:
            engine.inject_files(container_id, [(CREATED_MARKER, 0o600, dc.digest.encode())])
