"""Validation of what the user asks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.config import (
    ProvPaths,
    UpRequest,
    check_session_value,
    parse_env,
    validate_name,
)
from provisioner.errors import ConfigError, UsageError
from provisioner.fsutil import read_user_file


@pytest.mark.parametrize("name", ["myproject", "a", "my-project_2", "x" * 63])
def test_valid_names_accepted(name: str) -> None:
    """Names usable by Docker, tmux and ssh pass unchanged."""
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-lead", "_lead", "has.dot", "has:colon", "sp ace", "slash/x", "x" * 64, "ünï"]
)
def test_invalid_names_rejected_with_hint(name: str) -> None:
    """Names tmux or Docker would reject fail early with an explanation."""
    with pytest.raises(UsageError) as info:
        validate_name(name)
    assert "letters, digits" in info.value.paragraph()
    assert info.value.exit_code == 2


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_bad_port_rejected(port: int) -> None:
    """Ports outside 1-65535 are a usage error."""
    with pytest.raises(UsageError, match="Invalid port"):
        UpRequest(name="p", port=port)


def test_bad_bind_and_timeout_rejected() -> None:
    """A bind that is not an IP, or a non-positive timeout, is refused."""
    with pytest.raises(UsageError, match="bind"):
        UpRequest(name="p", bind="localhost")
    with pytest.raises(UsageError, match="timeout"):
        UpRequest(name="p", timeout=0)


def test_prov_home_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """PROV_HOME decides where every prov-owned file lives."""
    monkeypatch.setenv("PROV_HOME", "/srv/p")
    paths = ProvPaths.from_env()
    assert paths.ssh_config == Path("/srv/p/ssh_config")
    assert paths.known_hosts == Path("/srv/p/known_hosts")
    assert paths.control_dir == Path("/srv/p/cm")


def test_control_dir_falls_back_when_socket_path_too_long(tmp_path: Path) -> None:
    """A deep PROV_HOME must not produce a ControlPath longer than a Unix socket allows."""
    deep = tmp_path / ("d" * 90)
    control = ProvPaths(deep).control_dir
    # ssh binds "<ControlPath>.<16 random chars>" before renaming it into place.
    assert len(f"{control}/{'x' * 40}.{'y' * 16}") <= 107


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a#b", "'#'"),
        ('"quoted"', "quote"),
        ("'quoted'", "quote"),
        ("ends\\", "backslash"),
        ("x" * 8000, "line limit"),
        ("two\nlines", "several lines"),
        ("caf\udce9", "UTF-8"),
    ],
)
def test_session_values_pam_env_would_change_are_refused(value: str, reason: str) -> None:
    with pytest.raises(UsageError, match="TOKEN") as caught:
        check_session_value("TOKEN", value)
    assert reason in caught.value.seen


@pytest.mark.parametrize(
    "value", ["plain", "with spaces inside", " lead", "trail ", 'a"b', "$HOME"]
)
def test_session_values_pam_env_keeps_are_accepted(value: str) -> None:
    check_session_value("TOKEN", value)


def test_user_files_are_bounded_regular_utf8(tmp_path: Path) -> None:
    good = tmp_path / "ok.env"
    good.write_text("A=1\n")
    assert read_user_file(good, "--env-file") == "A=1\n"
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(ConfigError, match="larger than 1 KiB"):
        read_user_file(big, "--key", limit=1024)
    for bad, phrase in ((Path("/dev/zero"), "regular file"), (tmp_path, "regular file")):
        with pytest.raises(ConfigError, match=phrase):
            read_user_file(bad, "--env-file")
    latin = tmp_path / "latin1"
    latin.write_bytes(b"caf\xe9")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_user_file(latin, "--env-file")
    with pytest.raises(ConfigError, match="Cannot read"):
        read_user_file(tmp_path / "missing", "--env-file")


def test_names_are_lower_case_and_tmux_safe() -> None:
    """Upper case would share a pin (ssh lower-cases hosts); '.' and ':' tmux renames."""
    with pytest.raises(UsageError, match="upper-case"):
        validate_name("MyApp")
    for bad in ("my.app", "my:app"):
        with pytest.raises(UsageError) as caught:
            validate_name(bad)
        assert "tmux renames" in caught.value.seen
    assert validate_name("my-app_2") == "my-app_2"


def test_prov_home_follows_xdg_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROV_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert ProvPaths.from_env().home == tmp_path / "data" / "prov"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert ProvPaths.from_env().home == tmp_path / ".local" / "share" / "prov"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert ProvPaths.from_env().home == tmp_path / ".local" / "share" / "prov"
    monkeypatch.setenv("PROV_HOME", str(tmp_path / "explicit"))
    assert ProvPaths.from_env().home == tmp_path / "explicit"


def test_env_values_kept_exactly(tmp_path: Path) -> None:
    """Spaces inside and around a value stay; CRLF files lose only their line ends."""
    env_file = tmp_path / "env"
    env_file.write_bytes(b"# c\r\nexport A= two  words \r\n  B=x\r\n")
    pairs = dict(parse_env(["C=  padded  ", "D="], env_file))
    assert pairs == {"A": " two  words ", "B": "x", "C": "  padded  ", "D": ""}
