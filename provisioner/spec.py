"""What prov asks Docker for: containers, networks, their files and limits,
as frozen values. The planner (plan.py) makes them; the engine package
consumes them and imports nothing above this module."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LABEL_MANAGED = "prov.managed"  # on everything prov makes
SSHD_PORT = "22/tcp"
# Where the environment's gate (its egress proxy container) relays a published
# port to sshd, on an internal network where Docker publishes nothing itself.
RELAY_PORT = "2222/tcp"


# prov's outside network: every gate's way out, a bridge whose containers
# cannot reach one another (wire.outside_network_body). Named anew when that
# became so: prov-egress, an older prov's, let them, and gates made then stay
# on it until they are made again (`prov gc` removes it once it is empty).
EGRESS_NETWORK = "prov-outside"
OLD_EGRESS_NETWORKS = ("prov-egress",)


def container_name(name: str) -> str:
    """The environment's container (its proxy is `-egress`, its network `-net`)."""
    return f"prov-{name}"


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class KeyFile:
    """A file of the keys dir on the host (ProvPaths.keys_dir), mounted read-only
    at KEYS_MOUNT; the entrypoint installs it, root-owned, before sshd starts.
    A mount costs Docker nothing, where putting files into the container
    cost it ~80 ms of CPU per environment."""

    name: str
    mode: int
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class InjectedFile:
    """A root-owned file put into a new container right after it starts: the
    session environment, which is never written to the host's disk. pam_env
    reads it at each login, and prov logs in only after putting it there."""

    path: str
    mode: int
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class Security:
    """What the container may do: capabilities, privileges, limits."""

    cap_add: tuple[str, ...]
    no_new_privileges: bool
    pids_limit: int
    memory: int | None = None
    nano_cpus: int | None = None
    disable_ipv6: bool = False  # an internal network must not leave a link-local way out


@dataclass(frozen=True)
class NetworkSpec:
    """The environment's own network: internal unless egress is open."""

    name: str
    subnet: str
    gateway: str
    internal: bool
    labels: dict[str, str]


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    hostname: str
    labels: dict[str, str]
    environment: dict[str, str]
    bind: str
    port: int  # the host port published on `bind`; 0: nothing published
    mounts: tuple[Mount, ...]
    keys_dir: Path
    key_files: tuple[KeyFile, ...]
    files: tuple[InjectedFile, ...]
    security: Security
    network: str
    address: str  # on `network`
    gpus: int | None = None  # -1: all
    extra_network: str | None = None  # the proxy's way out
    tmpfs: tuple[str, ...] = ()  # small (16 MiB), nothing runs from them
    # (path, bytes): in memory, sized, programs may run from them (the agent's
    # /tmp, /var/tmp: writable places outside its home, bounded).
    scratch: tuple[tuple[str, int], ...] = ()
    read_only: bool = False
    # Named volumes: (volume, target). The agent's home lives in one, so that
    # `down` then `up` keeps it (history, user-installed tools, caches).
    volumes: tuple[tuple[str, str], ...] = ()
    volume_labels: dict[str, str] = field(default_factory=dict)
    # Named volumes mounted read-only: a remote environment's keys.
    ro_volumes: tuple[tuple[str, str], ...] = ()
    container_port: str = SSHD_PORT  # what `port` is published to inside
