"""The devcontainers CLI (`devcontainer build`), for a devcontainer.json with
features: they are OCI artifacts (or local folders) that the CLI resolves,
orders and builds into the image, recording what they ask for in the image's
`devcontainer.metadata` label. prov reads that label; it does not reimplement
features. The CLI talks to the same engine as prov's builds (DOCKER_HOST)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from provisioner.errors import BuildError

INSTALL_HINT = "npm install -g @devcontainers/cli"
LOG_TAIL = 40


def find() -> str | None:
    """The `devcontainer` program: PROV_DEVCONTAINER_CLI, else on PATH, else
    beside prov's own Python (a venv that scripts/setup.sh installed it in)."""
    asked = os.environ.get("PROV_DEVCONTAINER_CLI")
    if asked:
        return asked if Path(asked).is_file() else None
    found = shutil.which("devcontainer")
    if found:
        return found
    beside = Path(sys.executable).parent / "devcontainer"
    return str(beside) if beside.is_file() else None


def build(
    program: str,
    project: Path,
    config: Path,
    tag: str,
    docker_host: str,
    on_line: Callable[[str], None],
) -> None:
    """`devcontainer build` of `config` as `tag`, each output line to `on_line`."""
    argv = [
        program,
        "build",
        "--workspace-folder",
        str(project),
        "--config",
        str(config),
        "--image-name",
        tag,
    ]
    env = dict(os.environ)
    if docker_host.startswith(("unix://", "tcp://", "ssh://")):
        env["DOCKER_HOST"] = docker_host
    log: list[str] = []
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise BuildError(
            f"Cannot run the devcontainers CLI {program}",
            f"{exc.strerror}.",
            f"install it ({INSTALL_HINT}) or set PROV_DEVCONTAINER_CLI to its path.",
        ) from None
    assert proc.stdout is not None  # noqa: S101 - piped above
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            log.append(line)
            on_line(line)
    code = proc.wait()
    if code != 0:
        raise BuildError(
            f"Building the devcontainer image {tag} failed (devcontainer build exited {code})",
            f"For {config}; the CLI's last line: {log[-1] if log else '(none)'}",
            "read the build log below; fix the file or its features and run again, or pass "
            "--no-devcontainer.",
            log_tail="\n".join(log[-LOG_TAIL:]),
        )
