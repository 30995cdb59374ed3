"""The project of an environment on a remote engine, moved with rsync through
its alias (the same path on both sides; the agent owns the copy there).

Pushes and pulls never overwrite a newer file on the receiving side
(`--update`) and delete nothing unless asked: a careless `prov up` or
`prov sync` must not destroy work the agent did, nor work done here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from provisioner.errors import ConfigError, ProvError

TIMEOUT = 3600.0


def rsync_argv(
    ssh_config: Path,
    alias: str,
    project: Path,
    back: bool,
    delete: bool,
    protected: tuple[str, ...] = (),
) -> list[str]:
    """The rsync command for one direction (pure). Bringing the agent's work
    back never brings what the host executes from (git hooks and config, .envrc,
    the tools' settings, `protected`): those stay as they are here."""
    from provisioner.protect import rsync_excludes

    local = str(project).rstrip("/") + "/"
    remote = f"{alias}:{local}"
    source, dest = (remote, local) if back else (local, remote)
    return [
        "rsync",
        "--archive",
        "--update",
        "--numeric-ids",
        "--no-owner",
        "--no-group",
        "--compress",
        *(["--delete"] if delete else []),
        *(rsync_excludes(protected) if back else ()),
        "--rsh",
        f"ssh -F {_quote(ssh_config)} -o BatchMode=yes",
        "--",
        source,
        dest,
    ]


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def push(ssh_config: Path, alias: str, project: Path, delete: bool = False) -> str:
    return _run(rsync_argv(ssh_config, alias, project, back=False, delete=delete), alias, project)


def pull(
    ssh_config: Path,
    alias: str,
    project: Path,
    delete: bool = False,
    protected: tuple[str, ...] = (),
) -> str:
    return _run(
        rsync_argv(ssh_config, alias, project, back=True, delete=delete, protected=protected),
        alias,
        project,
    )


def _run(argv: list[str], alias: str, project: Path) -> str:
    if shutil.which("rsync") is None:
        raise ConfigError(
            "rsync is not installed on this machine",
            f"prov moves the project {project} to and from {alias} with it.",
            "install it (`apt-get install rsync`), or use --sync none.",
        )
    try:
        result = subprocess.run(
            [*argv[:1], "--stats", *argv[1:]],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ProvError(
            f"rsync of {project} did not finish within {TIMEOUT:g} s",
            "",
            "check the connection, then run `prov sync` again.",
        ) from None
    if result.returncode != 0:
        raise ProvError(
            f"rsync of {project} through {alias} failed",
            f"rsync exited {result.returncode}: "
            + (" ".join(result.stderr.split())[-400:] or "no output")
            + ".",
            f"check that `ssh {alias} true` works, then run `prov sync` again.",
        )
    for line in result.stdout.splitlines():
        if line.startswith("Number of regular files transferred"):
            return line.split(":", 1)[1].strip() + " files transferred"
    return "done"
