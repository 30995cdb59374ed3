"""Which host paths may be mounted into an environment, and where.

The agent inside is untrusted and has a shell: whatever is mounted is its to
read and, unless read-only, to change. A mount of `/`, of the user's home, of
a system directory, of ~/.ssh or of the Docker socket hands it the host; a
mount of PROV_HOME hands it every environment's keys. So sources are checked
after resolving symlinks (a link named `project` may point at /etc), and
targets after normalising `..`, since a target over /etc or /home/agent would
put the files prov writes inside the container (host key, session secrets)
into a host directory.
"""

from __future__ import annotations

import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from provisioner.errors import UsageError

# The system: never a mount source (nor anything inside or above it), never
# covered by a mount target.
SYSTEM = (
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/var/run",
)
# Host directories an agent must not get, nor anything inside or above them.
SYSTEM_DIRS = (*SYSTEM, "/var/lib/docker", "/var/lib/containerd", "/var/log")
# Directories refused as themselves or anything above them (what lies inside,
# such as a project under /home/alice or /tmp, is fine): they hold other
# users' homes, sockets (ssh-agent's in /tmp) or the whole system's state.
SHARED_DIRS = ("/home", "/root", "/tmp", "/var", "/var/tmp", "/mnt", "/media", "/opt", "/srv")
# Below the user's home: where keys and cloud logins live.
SECRET_DIRS = (".ssh", ".gnupg", ".aws", ".docker", ".kube", ".config/gcloud")

# Container paths a mount may not cover: the system, and what prov puts there
# (the keys mount and copies, the session env, sshd's config, the agent's home).
PROTECTED_TARGETS = SYSTEM
PROV_TARGETS = ("/etc/prov", "/etc/ssh", "/home/agent", "/usr/local/bin", "/usr/local/sbin")

OVERRIDE = "--allow-unsafe-mount"


@dataclass(frozen=True)
class HostContext:
    home: Path  # the user's home, resolved
    prov_home: Path  # PROV_HOME, resolved


def _related(path: PurePosixPath, other: PurePosixPath) -> bool:
    """`path` is `other`, inside it, or contains it."""
    return path == other or path.is_relative_to(other) or other.is_relative_to(path)


def _resolve(path: Path, what: str) -> Path:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise UsageError(
            f"{what} {path} cannot be resolved",
            f"{exc}.",
            "check that the path exists and that no symlink in it loops.",
        ) from None


def source_problem(resolved: Path, ctx: HostContext) -> tuple[str, bool] | None:
    """Why mounting `resolved` (a symlink-free path) is unsafe, and whether
    --allow-unsafe-mount may override it; None if it is fine."""
    path = PurePosixPath(resolved)
    prov_home = PurePosixPath(ctx.prov_home)
    if _related(path, prov_home):
        return (
            f"it is, contains or lies inside prov's own directory {prov_home} (PROV_HOME), "
            "which holds every environment's private keys",
            False,
        )
    if path == PurePosixPath("/"):
        return "it is the root of this machine's file system", True
    home = PurePosixPath(ctx.home)
    if path == home or home.is_relative_to(path):
        return f"it is or contains your home directory {home}", True
    for rel in SECRET_DIRS:
        secret = home / rel
        if _related(path, secret):
            return f"it is, contains or lies inside {secret}, where keys and logins live", True
    for shared in SHARED_DIRS:
        if PurePosixPath(shared).is_relative_to(path):
            return f"it is or contains {shared}, which holds more than one project", True
    for system in SYSTEM_DIRS:
        if _related(path, PurePosixPath(system)):
            return f"it is, contains or lies inside the system directory {system}", True
    try:
        mode = resolved.stat().st_mode
    except OSError:
        mode = 0
    if stat.S_ISSOCK(mode):
        return "it is a socket (a Docker socket gives whoever holds it this machine)", True
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "it is a device file", True
    return None


def check_source(path: Path, what: str, ctx: HostContext, allow_unsafe: bool) -> str | None:
    """Refuse an unsafe mount source (exit 2); with `allow_unsafe`, return a
    warning instead where the rule may be overridden."""
    resolved = _resolve(path, what)
    found = source_problem(resolved, ctx)
    if found is None:
        return None
    reason, overridable = found
    shown = str(path) if resolved == path else f"{path} (which resolves to {resolved})"
    if overridable and allow_unsafe:
        return f"{what} {shown} is mounted although {reason} ({OVERRIDE}): the agent can read " + (
            "it" if "socket" in reason else "and change everything there"
        )
    hint = (
        "PROV_HOME is never mounted: move the project out of it, or set PROV_HOME elsewhere."
        if not overridable
        else f"mount a project directory instead; if you accept the risk, add {OVERRIDE}."
    )
    raise UsageError(
        f"Refusing to mount {what} {shown}",
        f"An agent inside the environment gets what is mounted, and {reason}.",
        hint,
    )


def check_target(target: str, what: str) -> str:
    """The normalised container path, or exit 2 if it covers the system or prov's paths."""
    if not target.startswith("/"):
        raise UsageError(f"Invalid target for {what}: {target!r}", "It must be absolute.", "")
    normal = posixpath.normpath(target)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    path = PurePosixPath(normal)
    covered = [p for p in PROTECTED_TARGETS if path.is_relative_to(p)]
    hidden = [p for p in PROV_TARGETS if PurePosixPath(p).is_relative_to(path)]
    if path == PurePosixPath("/") or covered or hidden:
        why = (
            f"it lies inside the container's {covered[0]}"
            if covered
            else f"it would cover {hidden[0] if hidden else '/'}, where prov keeps what the "
            "environment runs on"
        )
        raise UsageError(
            f"Refusing to mount {what} at {target}",
            f"{why.capitalize()}: the files prov writes there (host key, session "
            "environment, sshd's settings) would land in a host directory, or replace the "
            "system the agent runs in.",
            "mount it elsewhere, e.g. under /data or /mnt.",
        )
    return normal
