"""The handoff: `--spawn` runs exactly the printed ntm command; a missing ntm is explained."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from tests.integration.conftest import Prov

FAKE_NTM = """#!/bin/sh
# Stands in for NTM (it cannot be installed here): records how it was called.
printf '%s\\n' "$@" > "{record}"
printf '%s\\n' "${{NTM_PROJECTS_BASE:-}}" > "{record}.env"
exit 3
"""


def test_spawn_runs_the_printed_command(prov: Prov, tmp_path: Path) -> None:
    """--spawn execs `ntm spawn SESSION --cc.. --ssh=ALIAS` and exits with ntm's code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv"
    (bin_dir / "ntm").write_text(FAKE_NTM.format(record=record))
    (bin_dir / "ntm").chmod(0o755)
    name = prov.name("spawn")
    project = tmp_path / "elsewhere" / name
    project.mkdir(parents=True)
    os.chown(project, 1234, 1234)
    path = f"{bin_dir}:{os.environ['PATH']}"
    result = prov.run(
        "up",
        name,
        "--project",
        str(project),
        "--cc",
        "1",
        "--gmi",
        "2",
        "--spawn",
        env={"PATH": path},
    )
    assert result.returncode == 3, result.stderr
    printed = result.stdout.strip().splitlines()[-1]
    assert printed == (
        f"NTM_PROJECTS_BASE={project.parent} ntm spawn {name} --cc=1 --cod=1 "
        f"--gmi=2 --ssh=prov-{name}"
    )
    assert record.read_text().split() == shlex.split(printed)[2:]
    assert Path(f"{record}.env").read_text().strip() == str(project.parent)


def test_spawn_without_ntm_is_explained(prov: Prov) -> None:
    """No ntm on PATH: exit 8 with the command to run; the environment stays up."""
    name = prov.name("nontm")
    prov.project(name)
    result = prov.run("up", name, "--spawn")
    assert result.returncode == 8
    assert "ntm is not on PATH" in result.stderr or "Cannot run ntm" in result.stderr
    assert f"ntm spawn {name} --cc=2 --cod=1 --ssh=prov-{name}" in result.stderr
    assert "Traceback" not in result.stderr
    assert prov.run("ssh-test", name).returncode == 0
