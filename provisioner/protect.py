"""The project paths the host executes from, kept out of the agent's reach.

In mount mode the agent writes the host's project tree. A few paths in it are
not the project's code but what the user's own tools run later, on the host,
as the user: git's hooks and config, direnv's `.envrc`, editor tasks, the
agents' project settings. Each of those is mounted read-only over itself
inside the container, so the agent cannot write it, replace it, rename it or
make it from nothing: a path that does not exist yet gets an empty
placeholder on the host (a directory, or a 0-byte file) for as long as the
environment exists, because a mount needs something to cover. `.git` itself
is mounted (writable) over itself so that it is a mount point, which cannot
be renamed or replaced; its hooks, config and info are read-only below it.

`plan_guards` is pure (what exists is passed in); `survey` reads the project
and its git config; `make_placeholders` / `remove_placeholders` change the
host, and say exactly what.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from provisioner.errors import UsageError
from provisioner.fsutil import atomic_write

Kind = Literal["dir", "file"]

# Protected in every project, made as placeholders when missing.
ALWAYS: tuple[tuple[str, Kind], ...] = (
    (".git/hooks", "dir"),
    (".git/info", "dir"),
    (".envrc", "file"),
    (".mcp.json", "file"),
    (".vscode", "dir"),
    (".idea", "dir"),
    (".claude", "dir"),
    (".gemini", "dir"),
    (".codex", "dir"),
    (".devcontainer", "dir"),
)
# Protected where they exist: a placeholder for each would litter every project.
IF_PRESENT: tuple[str, ...] = (
    ".git/config",
    ".git/config.worktree",
    ".devcontainer.json",
    ".pre-commit-config.yaml",
    "lefthook.yml",
    ".lefthook.yml",
    "lefthook-local.yml",
    ".husky",
)


@dataclass(frozen=True)
class Guard:
    """One path of the project as the container sees it."""

    rel: str  # relative to the project, POSIX
    kind: Kind
    placeholder: bool = False  # missing on the host: prov makes it empty
    writable: bool = False  # only `.git`: a mount point, so it cannot be replaced


@dataclass(frozen=True)
class Survey:
    """What the project holds, as far as the guards care: each candidate's
    kind on the host ("dir", "file", "symlink", or None when missing), and
    paths git's config names inside the project (hooksPath, included files)."""

    kinds: dict[str, str | None]
    git_named: tuple[tuple[str, Kind], ...] = ()
    modules: tuple[str, ...] = ()  # .git/modules/* that are submodules' git dirs


def normal_rel(text: str) -> str:
    """A --protect path, relative to the project; refused when it leaves it."""
    rel = posixpath.normpath(text.strip().rstrip("/"))
    if (
        not text.strip()
        or rel in (".", "")
        or rel.startswith("../")
        or rel == ".."
        or (posixpath.isabs(rel))
    ):
        raise UsageError(
            f"Invalid --protect {text!r}",
            "It takes a path inside the project, relative to it (e.g. scripts/deploy.sh or "
            "tools/ for a directory).",
            "e.g. --protect Makefile --protect .github/.",
        )
    return rel


def candidates(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every path `survey` looks at: the defaults, the modules' files, --protect."""
    return (".git", *(rel for rel, _ in ALWAYS), *IF_PRESENT, *extra)


def plan_guards(survey: Survey, extra: tuple[tuple[str, Kind], ...] = ()) -> tuple[Guard, ...]:
    """The guards for a project (pure). `extra`: --protect paths with their kind."""
    kinds = survey.kinds
    git = kinds.get(".git")
    guards: list[Guard] = []
    if git == "dir":
        guards.append(Guard(".git", "dir", writable=True))
    elif git == "file":  # a worktree's pointer to its git dir: never repointed
        guards.append(Guard(".git", "file"))
    elif git is None:  # not a repository: the agent cannot make one here
        guards.append(Guard(".git", "dir", placeholder=True))
    wanted: list[tuple[str, Kind, bool]] = [
        (rel, kind, True) for rel, kind in ALWAYS if git == "dir" or not rel.startswith(".git/")
    ]
    wanted += [(rel, "dir", False) for rel in IF_PRESENT if kinds.get(rel) == "dir"]
    wanted += [(rel, "file", False) for rel in IF_PRESENT if kinds.get(rel) == "file"]
    for module in survey.modules:
        wanted += [(f"{module}/hooks", "dir", False), (f"{module}/config", "file", False)]
    wanted += [(rel, kind, True) for rel, kind in (*survey.git_named, *extra)]
    seen = {g.rel for g in guards}
    for rel, kind, always in wanted:
        if rel in seen:
            continue
        present = kinds.get(rel)
        if present == "symlink":
            continue  # cannot be covered (a mount follows it); `unguardable` names it
        if present is None and not always:
            continue
        if present is not None and present != kind:
            kind = "dir" if present == "dir" else "file"
        seen.add(rel)
        guards.append(Guard(rel, kind, placeholder=present is None))
    return tuple(guards)


def unguardable(survey: Survey, extra: tuple[tuple[str, Kind], ...] = ()) -> tuple[str, ...]:
    """Protected paths that are symbolic links on the host (which prov cannot cover)."""
    names = [rel for rel, _ in ALWAYS] + list(IF_PRESENT) + [rel for rel, _ in extra]
    return tuple(rel for rel in names if survey.kinds.get(rel) == "symlink")


def _kind(path: Path) -> str | None:
    import stat

    try:
        mode = path.lstat().st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        return "symlink"
    return "dir" if stat.S_ISDIR(mode) else "file"


def _git_named(project: Path) -> tuple[tuple[str, Kind], ...]:
    """Paths inside the project that the repository's own config makes git run
    or read: core.hooksPath (e.g. .husky), and config files it includes."""
    config = project / ".git" / "config"
    if not config.is_file():
        return ()
    try:
        result = subprocess.run(
            ["git", "config", "--file", str(config), "--includes", "--show-origin", "--list"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            cwd=project,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    named: list[tuple[str, Kind]] = []
    for line in result.stdout.splitlines():
        origin, _, entry = line.partition("\t")
        key, _, value = entry.partition("=")
        if origin.startswith("file:") and origin[5:] != str(config):
            named.append((origin[5:], "file"))
        if key.lower() == "core.hookspath" and value:
            named.append((value, "dir"))
    inside: list[tuple[str, Kind]] = []
    for raw, kind in named:
        path = Path(raw).expanduser()
        path = path if path.is_absolute() else project / path
        rel = os.path.relpath(os.path.normpath(path), project)
        if not rel.startswith(".."):
            inside.append((Path(rel).as_posix(), kind))
    return tuple(dict.fromkeys(inside))


def survey(project: Path, extra: tuple[str, ...] = (), made: tuple[str, ...] = ()) -> Survey:
    """`made`: the placeholders prov made there (its ledger). A `.git` that is
    prov's own placeholder, still as prov made it, is no repository: it is
    surveyed as missing, so the next `up` plans the same guards as the first."""
    kinds = {rel: _kind(project / rel) for rel in candidates(extra)}
    if kinds.get(".git") == "dir" and _untouched(project, ".git", set(made)):
        kinds[".git"] = None
    named = _git_named(project)
    modules: list[str] = []
    modules_dir = project / ".git" / "modules"
    if modules_dir.is_dir() and not modules_dir.is_symlink():
        for config in sorted(modules_dir.rglob("config")):
            if (config.parent / "HEAD").is_file():  # a submodule's git dir
                modules.append(config.parent.relative_to(project).as_posix())
    for rel in [*(r for r, _ in named), *(f"{m}/hooks" for m in modules)]:
        kinds[rel] = _kind(project / rel)
    for module in modules:
        kinds[f"{module}/config"] = _kind(project / module / "config")
    return Survey(kinds, named, tuple(modules))


def _untouched(project: Path, rel: str, made: set[str]) -> bool:
    """`rel` is a placeholder directory prov made, holding nothing but
    placeholder directories of its own that hold nothing (what an older prov
    left in its own `.git`: hooks/ and info/)."""
    path = project / rel
    if f"{rel}/" not in made or path.is_symlink() or not path.is_dir():
        return False
    return all(
        child.is_dir() and _untouched(project, f"{rel}/{child.name}", made)
        for child in path.iterdir()
    )


def extra_kinds(project: Path, paths: tuple[str, ...]) -> tuple[tuple[str, Kind], ...]:
    """--protect paths with their kind: a directory if it is one, or if written
    with a trailing slash; else a file."""
    found: list[tuple[str, Kind]] = []
    for text in paths:
        rel = normal_rel(text)
        is_dir = text.strip().endswith("/") or (project / rel).is_dir()
        found.append((rel, "dir" if is_dir else "file"))
    return tuple(found)


# --- the host side: placeholders ---------------------------------------------


def make_placeholders(
    project: Path, guards: tuple[Guard, ...], owner: tuple[int, int], ledger: Path
) -> tuple[str, ...]:
    """Make an empty directory or 0-byte file for each guard that has nothing
    to cover, owned by the project's owner, and add it to `ledger` (so they go
    again when the environment does); what was made."""
    made: list[str] = []
    for guard in guards:
        if not guard.placeholder:
            continue
        path = project / guard.rel
        if path.exists() or path.is_symlink():
            continue
        parents = [p for p in reversed(path.relative_to(project).parents) if str(p) != "."]
        for parent in parents:  # e.g. .git/hooks in a repository that has no .git yet
            if not (project / parent).exists():
                (project / parent).mkdir()
                made.append(parent.as_posix() + "/")
                _own(project / parent, owner)
        if guard.kind == "dir":
            path.mkdir()
            made.append(guard.rel + "/")
        else:
            path.touch(mode=0o644, exist_ok=False)
            made.append(guard.rel)
        _own(path, owner)
    if made:
        _record(ledger, [*placeholders(ledger), *made])
    return tuple(made)


def _own(path: Path, owner: tuple[int, int]) -> None:
    if os.geteuid() == 0:
        os.lchown(path, *owner)


def placeholders(ledger: Path) -> list[str]:
    try:
        data = json.loads(ledger.read_text())
    except (OSError, ValueError):
        return []
    return [str(p) for p in data.get("placeholders", [])] if isinstance(data, dict) else []


def _record(ledger: Path, made: list[str]) -> None:
    atomic_write(ledger, json.dumps({"placeholders": list(dict.fromkeys(made))}) + "\n", 0o600)


def remove_placeholders(project: Path, ledger: Path) -> tuple[str, ...]:
    """Remove the placeholders prov made that are still as it made them (an
    empty directory, a 0-byte file): one the user has filled since is theirs
    and stays. Deepest first; what was removed."""
    removed: list[str] = []
    for entry in sorted(placeholders(ledger), key=lambda e: e.count("/"), reverse=True):
        path = project / entry.rstrip("/")
        with contextlib.suppress(OSError):
            if path.is_symlink():
                continue
            if entry.endswith("/"):
                path.rmdir()  # only while empty
            elif path.is_file() and path.stat().st_size == 0:
                path.unlink()
            else:
                continue
            removed.append(entry)
    ledger.unlink(missing_ok=True)
    return tuple(removed)


def rsync_excludes(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """rsync filters (anchored at the project) that keep what the host executes
    from out of a pull from an environment: its copy of them is the agent's."""
    names = [".git/hooks/", ".git/config", ".git/info/", ".git/modules/**/hooks/"]
    names += [".git/modules/**/config", ".git/config.worktree"]
    names += [
        rel + ("/" if kind == "dir" else "") for rel, kind in ALWAYS if not rel.startswith(".git/")
    ]
    names += [rel for rel in IF_PRESENT if not rel.startswith(".git/")]
    names += [normal_rel(rel) for rel in extra]
    return tuple(f"--exclude=/{name}" for name in dict.fromkeys(names))


def git_excludes(guards: tuple[Guard, ...]) -> str:
    """The covered paths, as a git excludes file (anchored at the repository's
    top): inside, `git add -A` must not commit an empty placeholder .envrc, nor
    `git stash -u` or `git clean -d` try to remove an untracked covered path
    (they are read-only there). Tracked files are not affected by excludes."""
    return "".join(
        f"/{g.rel}{'/' if g.kind == 'dir' else ''}\n"
        for g in guards
        if g.rel != ".git" and not g.rel.startswith(".git/")
    )
