"""Branch mode (`prov up NAME --clone` or `--branch BRANCH`): the agent works
in a clone of its own, never in the host's tree.

The host repository's `.git` is mounted read-only (at ORIGIN inside); the
environment's project path, the same absolute path as on the host (NTM's
panes cd there), is a volume of its own holding a clone of it, on its own
branch. The host gets a git remote `prov-NAME` through the alias, so the user
brings the agent's work home with `git fetch prov-NAME`, which carries
commits and refs, never hooks or config. Several environments on one project,
each on its own branch, never step on each other's working tree.

The host's `.git/config` is edited in place (the one remote block prov adds,
byte for byte otherwise; a symlink stays a symlink, owner and mode stay),
not through `git remote add`, which as root would leave the file root's.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from provisioner.errors import ConfigError, UsageError
from provisioner.fsutil import edit_in_place, read_owned

ORIGIN = "/opt/prov/origin.git"
_BRANCH_RE = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)[A-Za-z0-9._/-]{1,200}(?<![./])$")


def default_branch(name: str) -> str:
    return f"prov/{name}"


def validate_branch(branch: str) -> str:
    if not _BRANCH_RE.match(branch) or branch.endswith(".lock") or "/." in branch:
        raise UsageError(
            f"Invalid --branch {branch!r}",
            "It takes a git branch name such as feature/login or prov/myproject.",
            "pick a name git accepts (`git check-ref-format --branch NAME` says).",
        )
    return branch


def _git(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A read-only git call on the host's repository (any owner: prov may be root)."""
    return subprocess.run(
        ["git", "-c", "safe.directory=*", "-C", str(project), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def require_repository(project: Path) -> str:
    """The commit the host's repository is on (the clone's branch starts there);
    a ConfigError when the project is not one prov can clone."""
    if not (project / ".git").is_dir():
        why = (
            "its .git is a file (a worktree), whose git dir lies elsewhere"
            if (project / ".git").is_file()
            else "it has no .git directory"
        )
        raise ConfigError(
            f"{project} is not a git repository prov can clone",
            f"Branch mode gives the agent a clone of the project's repository; {why}.",
            "run `git init` and commit there first, use the main worktree's directory, or "
            "leave --clone/--branch out (the agent then works in the tree itself).",
        )
    try:
        head = _git(project, "rev-parse", "--verify", "HEAD^{commit}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(
            "Branch mode needs git on this machine", str(exc), "install git (apt install git)."
        ) from None
    if head.returncode != 0:
        raise ConfigError(
            f"{project} has no commit yet",
            "Branch mode starts the agent's branch at the repository's current commit.",
            "commit something first, or leave --clone/--branch out.",
        )
    return head.stdout.strip()


def clone_script(project: str, branch: str, base: str) -> str:
    """Run as the agent inside: a clone of the host's repository at the project
    path, on `branch` (the host's branch of that name if it has one, else a new
    one at `base`). Does nothing when the clone is there already."""
    p, b = shlex.quote(project), shlex.quote(branch)
    return (
        f"cd {p} && if [ ! -e .git ]; then "
        f"git -c safe.directory='*' clone -q --no-checkout {ORIGIN} . && "
        f"{{ git checkout -q {b} 2>/dev/null || git checkout -q -b {b} {shlex.quote(base)}; }}; "
        "fi && git rev-parse --abbrev-ref HEAD"
    )


def ahead_script(project: str, base: str) -> str:
    """Run inside: how many commits the clone's branch has beyond `base`."""
    return f"git -C {shlex.quote(project)} rev-list --count {shlex.quote(base)}..HEAD"


# --- the host's remote ---------------------------------------------------------


def remote_name(name: str) -> str:
    return f"prov-{name}"


def _block(name: str, project: Path) -> bytes:
    remote = remote_name(name)
    return (
        f'[remote "{remote}"]\n'
        f"\turl = {remote}:{project}\n"
        f"\tfetch = +refs/heads/*:refs/remotes/{remote}/*\n"
    ).encode()


def add_remote(project: Path, name: str) -> str:
    """Add the `prov-NAME` remote to the host's repository, in place; what was
    done ("added", "present"), or a ConfigError when a remote of that name
    points elsewhere (the user's: prov leaves it)."""
    config = project / ".git" / "config"
    remote = remote_name(name)
    current = _git(project, "config", "--get", f"remote.{remote}.url")
    if current.returncode == 0:
        if current.stdout.strip() == f"{remote}:{project}":
            return "present"
        raise ConfigError(
            f"The repository already has a remote {remote!r}",
            f"It points at {current.stdout.strip()}, not at this environment.",
            f"remove or rename it (`git remote rename {remote} OTHER`), then run `prov up` again.",
        )
    data = read_owned(config, "The repository's git config") or b""
    newline = b"" if not data or data.endswith(b"\n") else b"\n"
    edit_in_place(config, data + newline + _block(name, project))
    return "added"


def remove_remote(project: Path, name: str) -> bool:
    """Take the block `add_remote` wrote out again (only that, byte for byte);
    True if it was there. A remote the user changed since is left alone."""
    config = project / ".git" / "config"
    try:
        data = read_owned(config, "The repository's git config")
    except ConfigError:
        return False
    block = _block(name, project)
    if not data or block not in data:
        return False
    at = data.index(block)
    edit_in_place(config, data[:at] + data[at + len(block) :])
    return True
