"""Pure planning: request + facts -> everything Docker and SSH need.

Nothing here touches Docker, the network or the file system, so the whole
plan can be printed with `--dry-run` and unit-tested without a daemon.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import __version__
from provisioner.config import AGENT_HOME, AGENT_USER, AgentCounts, ExtraMount, ProvPaths
from provisioner.host import CredentialMount
from provisioner.keys import PublicKey
from provisioner.sshconf import HostEntry, alias_for

LABEL_MANAGED = "prov.managed"
LABEL_NAME = "prov.name"
LABEL_PORT = "prov.port"
LABEL_BIND = "prov.bind"
LABEL_PROJECT = "prov.project"
LABEL_IMAGE_HASH = "prov.image-hash"
LABEL_VERSION = "prov.version"
LABEL_HOST_KEY = "prov.host-key-fingerprint"
LABEL_MOUNTS = "prov.mounts"
LABEL_AGENTS = "prov.agents"
LABEL_GPUS = "prov.gpus"
LABEL_ENV_KEYS = "prov.env-keys"

SSHD_PORT = "22/tcp"
AUTHORIZED_KEYS_PATH = f"/etc/ssh/authorized_keys/{AGENT_USER}"
SESSION_ENV_PATH = "/etc/prov/environment"
KEYS_MOUNT = "/etc/prov/keys"
HOST_KEY_FILE = "ssh_host_ed25519_key"
AUTHORIZED_KEYS_FILE = "authorized_keys"


def container_name(name: str) -> str:
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
class ContainerSpec:
    name: str
    image: str
    hostname: str
    labels: dict[str, str]
    environment: dict[str, str]
    bind: str
    port: int
    mounts: tuple[Mount, ...]
    keys_dir: Path
    key_files: tuple[KeyFile, ...]
    files: tuple[InjectedFile, ...]
    gpus: int | None = None  # -1: all


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to log in, and the host key to insist on."""

    host: str
    port: int
    user: str
    host_key: PublicKey
    identity_file: Path  # private key, or a .pub whose private half is in ssh-agent


@dataclass(frozen=True)
class Plan:
    env_name: str
    container: ContainerSpec
    ssh: HostEntry
    project_dir: Path
    ntm_session: str
    ntm_command: tuple[str, ...]
    ntm_env: dict[str, str]
    host_key: PublicKey

    @property
    def ntm_display(self) -> str:
        prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in self.ntm_env.items())
        return prefix + shlex.join(self.ntm_command)


def connect_host(bind: str) -> str:
    """Where the client connects for a port published on `bind`."""
    addr = ipaddress.ip_address(bind)
    if addr.is_unspecified:
        return "::1" if addr.version == 6 else "127.0.0.1"
    return bind


def ntm_invocation(
    session: str, alias: str, agents: AgentCounts, project_dir: Path, projects_base: Path
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The `ntm spawn` command for this environment, plus the env it needs.

    NTM computes the pane directory as projects_base/SESSION on the local
    machine; when the project lives elsewhere, NTM_PROJECTS_BASE points it at
    the project's parent so that path (which is also the mount target) exists.
    """
    cmd = ["ntm", "spawn", session]
    for flag, count in (("--cc", agents.cc), ("--cod", agents.cod), ("--gmi", agents.gmi)):
        if count:
            cmd.append(f"{flag}={count}")
    cmd.append(f"--ssh={alias}")
    env: dict[str, str] = {}
    if project_dir.parent != projects_base:
        env["NTM_PROJECTS_BASE"] = str(project_dir.parent)
    return tuple(cmd), env


def build_plan(
    *,
    name: str,
    image: str,
    image_hash: str,
    bind: str,
    port: int,
    project_dir: Path,
    project_uid: int,
    project_gid: int,
    projects_base: Path,
    credentials: tuple[CredentialMount, ...],
    authorized_key: PublicKey,
    identity_file: Path,
    host_key_public: PublicKey,
    host_key_private: bytes,
    agents: AgentCounts,
    paths: ProvPaths,
    extra_mounts: tuple[ExtraMount, ...] = (),
    session_env: tuple[tuple[str, str], ...] = (),
    gpus: int | None = None,
    agent_versions: dict[str, str] | None = None,
) -> Plan:
    alias = alias_for(name)
    mounts = (
        Mount(project_dir, str(project_dir)),
        *(Mount(c.source, c.target) for c in credentials),
        *(Mount(m.source, m.target, m.read_only) for m in extra_mounts),
    )
    labels = {
        LABEL_MANAGED: "true",
        LABEL_NAME: name,
        LABEL_PORT: str(port),
        LABEL_BIND: bind,
        LABEL_PROJECT: str(project_dir),
        LABEL_IMAGE_HASH: image_hash,
        LABEL_VERSION: __version__,
        LABEL_HOST_KEY: host_key_public.fingerprint,
        LABEL_MOUNTS: json.dumps(
            [f"{m.source}:{m.target}{':ro' if m.read_only else ''}" for m in mounts]
        ),
        LABEL_AGENTS: ",".join(f"{a} {v}" for a, v in sorted((agent_versions or {}).items()))
        or "none",
        LABEL_GPUS: "" if gpus is None else ("all" if gpus < 0 else str(gpus)),
        # Names only: the values may be secrets and labels are public.
        LABEL_ENV_KEYS: ",".join(k for k, _ in session_env),
    }
    key_files = (
        KeyFile(HOST_KEY_FILE, 0o600, host_key_private),
        KeyFile(AUTHORIZED_KEYS_FILE, 0o644, (authorized_key.line + "\n").encode()),
    )
    files: tuple[InjectedFile, ...] = ()
    if session_env:
        # A root-only file, not Docker's env (which `docker inspect` shows to anyone
        # with Docker access); pam_env hands it to every login.
        body = "".join(f"{key}={value}\n" for key, value in session_env)
        files += (InjectedFile(SESSION_ENV_PATH, 0o600, body.encode()),)
    spec = ContainerSpec(
        name=container_name(name),
        image=image,
        hostname=name,
        labels=labels,
        environment={
            "PROV_UID": str(project_uid),
            "PROV_GID": str(project_gid),
            "PROV_PROJECT_DIR": str(project_dir),
        },
        bind=bind,
        port=port,
        # Not in LABEL_MOUNTS: every environment has it, at a path of its own.
        mounts=(*mounts, Mount(paths.keys_dir(name), KEYS_MOUNT, read_only=True)),
        keys_dir=paths.keys_dir(name),
        key_files=key_files,
        files=files,
        gpus=gpus,
    )
    entry = HostEntry(
        alias=alias,
        hostname=connect_host(bind),
        port=port,
        user=AGENT_USER,
        identity_file=identity_file,
        known_hosts=paths.known_hosts,
        control_dir=paths.control_dir,
    )
    session = project_dir.name
    cmd, env = ntm_invocation(session, alias, agents, project_dir, projects_base)
    return Plan(
        env_name=name,
        container=spec,
        ssh=entry,
        project_dir=project_dir,
        ntm_session=session,
        ntm_command=cmd,
        ntm_env=env,
        host_key=host_key_public,
    )


def describe(plan: Plan) -> dict[str, object]:
    """A JSON-ready view of the plan for --dry-run (no key material)."""
    c = plan.container
    return {
        "container": c.name,
        "image": c.image,
        "publish": f"{c.bind}:{c.port}->{SSHD_PORT}",
        "labels": c.labels,
        "environment": c.environment,
        "mounts": [f"{m.source}:{m.target}{':ro' if m.read_only else ''}" for m in c.mounts],
        "files_injected_before_start": [f"{f.path} ({f.mode:04o})" for f in c.files],
        "agent_home": AGENT_HOME,
        "ssh_alias": plan.ssh.alias,
        "host_key_fingerprint": plan.host_key.fingerprint,
        "ntm_command": plan.ntm_display,
    }
