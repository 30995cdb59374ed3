"""Validation of what the user asks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.config import ProvPaths, UpRequest, validate_name
from provisioner.errors import UsageError


@pytest.mark.parametrize("name", ["myproject", "a", "my-project_2", "A1", "x" * 63])
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
