"""What `up` does with an environment that may already exist: keep it, start
it, repair its authorized key, refuse (drift without --recreate), or replace it.

`decide` is pure (a plan, what Docker reported, what the keys dir holds);
service.py carries the decision out against the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from provisioner.engine import ContainerInfo
from provisioner.errors import ConflictError
from provisioner.fsutil import atomic_write, ensure_private_dir
from provisioner.plan import (
    HOST_KEY_FILE,
    LABEL_BIND,
    LABEL_BRANCH,
    LABEL_CREDENTIALS,
    LABEL_EGRESS,
    LABEL_FORWARD_AGENT,
    LABEL_HOME_VOLUME,
    LABEL_IMAGE_HASH,
    LABEL_LIMITS,
    LABEL_MOUNTS,
    LABEL_PORT,
    LABEL_PROJECT,
    LABEL_SECRETS,
    LABEL_SUDO,
    ContainerSpec,
    KeyFile,
    Plan,
)

# What up does with an environment: keep it running, start it, make it, or
# replace it.
Action = Literal["unchanged", "started", "created", "recreated"]

# Labels whose difference means the container is not what was asked.
DRIFT_LABELS = (
    (LABEL_MOUNTS, "mounts"),
    (LABEL_IMAGE_HASH, "image"),
    (LABEL_PORT, "port"),
    (LABEL_BIND, "bind address"),
    (LABEL_PROJECT, "project dir"),
    (LABEL_SUDO, "sudo"),
    (LABEL_LIMITS, "limits"),
    (LABEL_EGRESS, "egress"),
    (LABEL_HOME_VOLUME, "home volume"),
    (LABEL_FORWARD_AGENT, "agent forwarding"),
    (LABEL_CREDENTIALS, "credentials (what of your agents' logins it gets)"),
    (LABEL_BRANCH, "branch mode (the clone's branch; empty: the tree itself)"),
    (LABEL_SECRETS, "secrets (the names and hosts its proxy injects them for)"),
)
HOST_KEY_DRIFT = (
    "host key: the environment's host key was replaced or removed on this machine "
    "since the container started"
)


@dataclass(frozen=True)
class Decision:
    action: Action
    drift: tuple[str, ...] = ()  # why it is recreated
    reauthorize: bool = False  # the keys dir's authorized key must be written again
    keys_to_write: bool = False  # write the keys dir (new container, or repair)
    warnings: tuple[str, ...] = ()  # kept as it is, but not what a new one would be


OLDER_LIMITS = (
    "made before prov bounded memory and CPU by default, it has no such limit "
    "(asked: {want}); `prov up {name} --recreate` applies them (the home and the work "
    "are kept)"
)


def unbounded_before(have: str, want: str) -> bool:
    """A limits label from before prov sized memory and CPU (only `pids=N`),
    with the same pids limit as asked: kept, with a warning, not drift (an
    `up` of an existing environment must keep working)."""
    return "memory=" not in have and have == want.split(",", 1)[0]


def drift(info: ContainerInfo, plan: Plan, keep_older_limits: bool = True) -> list[str]:
    """How the running container differs from the plan, in words.
    `keep_older_limits`: limits from before prov's defaults are no difference
    (see unbounded_before); --recreate counts them, to apply the defaults."""
    want = plan.container.labels
    diffs = []
    for label, what in DRIFT_LABELS:
        have = info.labels.get(label, "")
        if keep_older_limits and label == LABEL_LIMITS and unbounded_before(have, want[label]):
            continue
        if have != want[label]:
            shown = (
                (have[:12], want[label][:12]) if label == LABEL_IMAGE_HASH else (have, want[label])
            )
            diffs.append(f"{what}: running {shown[0]!r}, asked {shown[1]!r}")
    return diffs


def stale_keys(keys_dir: Path, key_files: tuple[KeyFile, ...]) -> set[str]:
    """Key files whose copy on this machine (what the container mounts) is not
    what the plan holds: removed, emptied, or made for another key."""
    stale = set()
    for key_file in key_files:
        try:
            if (keys_dir / key_file.name).read_bytes() != key_file.content:
                stale.add(key_file.name)
        except OSError:
            stale.add(key_file.name)
    return stale


def write_keys(c: ContainerSpec) -> None:
    ensure_private_dir(c.keys_dir)
    for key_file in c.key_files:
        atomic_write(c.keys_dir / key_file.name, key_file.content, key_file.mode)


def decide(existing: ContainerInfo | None, plan: Plan, stale: set[str], recreate: bool) -> Decision:
    """The action for `up`; a ConflictError when the container differs from
    the plan and --recreate was not given."""
    if existing is None:
        return Decision("created", keys_to_write=True)
    diffs = drift(existing, plan, keep_older_limits=not recreate)
    if HOST_KEY_FILE in stale:
        diffs.append(HOST_KEY_DRIFT)
    if not diffs:
        action: Action = "unchanged" if existing.running else "started"
        warnings: tuple[str, ...] = ()
        if unbounded_before(
            existing.labels.get(LABEL_LIMITS, ""), plan.container.labels[LABEL_LIMITS]
        ):
            warnings = (OLDER_LIMITS.format(want=plan.limits, name=plan.env_name),)
        return Decision(
            action, reauthorize=bool(stale), keys_to_write=bool(stale), warnings=warnings
        )
    if not recreate:
        raise ConflictError(
            f"Environment {plan.env_name!r} exists but differs from what was asked",
            "Differences: " + "; ".join(diffs) + ".",
            "run `prov up` with --recreate to replace the container (keys and host key "
            "are kept), or repeat the original options.",
        )
    return Decision("recreated", drift=tuple(diffs), keys_to_write=True)
