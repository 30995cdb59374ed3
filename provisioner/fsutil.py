"""Small file-system primitives: private dirs, atomic writes, a process lock.

Everything prov writes goes through `atomic_write`, so a crash or Ctrl-C
leaves either the old file or the new one, never half of it, and a file meant
to be private is never visible with looser permissions, not even briefly.
"""

from __future__ import annotations

import contextlib
import errno
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
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except FileExistsError:
        raise ConfigError(
            f"{path} is a file, where prov needs a directory",
            "prov keeps private files (keys, configs, sockets) in it.",
            "move the file away (for PROV_HOME, or point PROV_HOME elsewhere).",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"Cannot make the directory {path}",
            f"{exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else "")
            + ".",
            "check that every part of the path is a directory you can write.",
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(
            f"{path} is not a directory", "", "move it away, or point prov elsewhere (PROV_HOME)."
        )
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


def write_error(path: Path, exc: OSError) -> ConfigError:
    immutable = exc.errno == errno.EPERM
    return ConfigError(
        f"Cannot write {path}",
        f"{exc.strerror or exc}.",
        "check its permissions"
        + (" and attributes (`lsattr`; `chattr -i` undoes +i)" if immutable else "")
        + ", then run the command again.",
    )


def atomic_write(
    path: Path, data: bytes | str, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> None:
    """Replace `path` with `data` in one rename; the file has `mode` (and `owner`)
    from birth. Failures are ConfigErrors that name the file."""
    if isinstance(data, str):
        data = data.encode(errors="surrogateescape")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        os.fchmod(fd, mode)
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_owned(path: Path, what: str, limit: int = 16 << 20) -> bytes | None:
    """The bytes of a file the user owns and prov edits (~/.ssh/config), or None
    when it does not exist. A directory or unreadable file is a ConfigError."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(
            f"{what} {path} is a directory",
            "prov adds one line to that file.",
            "move the directory away (OpenSSH reads a file there).",
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot read {what} {path}", f"{exc.strerror or exc}.", "") from None
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is larger than {limit >> 20} MiB", "", "check it.")
    return data


def edit_in_place(path: Path, data: bytes) -> None:
    """Write `data` to a file the user owns: through a symlink to its target (the
    link stays), keeping the target's mode and owner; a new file is 0600."""
    target = Path(os.path.realpath(path))
    try:
        st = target.stat()
        mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
    except FileNotFoundError:
        mode, owner = 0o600, None
    except OSError as exc:
        raise write_error(path, exc) from None
    atomic_write(target, data, mode, owner)


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


@contextlib.contextmanager
def held_lock(path: Path, wait: bool = False) -> Iterator[bool]:
    """The exclusive lock on `path` for the block: whether this process holds
    it (without `wait`, False at once when another one does)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_user_bytes(path: Path, what: str, limit: int = 1 << 20) -> bytes:
    """A small file the user pointed prov at (--env-file, --key, --ca-cert): a
    regular file of at most `limit` bytes. Anything else is a ConfigError naming
    `what`, never a hang on /dev/zero."""
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
    return data


def read_user_file(path: Path, what: str, limit: int = 1 << 20) -> str:
    """read_user_bytes, as UTF-8 text (anything else is a ConfigError, not a
    decoding traceback)."""
    data = read_user_bytes(path, what, limit)
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text",
            f"Byte {exc.start} is 0x{data[exc.start]:02x}.",
            "save it as UTF-8.",
        ) from None
