"""Editing NTM's config in place: comments and other settings survive byte for byte."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from provisioner import ntmconfig
from provisioner.errors import ConfigError

CONFIG = """# NTM config, hand-tuned
projects_base = "~/code"   # where projects live

[agents]
# my claude tweak
claude = "claude --dangerously-skip-permissions --verbose"
aider = "aider --yes"

[tmux]
default_panes = 4 # keep
"""


def test_set_keeps_comments_and_other_keys() -> None:
    """Only claude/codex/gemini change; every other line is identical."""
    edit = ntmconfig.set_agents(CONFIG, Path("c.toml"), ntmconfig.exec_templates("prov-demo"))
    after = tomllib.loads(edit.after)
    assert after["agents"]["aider"] == "aider --yes"
    assert after["agents"]["claude"].startswith(
        "docker exec -it -u agent -w {{shellQuote .ProjectDir}} prov-demo claude "
    )
    assert "{{if .Model}} --model {{shellQuote .Model}}{{end}}" in after["agents"]["claude"]
    assert "{{if .ReasoningEffort}}" in after["agents"]["codex"]
    changed = [ln for ln in edit.after.splitlines() if ln not in CONFIG.splitlines()]
    assert len(changed) == 3 and all(ln.split(" =")[0] in ntmconfig.AGENT_KEYS for ln in changed)
    for line in CONFIG.splitlines():
        if not line.startswith("claude ="):
            assert line in edit.after.splitlines()
    assert edit.previous == {
        "claude": "claude --dangerously-skip-permissions --verbose",
        "codex": None,
        "gemini": None,
    }
    assert "+claude = " in edit.diff and "-claude = " in edit.diff


def test_restore_gives_back_the_original_bytes() -> None:
    """Setting then restoring the recorded entries reproduces the file exactly."""
    path = Path("c.toml")
    edit = ntmconfig.set_agents(CONFIG, path, ntmconfig.exec_templates("prov-demo"))
    restored = ntmconfig.restore_agents(edit.after, path, edit.previous)
    assert restored.after == CONFIG


def test_restore_without_agents_table() -> None:
    """A config that had no [agents] gets it removed again on restore."""
    original = '# top\nprojects_base = "/srv"\n'
    path = Path("c.toml")
    edit = ntmconfig.set_agents(original, path, ntmconfig.route_templates("/opt/prov bin/prov"))
    assert "'/opt/prov bin/prov' route -- claude" in tomllib.loads(edit.after)["agents"]["claude"]
    assert ntmconfig.restore_agents(edit.after, path, edit.previous).after == original


def test_invalid_toml_is_refused() -> None:
    """A broken config is reported, never rewritten."""
    with pytest.raises(ConfigError, match="not valid TOML"):
        ntmconfig.set_agents("[agents\nclaude=", Path("c.toml"), {"claude": "x"})


def test_apply_writes_backup_and_remembers_first_state(tmp_path: Path) -> None:
    """apply() backs the file up, and keeps the user's entries across repeated edits."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    home = tmp_path / "ph"
    home.mkdir()
    first = ntmconfig.set_agents(CONFIG, config, ntmconfig.exec_templates("prov-a"))
    backup = ntmconfig.apply(first, home, remember=True)
    assert backup is not None and backup.read_text() == CONFIG
    second = ntmconfig.set_agents(config.read_text(), config, ntmconfig.exec_templates("prov-b"))
    ntmconfig.apply(second, home, remember=True)
    assert ntmconfig.remembered(home) == first.previous
    undo = ntmconfig.restore_agents(config.read_text(), config, first.previous)
    ntmconfig.apply(undo, home, remember=False)
    assert config.read_text() == CONFIG


def test_symlinked_crlf_config_is_edited_in_place_and_restored_byte_for_byte(
    tmp_path: Path,
) -> None:
    """A dotfiles symlink stays a symlink (its target is edited, mode kept), CRLF line
    ends survive the edit, and --remove gives back the original bytes."""
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    target = dotfiles / "ntm.toml"
    original = CONFIG.replace("\n", "\r\n").encode()
    target.write_bytes(original)
    target.chmod(0o640)
    link = tmp_path / "config.toml"
    link.symlink_to(target)
    home = tmp_path / "ph"
    home.mkdir()
    text = ntmconfig.read_config(link)
    assert text.encode() == original  # no newline translation on read
    edit = ntmconfig.set_agents(text, link, ntmconfig.exec_templates("prov-a"))
    ntmconfig.apply(edit, home, remember=True)
    assert link.is_symlink() and link.resolve() == target
    assert (target.stat().st_mode & 0o777) == 0o640
    assert b"prov-a" in target.read_bytes()
    undo = ntmconfig.restore_agents(ntmconfig.read_config(link), link, edit.previous)
    ntmconfig.apply(undo, home, remember=False)
    assert target.read_bytes() == original and link.is_symlink()
