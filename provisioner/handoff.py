"""The handoff to NTM: run `ntm spawn ... --ssh=prov-NAME`."""

from __future__ import annotations

import os
import shutil
import subprocess

from provisioner.errors import HandoffError


def spawn(argv: tuple[str, ...], env: dict[str, str], display: str) -> int:
    """Run NTM in the foreground (it attaches to tmux); return its exit code."""
    if shutil.which(argv[0]) is None:
        raise HandoffError(
            "Cannot run ntm: it is not on PATH",
            "The environment is up and ready; only the handoff is missing.",
            f"install NTM (Named Tmux Manager) and run:  {display}",
        )
    return subprocess.run(list(argv), env={**os.environ, **env}, check=False).returncode
