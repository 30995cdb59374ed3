"""A root-owned project made writable for the agent without giving it root.

prov running as root with a project owned by root: the agent runs as an
unprivileged UID, which cannot write there. prov grants that UID access with
POSIX ACLs (`setfacl`: an entry on every file and directory, and a default
entry on each directory so new files inherit it), says so at `up`, and takes
the entries away again at `rm`, handing the files the agent made to the
project's owner. Nothing else on the host changes: modes, owners and other
ACL entries stay as they were. Symbolic links are never followed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from provisioner.errors import ConfigError
from provisioner.fsutil import atomic_write


def _setfacl() -> str:
    tool = shutil.which("setfacl")
    if tool is None:
        raise ConfigError(
            "Cannot give the agent access to the root-owned project: `setfacl` is not installed",
            "prov runs the agent as an unprivileged user, which cannot write a directory "
            "owned by root; it grants that user access with a POSIX ACL, which needs the "
            "acl tools.",
            "install them (`apt-get install acl`), or give the project to a regular user "
            "(`chown -R USER: DIR`) and run `prov up` again.",
        )
    return tool


def _run(argv: list[str], path: Path, what: str) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        result = subprocess.CompletedProcess(argv, 1, "", str(exc))
    if result.returncode != 0:
        said = " ".join(result.stderr.split())[-300:] or f"exit {result.returncode}"
        unsupported = "not supported" in said.lower()
        raise ConfigError(
            f"Cannot {what} {path}",
            f"setfacl said: {said}."
            + (" Its file system does not support POSIX ACLs." if unsupported else ""),
            "give the project to a regular user (`chown -R USER: DIR`) and run `prov up` "
            "again, or put it on a file system with ACLs (ext4, xfs, btrfs, tmpfs).",
        )


def _dump(path: Path) -> list[tuple[str, list[str]]]:
    """(path, entries) of every file under `path` with an extended ACL."""
    getfacl = shutil.which("getfacl") or "getfacl"
    argv = [getfacl, "-R", "-P", "--skip-base", "--absolute-names", "--numeric", str(path)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    found: list[tuple[str, list[str]]] = []
    for block in result.stdout.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines or not lines[0].startswith("# file: "):
            continue
        name = _unescape(lines[0].removeprefix("# file: "))
        found.append((name, [line for line in lines[1:] if not line.startswith("#")]))
    return found


def _unescape(text: str) -> str:
    """getfacl writes a backslash and special characters as \\NNN (octal)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


_NAMED = re.compile(r"^(default:)?(user|group):[0-9]+:")


def _bits(text: str) -> int:
    """`rw-` -> 6."""
    return sum(bit for flag, bit in zip(text[:3], (4, 2, 1), strict=False) if flag != "-")


def _group_bits(entries: list[str]) -> int:
    """What the owning group may do under an access ACL: its entry, masked."""
    group, mask = 7, 7
    for entry in entries:
        perms = entry.split("#", 1)[0].strip().rsplit(":", 1)[-1]
        if entry.startswith("group::"):
            group = _bits(perms)
        elif entry.startswith("mask::"):
            mask = _bits(perms)
    return group & mask


def has_grant(path: Path, uid: int) -> bool:
    """Whether the project's top directory already carries `uid`'s entries."""
    try:
        result = subprocess.run(
            [_getfacl(), "--omit-header", "--numeric", "--absolute-names", "--physical", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    lines = {line.split("#", 1)[0].strip() for line in result.stdout.splitlines()}
    return f"user:{uid}:rwx" in lines and f"default:user:{uid}:rwx" in lines


def _getfacl() -> str:
    _setfacl()  # the same package: one paragraph when it is missing
    return shutil.which("getfacl") or "getfacl"


def grant(path: Path, uid: int, ledger: Path) -> None:
    """Give `uid` read, write and search access to everything under `path`, and
    to what is made there later (default entries). `ledger` keeps which files
    had an extended ACL of their own before, so `revoke` restores the rest
    exactly (no ACL at all)."""
    tool = _setfacl()
    before = [name for name, _entries in _dump(path)]
    atomic_write(ledger, json.dumps({"uid": uid, "extended_before": before}) + "\n", 0o600)
    _run(
        [tool, "-R", "-P", "-m", f"u:{uid}:rwX,d:u:{uid}:rwX", "--", str(path)],
        path,
        "give the agent access to",
    )


def revoke(path: Path, uid: int, owner: tuple[int, int], ledger: Path) -> int:
    """Take `uid`'s entries away again, leave every file that had no ACL of its
    own before without one, and give what `uid` owns under `path` (what the
    agent made) to `owner`; the number of files handed over."""
    if not path.is_dir():
        return 0
    tool = _setfacl()
    try:
        kept = set(json.loads(ledger.read_text()).get("extended_before", []))
    except (OSError, ValueError, AttributeError):
        kept = set()
    drop = f"u:{uid},d:u:{uid}"
    # Files with an ACL of their own before: their mask is worked out again
    # from what remains (as it was, when setfacl made it). Then every other
    # file keeps its mask (-n), so what the group could do is read off it below.
    present = [name for name in kept if Path(name).exists()]
    for start in range(0, len(present), 500):
        _run([tool, "-P", "-x", drop, "--", *present[start : start + 500]], path, "restore")
    _run(
        [tool, "-R", "-P", "-n", "-x", drop, "--", str(path)],
        path,
        "take the agent's access away from",
    )
    # Left with only the base entries and a mask (setfacl keeps them), a file
    # that had no ACL before gets none again, and its group bits what the
    # group could do through the mask: for a file that was there, what they
    # were; for one the agent made, what its group could do.
    plain = {
        name: _group_bits(entries)
        for name, entries in _dump(path)
        if name not in kept and not any(_NAMED.match(entry) for entry in entries)
    }
    names = list(plain)
    for start in range(0, len(names), 500):
        _run([tool, "-P", "-b", "-k", "--", *names[start : start + 500]], path, "restore")
    for name, group in plain.items():
        entry = Path(name)
        try:
            mode = entry.lstat().st_mode
            if not entry.is_symlink() and (mode >> 3) & 0o7 != group:
                entry.chmod((mode & ~0o070 & 0o7777) | group << 3)
        except OSError:
            continue
    handed = 0
    for top, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            entry = Path(top) / name
            try:
                if entry.lstat().st_uid == uid:
                    os.lchown(entry, *owner)
                    handed += 1
            except OSError:
                continue
    if path.lstat().st_uid == uid:
        os.lchown(path, *owner)
    ledger.unlink(missing_ok=True)
    return handed
