"""Which project paths are kept out of the agent's reach, and the placeholders
that make a missing one uncreatable: planned without a daemon."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from provisioner import protect
from provisioner.errors import UsageError


def _by_rel(guards: tuple[protect.Guard, ...]) -> dict[str, protect.Guard]:
    return {g.rel: g for g in guards}


def test_a_repository_gets_its_git_dir_pinned_and_its_hooks_config_info_read_only() -> None:
    """`.git` becomes a writable mount point (never renamed or replaced), its hooks,
    config and info are covered read-only; every default path the host's tools
    run gets a guard, a placeholder where it is missing."""
    survey = protect.Survey(
        {".git": "dir", ".git/hooks": "dir", ".git/config": "file", ".vscode": "dir"}
    )
    guards = _by_rel(protect.plan_guards(survey))
    assert guards[".git"] == protect.Guard(".git", "dir", writable=True)
    assert guards[".git/hooks"] == protect.Guard(".git/hooks", "dir")
    assert guards[".git/config"] == protect.Guard(".git/config", "file")
    assert guards[".git/info"] == protect.Guard(".git/info", "dir", placeholder=True)
    assert guards[".envrc"] == protect.Guard(".envrc", "file", placeholder=True)
    assert guards[".vscode"].placeholder is False
    assert all(not g.writable for r, g in guards.items() if r != ".git")
    assert ".pre-commit-config.yaml" not in guards  # only where it exists


def test_not_a_repository_gets_an_empty_git_dir_so_none_can_be_made_there() -> None:
    """No `.git`: a read-only placeholder directory (git skips an empty one and
    looks further up), and nothing below it to cover."""
    guards = _by_rel(protect.plan_guards(protect.Survey({})))
    assert guards[".git"] == protect.Guard(".git", "dir", placeholder=True)
    assert not any(r.startswith(".git/") for r in guards)


def test_a_worktree_pointer_is_covered_read_only() -> None:
    """A `.git` file (a worktree's gitdir: line) cannot be pointed elsewhere."""
    guards = _by_rel(protect.plan_guards(protect.Survey({".git": "file"})))
    assert guards[".git"] == protect.Guard(".git", "file")
    assert ".git/hooks" not in guards


def test_hooks_path_includes_submodules_and_protect_paths_are_guarded() -> None:
    """core.hooksPath inside the project (husky), a config file it includes, each
    submodule's hooks and config, and --protect paths are all covered."""
    survey = protect.Survey(
        {".git": "dir", ".husky": "dir", "tools/git.inc": "file", ".git/modules/lib/hooks": "dir",
         ".git/modules/lib/config": "file", "deploy.sh": "file"},
        git_named=((".husky", "dir"), ("tools/git.inc", "file")),
        modules=(".git/modules/lib",),
    )  # fmt: skip
    guards = _by_rel(protect.plan_guards(survey, ((("deploy.sh", "file"), ("ci", "dir")))))
    for rel in (".husky", "tools/git.inc", ".git/modules/lib/hooks", ".git/modules/lib/config"):
        assert rel in guards and not guards[rel].placeholder, rel
    assert guards["deploy.sh"] == protect.Guard("deploy.sh", "file")
    assert guards["ci"].placeholder  # asked for and missing: made empty


def test_a_symlinked_path_is_named_not_covered() -> None:
    """A protected path that is a symbolic link cannot be covered (a mount would
    follow it): it is left out and named, not silently passed."""
    survey = protect.Survey({".git": "dir", ".envrc": "symlink"})
    assert ".envrc" not in _by_rel(protect.plan_guards(survey))
    assert protect.unguardable(survey) == (".envrc",)


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../b", "."])
def test_protect_paths_stay_inside_the_project(bad: str) -> None:
    with pytest.raises(UsageError):
        protect.normal_rel(bad)


def test_survey_reads_the_repository_and_its_config(tmp_path: Path) -> None:
    """The survey sees kinds on disk, the hooksPath and included files git's own
    config names inside the project, and the submodules' git dirs."""
    project = tmp_path / "p"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    git = ["git", "-C", str(project), "config"]
    subprocess.run([*git, "core.hooksPath", ".husky"], check=True)
    (project / "tools").mkdir()
    (project / "tools" / "git.inc").write_text("[user]\n\tname = x\n")
    subprocess.run([*git, "include.path", "../tools/git.inc"], check=True)
    module = project / ".git" / "modules" / "lib"
    (module / "hooks").mkdir(parents=True)
    (module / "HEAD").write_text("ref: refs/heads/main\n")
    (module / "config").write_text("[core]\n")
    (project / ".envrc").symlink_to("/etc/hostname")
    found = protect.survey(project)
    assert found.kinds[".git"] == "dir" and found.kinds[".envrc"] == "symlink"
    assert set(found.git_named) == {(".husky", "dir"), ("tools/git.inc", "file")}
    assert found.modules == (".git/modules/lib",)


def test_placeholders_are_made_recorded_and_removed_only_while_untouched(
    tmp_path: Path,
) -> None:
    """Missing paths get an empty dir or 0-byte file; removal takes back exactly
    those still empty, and keeps one the user has since filled."""
    project = tmp_path / "p"
    project.mkdir()
    ledger = tmp_path / "placeholders.json"
    guards = protect.plan_guards(protect.Survey({}), (("ci", "dir"),))
    made = protect.make_placeholders(project, guards, (0, 0), ledger)
    assert set(made) >= {".git/", ".envrc", ".mcp.json", ".vscode/", "ci/"}
    assert (project / ".envrc").stat().st_size == 0 and (project / ".vscode").is_dir()
    (project / ".envrc").write_text("export X=1\n")  # the user's now
    (project / ".vscode" / "settings.json").write_text("{}")
    removed = protect.remove_placeholders(project, ledger)
    assert ".envrc" not in removed and ".vscode/" not in removed and "ci/" in removed
    assert (project / ".envrc").read_text() == "export X=1\n"
    assert not (project / ".git").exists() and not (project / ".mcp.json").exists()
    assert not ledger.exists()


def test_excludes_and_rsync_filters_name_the_covered_paths() -> None:
    """Inside, git ignores every covered path but .git's own (tracked files are
    unaffected by excludes); a pull from a remote environment never brings back
    the git hooks or config, nor a --protect path."""
    guards = protect.plan_guards(protect.Survey({".git": "dir", ".git/config": "file"}))
    excludes = protect.git_excludes(guards).splitlines()
    assert "/.envrc" in excludes and "/.vscode/" in excludes
    assert not any(line.startswith("/.git/") or line == "/.git/" for line in excludes)
    filters = protect.rsync_excludes(("deploy.sh",))
    for name in ("/.git/hooks/", "/.git/config", "/.envrc", "/.claude/", "/deploy.sh"):
        assert f"--exclude={name}" in filters, name


def test_provs_own_git_placeholder_is_no_repository_at_the_next_up(tmp_path: Path) -> None:
    """The second `up` of a project that was no repository plans what the first
    did (no .git/hooks or .git/info made inside prov's own empty .git, no
    "not yet protected" warning); once the user runs `git init` there, it is a
    repository again."""
    project = tmp_path / "p"
    project.mkdir()
    ledger = tmp_path / "placeholders.json"
    first = protect.plan_guards(protect.survey(project))
    protect.make_placeholders(project, first, (0, 0), ledger)
    assert (project / ".git").is_dir()
    again = protect.survey(project, (), tuple(protect.placeholders(ledger)))
    assert again.kinds[".git"] is None
    covered = [(g.rel, g.kind, g.writable) for g in first]
    assert [(g.rel, g.kind, g.writable) for g in protect.plan_guards(again)] == covered
    assert protect.make_placeholders(project, protect.plan_guards(again), (0, 0), ledger) == ()
    assert list((project / ".git").iterdir()) == []
    # What an older prov left: hooks/ and info/ inside its own .git, empty, recorded.
    for rel in (".git/hooks", ".git/info"):
        (project / rel).mkdir()
    protect._record(ledger, [*protect.placeholders(ledger), ".git/hooks/", ".git/info/"])
    assert protect.survey(project, (), tuple(protect.placeholders(ledger))).kinds[".git"] is None
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    assert protect.survey(project, (), tuple(protect.placeholders(ledger))).kinds[".git"] == "dir"
