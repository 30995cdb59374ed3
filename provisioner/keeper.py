"""The keeper: the freshest agent login, in every place that holds it.

Each environment has login files of its own under PROV_HOME (see agents.py
for why it cannot share the user's files themselves). A refresh happens
wherever a CLI finds its token expiring: on this machine, or in any
environment. Refresh tokens rotate, so the place that refreshed holds the
only token that still works. The keeper looks at all of them every couple
of seconds and gives the freshest token to the others: the user's own login
file here, and every environment's.

Only the token flows. What moves between files is the login's token keys
(`Login.token_keys`), never anything else of a file the agent wrote; a token
of another account is never carried; a login the user removed here (a
logout) is not made again. Each file is written in place, on its own inode,
which is what a mounted file needs.

One keeper runs per PROV_HOME (a lock says which), started by `prov up` and
the other commands that find it gone (after a reboot, say), and ends once no
environment has a login any more. Until it runs again after a reboot, a
refresh stays where it happened; the keeper then carries the freshest one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from provisioner.agents import AGENTS, Login
from provisioner.config import AGENT_HOME, ProvPaths
from provisioner.fsutil import held_lock

INTERVAL = 2.0
LOG_LIMIT = 1 << 20


def logins_dir(paths: ProvPaths, name: str) -> Path:
    """An environment's own login files (mounted into it)."""
    return paths.env_dir(name) / "logins"


def env_file(paths: ProvPaths, name: str, login: Login) -> Path:
    return logins_dir(paths, name) / login.rel


@dataclass(frozen=True)
class Mounted:
    """A login of an environment's, as mounted into it."""

    source: Path  # the file, or for mount="dir" its directory
    target: str


def _dig(data: object, dotted: str) -> object:
    for key in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def freshness(data: dict[str, object], login: Login) -> float:
    """How fresh a login is: its expiry or refresh time, in seconds (0: unknown)."""
    value = _dig(data, login.fresh)
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float):
        return float(value) / (1000.0 if value > 1e11 else 1.0)  # ms or s
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            text = value.replace("Z", "+00:00")
            if "." in text:  # RFC 3339 allows nanoseconds; Python reads microseconds
                head, _, tail = text.partition(".")
                digits = "".join(c for c in tail if c.isdigit())
                text = f"{head}.{digits[:6]}{tail[len(digits) :]}"
            return datetime.datetime.fromisoformat(text).timestamp()
    return 0.0


def token(data: dict[str, object], login: Login) -> dict[str, object]:
    return {k: data[k] for k in login.token_keys if k in data}


def merged(into: dict[str, object], best: dict[str, object], login: Login) -> dict[str, object]:
    """`into` with `best`'s token: every other key of `into` as it was."""
    kept = {k: v for k, v in into.items() if k not in login.token_keys}
    return {**kept, **token(best, login)}


def _read(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_bytes()[: 1 << 20])
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_in_place(path: Path, data: dict[str, object]) -> None:
    """Rewrite the file on its own inode (mode and owner kept): a mount of it
    inside an environment sees the new content. It is never empty or cut short
    on the way: the new JSON is padded with trailing blanks (which JSON allows)
    to the old length and written in one call, so a CLI that reads the file
    meanwhile finds the old login or the new one, never a logged-out nothing."""
    body = json.dumps(data, indent=2).encode()
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        old = os.fstat(fd).st_size
        os.pwrite(fd, body + b" " * max(0, old - len(body) - 1) + b"\n", 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _own(path: Path, uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.lchown(path, uid, gid)


def prepare_env(paths: ProvPaths, name: str, home: Path, uid: int, gid: int) -> tuple[Mounted, ...]:
    """An environment's login files, made from the user's (token keys only,
    0600, the agent's), or kept when it has them already; what to mount."""
    mounts = []
    for agent in AGENTS:
        login = agent.login
        if login is None:
            continue
        mine = env_file(paths, name, login)
        theirs = _read(home / login.rel)
        if not mine.exists():
            if theirs is None:
                continue  # not logged in here: nothing to carry
            for parent in reversed(mine.relative_to(paths.env_dir(name)).parents):
                folder = paths.env_dir(name) / parent
                if not folder.exists():
                    folder.mkdir(mode=0o700)
                    _own(folder, uid, gid)
            fd = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            _own(mine, uid, gid)
            _write_in_place(mine, token(theirs, login))
        if login.mount == "dir":
            mounts.append(Mounted(mine.parent, f"{AGENT_HOME}/{Path(login.rel).parent}"))
        else:
            mounts.append(Mounted(mine, f"{AGENT_HOME}/{login.rel}"))
    return tuple(mounts)


def dir_mounted(target: str, mounts: tuple[Mounted, ...]) -> Path | None:
    """Where on this machine a file meant for `target` inside goes when its
    directory is one of the logins mounted as a directory (Codex's ~/.codex)."""
    for mount in mounts:
        if mount.source.is_dir() and target.startswith(mount.target + "/"):
            return mount.source / target[len(mount.target) + 1 :]
    return None


# --- carrying the freshest token ---------------------------------------------


@dataclass(frozen=True)
class Place:
    path: Path
    data: dict[str, object]
    is_users: bool


def _places(paths: ProvPaths, home: Path, login: Login) -> list[Place]:
    found = []
    users = _read(home / login.rel)
    if users is not None:
        found.append(Place(home / login.rel, users, True))
    if paths.envs.is_dir():
        for env_dir in sorted(paths.envs.iterdir()):
            path = env_file(paths, env_dir.name, login)
            data = _read(path) if path.is_file() and not path.is_symlink() else None
            if data is not None:
                found.append(Place(path, data, False))
    return found


def sync_once(paths: ProvPaths, home: Path | None = None) -> list[str]:
    """Give the freshest token of each login to every other place that holds
    one of the same account; what was changed, a line each."""
    home = home or Path.home()
    changed = []
    for agent in AGENTS:
        login = agent.login
        if login is None:
            continue
        places = _places(paths, home, login)
        if len(places) < 2:
            continue
        best = max(places, key=lambda p: (freshness(p.data, login), p.is_users))
        account = _dig(best.data, login.account) if login.account else None
        for place in places:
            if place is best or token(place.data, login) == token(best.data, login):
                continue
            if freshness(place.data, login) >= freshness(best.data, login):
                continue  # as fresh, another token: nothing says which is right
            if account is not None and _dig(place.data, login.account) not in (None, account):
                changed.append(f"{agent.name}: not carried to {place.path}: another account")
                continue
            try:
                _write_in_place(place.path, merged(place.data, best.data, login))
            except OSError as exc:
                changed.append(f"{agent.name}: cannot write {place.path}: {exc.strerror}")
                continue
            changed.append(f"{agent.name}: {best.path} -> {place.path}")
    return changed


def _has_logins(paths: ProvPaths) -> bool:
    return paths.envs.is_dir() and any(
        logins_dir(paths, d.name).is_dir() for d in paths.envs.iterdir()
    )


@contextlib.contextmanager
def _held(paths: ProvPaths) -> Iterator[bool]:
    """The keeper's lock, if no other keeper holds it (True) or not (False)."""
    paths.home.mkdir(parents=True, exist_ok=True)
    with held_lock(paths.home / "keeper.lock") as mine:
        yield mine


def running(paths: ProvPaths) -> bool:
    with _held(paths) as free:
        return not free


def ensure_running(paths: ProvPaths) -> bool:
    """Start the keeper in the background unless one runs; True if started."""
    if not _has_logins(paths) or running(paths):
        return False
    log = paths.home / "keeper.log"
    with contextlib.suppress(OSError):
        if log.stat().st_size > LOG_LIMIT:
            log.unlink()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        subprocess.Popen(
            [sys.executable, "-m", "provisioner.keeper", str(paths.home), str(Path.home())],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    return True


def run(paths: ProvPaths, home: Path, interval: float = INTERVAL) -> None:
    """The keeper's loop: until no environment has a login. `home` is the
    user's, whose login files it keeps with the environments'."""
    with _held(paths) as mine:
        if not mine:
            return
        while _has_logins(paths):
            for line in sync_once(paths, home):
                print(time.strftime("%Y-%m-%dT%H:%M:%S"), line, flush=True)
            time.sleep(interval)


if __name__ == "__main__":
    run(ProvPaths(Path(sys.argv[1])), Path(sys.argv[2]))
