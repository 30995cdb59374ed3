"""The handoff to NTM: run `ntm spawn ... --ssh=prov-NAME`."""

from __future__ import annotations

import os
import shutil

from provisioner.errors import HandoffError


def spawn_command(
    argv: tuple[str, ...], env: dict[str, str], display: str
) -> tuple[list[str], dict[str, str]]:
    """NTM's command and environment, for prov to exec (it attaches to tmux in
    the foreground, and its exit code is prov's)."""
    if shutil.which(argv[0]) is None:
        raise HandoffError(
            "Cannot run ntm: it is not on PATH",
            "The environment is up and ready; only the handoff is missing.",
            f"install NTM (Named Tmux Manager) and run:  {display}",
        )
    return list(argv), {**os.environ, **env}
