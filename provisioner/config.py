"""What the user asked for, validated, as frozen dataclasses; and prov's paths."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import UsageError

DEFAULT_BASE_IMAGE = "ubuntu:24.04"
DEFAULT_TIMEOUT = 60.0
DEFAULT_BIND = "127.0.0.1"
DEFAULT_FIRST_PORT = 2222
AGENT_USER = "agent"
AGENT_HOME = "/home/agent"

# Docker allows [a-zA-Z0-9][a-zA-Z0-9_.-]*; tmux rejects '.' and ':' in session
# names and NTM uses the name as the session, so the intersection is used.
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$")


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise UsageError(
            f"Invalid environment name {name!r}",
            "A name must start with a letter or digit and contain only letters, digits, "
            "'-' and '_' (at most 63 characters), so that it is valid for Docker, "
            "tmux and ssh alike.",
            "choose a name such as 'myproject' or 'my-project_2'.",
        )
    return name


def validate_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise UsageError(
            f"Invalid port {port}",
            "A TCP port must be between 1 and 65535.",
            "pass --port with a free port such as 2222, or leave it out to let prov pick one.",
        )
    return port


def validate_bind(bind: str) -> str:
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise UsageError(
            f"Invalid bind address {bind!r}",
            "--bind takes an IP address such as 127.0.0.1 or 0.0.0.0.",
            "leave --bind out to publish on loopback only (the safe default).",
        ) from None
    return bind


def is_loopback(bind: str) -> bool:
    return ipaddress.ip_address(bind).is_loopback


@dataclass(frozen=True)
class AgentCounts:
    cc: int = 2
    cod: int = 1
    gmi: int = 0


@dataclass(frozen=True)
class UpRequest:
    """Everything `prov up NAME` was asked to do."""

    name: str
    port: int | None = None
    bind: str = DEFAULT_BIND
    project_dir: Path | None = None
    create_dir: bool = False
    key_file: Path | None = None
    base_image: str = DEFAULT_BASE_IMAGE
    timeout: float = DEFAULT_TIMEOUT
    agents: AgentCounts = AgentCounts()
    write_user_ssh_config: bool = True
    recreate: bool = False

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.port is not None:
            validate_port(self.port)
        validate_bind(self.bind)
        if self.timeout <= 0:
            raise UsageError(
                f"Invalid timeout {self.timeout}",
                "--timeout is the number of seconds to wait for SSH to become ready.",
                "pass a positive number such as 60.",
            )
        for flag, count in (
            ("--cc", self.agents.cc),
            ("--cod", self.agents.cod),
            ("--gmi", self.agents.gmi),
        ):
            if count < 0:
                raise UsageError(
                    f"Invalid agent count {flag}={count}",
                    "Counts cannot be negative.",
                    f"pass {flag}=0 to spawn none of that agent.",
                )


@dataclass(frozen=True)
class ProvPaths:
    """The files prov owns, all below PROV_HOME (default ~/.local/share/prov)."""

    home: Path

    @classmethod
    def from_env(cls) -> ProvPaths:
        raw = os.environ.get("PROV_HOME")
        home = Path(raw).expanduser() if raw else Path.home() / ".local" / "share" / "prov"
        return cls(home.absolute())

    @property
    def ssh_config(self) -> Path:
        return self.home / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.home / "known_hosts"

    @property
    def lock(self) -> Path:
        return self.home / ".lock"

    @property
    def envs(self) -> Path:
        return self.home / "envs"

    def env_dir(self, name: str) -> Path:
        return self.envs / name

    @property
    def control_dir(self) -> Path:
        # A Unix socket path is limited to 107 bytes; %C expands to 40 hex
        # characters and ssh adds a 17-character temporary suffix while it
        # binds. A deep PROV_HOME falls back to a short private dir.
        preferred = self.home / "cm"
        if len(str(preferred)) + 1 + 40 + 17 <= 107:
            return preferred
        return Path("/tmp") / f"prov-cm-{os.getuid()}"


def user_ssh_config() -> Path:
    return Path.home() / ".ssh" / "config"
