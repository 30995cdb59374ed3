"""Small file-system primitives: private dirs, atomic writes, a process lock.

Everything prov writes goes through `atomic_write`, so a crash or Ctrl-C
leaves either the old file or the new one, never half of it, and a file meant
to be private is never visible with looser permissions, not even briefly.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from provisioner.errors import ConfigError


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make sure the leaf is 0700 and ours.

    A directory another user owns is refused, not used: prov's sockets, keys
    and configs in it would be theirs to read or replace (e.g. a ControlPath
    dir in /tmp made by someone else first)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.geteuid():
        from provisioner.errors import ConflictError

        raise ConflictError(
            f"{path} belongs to another user",
            f"It is owned by UID {st.st_uid}; prov runs as UID {os.geteuid()} and keeps "
            "private files there, which that user could then read or replace.",
            "remove it if it is stale, or point prov elsewhere (PROV_HOME) so it can make its own.",
        )
    if st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def require_own_home() -> None:
    """Refuse to run as root on another user's home (`sudo -E prov ...`): the
    files prov would write there (~/.ssh/config, PROV_HOME) would become
    root-owned, and that user could no longer read them."""
    from provisioner.errors import UsageError

    home = Path.home()
    try:
        owner = home.stat().st_uid
    except OSError:
        return
    if os.geteuid() == 0 and owner != 0:
        raise UsageError(
            f"prov is running as root on the home directory {home} of UID {owner}",
            "It would write root-owned files there (the ssh config prov edits, PROV_HOME), "
            "which that user could no longer read or change.",
            "run prov as that user, without sudo (add the user to the `docker` group: "
            "`sudo usermod -aG docker USER`, then log in again), or run it as root with "
            "root's own HOME (`sudo -H prov ...`).",
        )


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Replace `path` with `data` in one rename; the file has `mode` from birth."""
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` for the duration of the block.

    Concurrent `prov` processes serialise their edits of shared files (ssh
    config, known_hosts) and their port choice through this lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_user_file(path: Path, what: str, limit: int = 1 << 20) -> str:
    """A small text file the user pointed prov at (--env-file, --key, --ca-cert):
    a regular file, at most `limit` bytes, UTF-8. Anything else is a ConfigError
    naming `what`, never a hang on /dev/zero or a decoding traceback."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(
            f"Cannot read {what} {path}", exc.strerror or str(exc), "check the path."
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(
            f"{what} {path} is not a regular file",
            "prov reads only plain files there (not devices, pipes or directories).",
            "pass a file.",
        )
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise ConfigError(f"Cannot read {what} {path}", str(exc), "check the file.") from None
    if len(data) > limit:
        raise ConfigError(
            f"{what} {path} is larger than {limit // 1024} KiB",
            "A file of that kind is small; this does not look like one.",
            "check the path.",
        )
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text",
            f"Byte {exc.start} is 0x{data[exc.start]:02x}.",
            "save it as UTF-8.",
        ) from None
