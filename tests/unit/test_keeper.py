"""The keeper: the freshest login carried between the user's file and each
environment's, token keys only, never across accounts, in place."""

from __future__ import annotations

import json
from pathlib import Path

from provisioner import keeper
from provisioner.agents import AGENTS
from provisioner.config import ProvPaths

CODEX = next(a.login for a in AGENTS if a.name == "codex")
CLAUDE = next(a.login for a in AGENTS if a.name == "claude")


def _write(path: Path, data: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _setup(tmp_path: Path) -> tuple[ProvPaths, Path]:
    paths = ProvPaths(tmp_path / "ph")
    for name in ("one", "two"):  # as prepare makes them, with the keys
        paths.env_dir(name).mkdir(parents=True, mode=0o700)
    home = tmp_path / "home"
    return paths, home


def test_freshness_reads_milliseconds_seconds_and_rfc3339() -> None:
    assert keeper.freshness({"claudeAiOauth": {"expiresAt": 2_000_000_000_000}}, CLAUDE) == 2e9
    stamp = {"last_refresh": "2026-12-01T10:00:00.123456789Z"}
    assert keeper.freshness(stamp, CODEX) == 1796119200.123456
    assert keeper.freshness({}, CODEX) == 0.0


def test_an_environments_refresh_reaches_the_user_and_the_others(tmp_path: Path) -> None:
    """The freshest token wins everywhere; each file keeps its other keys, and
    nothing but the token keys of the freshest file travels."""
    paths, home = _setup(tmp_path)
    user = _write(home / ".codex/auth.json", {
        "OPENAI_API_KEY": "mine", "tokens": {"refresh_token": "r0", "account_id": "a"},
        "last_refresh": "2026-01-01T00:00:00Z"})  # fmt: skip
    mounts = keeper.prepare_env(paths, "one", home, 1000, 1000)
    keeper.prepare_env(paths, "two", home, 1000, 1000)
    assert [m.target for m in mounts] == ["/home/agent/.codex"]  # a directory: Codex renames
    one = keeper.env_file(paths, "one", CODEX)
    assert json.loads(one.read_text()) == {  # the token only, not the user's API key
        "tokens": {"refresh_token": "r0", "account_id": "a"},
        "last_refresh": "2026-01-01T00:00:00Z",
    }
    _write(one, {"tokens": {"refresh_token": "r1", "account_id": "a"},
                 "last_refresh": "2026-12-01T00:00:00Z", "OPENAI_API_KEY": "sk-x"})  # fmt: skip
    inode = user.stat().st_ino
    changed = keeper.sync_once(paths, home)
    assert len(changed) == 2
    mine = json.loads(user.read_text())
    assert mine["tokens"]["refresh_token"] == "r1" and mine["OPENAI_API_KEY"] == "mine"
    assert user.stat().st_ino == inode  # in place
    two = json.loads(keeper.env_file(paths, "two", CODEX).read_text())
    assert two["tokens"]["refresh_token"] == "r1" and "OPENAI_API_KEY" not in two
    assert keeper.sync_once(paths, home) == []  # settled


def test_a_token_of_another_account_is_never_carried(tmp_path: Path) -> None:
    """An agent writing a token of an account of its choosing (with a later time)
    does not log the host into it."""
    paths, home = _setup(tmp_path)
    user = _write(home / ".codex/auth.json", {
        "tokens": {"refresh_token": "r0", "account_id": "a"},
        "last_refresh": "2026-01-01T00:00:00Z"})  # fmt: skip
    keeper.prepare_env(paths, "one", home, 1000, 1000)
    _write(keeper.env_file(paths, "one", CODEX), {
        "tokens": {"refresh_token": "evil", "account_id": "attacker"},
        "last_refresh": "2026-12-01T00:00:00Z"})  # fmt: skip
    changed = keeper.sync_once(paths, home)
    assert "another account" in " ".join(changed)
    assert json.loads(user.read_text())["tokens"]["refresh_token"] == "r0"


def test_a_logout_here_is_not_undone(tmp_path: Path) -> None:
    """The user removed their login file: the keeper does not make it again."""
    paths, home = _setup(tmp_path)
    user = _write(home / ".claude/.credentials.json", {"claudeAiOauth": {"expiresAt": 1}})
    keeper.prepare_env(paths, "one", home, 1000, 1000)
    _write(keeper.env_file(paths, "one", CLAUDE), {"claudeAiOauth": {"expiresAt": 9}})
    user.unlink()
    keeper.sync_once(paths, home)
    assert not user.exists()


def test_settings_for_a_directory_mounted_login_go_into_that_directory(tmp_path: Path) -> None:
    """Codex's ~/.codex inside is the environment's login directory here: its
    settings copy is written there, not into the home volume (which it hides)."""
    paths, home = _setup(tmp_path)
    _write(home / ".codex/auth.json", {"tokens": {}, "last_refresh": "2026-01-01T00:00:00Z"})
    mounts = keeper.prepare_env(paths, "one", home, 1000, 1000)
    target = keeper.dir_mounted("/home/agent/.codex/config.toml", mounts)
    assert target == keeper.logins_dir(paths, "one") / ".codex" / "config.toml"
    assert keeper.dir_mounted("/home/agent/.claude/settings.json", mounts) is None


def test_a_carried_login_is_never_empty_or_cut_short_on_the_way(tmp_path: Path) -> None:
    """A shorter token written over a longer one: the file keeps its inode and
    its length (blanks after the JSON), so no moment of the write leaves it
    empty; what it holds is the new login."""
    paths, home = _setup(tmp_path)
    long_token = {"claudeAiOauth": {"accessToken": "a" * 400, "expiresAt": 1}}
    user = _write(home / ".claude/.credentials.json", long_token)
    before = user.stat()
    keeper.prepare_env(paths, "one", home, 1000, 1000)
    _write(
        keeper.env_file(paths, "one", CLAUDE),
        {"claudeAiOauth": {"accessToken": "b", "expiresAt": 9}},
    )
    assert keeper.sync_once(paths, home)
    after = user.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert json.loads(user.read_text())["claudeAiOauth"] == {"accessToken": "b", "expiresAt": 9}
    assert user.read_bytes().endswith(b"\n")
