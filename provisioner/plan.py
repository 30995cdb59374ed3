"""Pure planning: request + facts -> everything Docker and SSH need.

Nothing here touches Docker, the network or the file system, so the whole
plan can be unit-tested without a daemon.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import __version__
from provisioner.branchmode import ORIGIN
from provisioner.config import (
    AGENT_HOME,
    AGENT_USER,
    AgentCounts,
    Containment,
    ExtraMount,
    ProvPaths,
)
from provisioner.host import CredentialMount
from provisioner.injection import (
    CA,
    CONF_DIR,
    HOSTS_FILE,
    PRIVATE_NETS,
    PROXY_PORT,
    Secret,
    squid_conf,
)
from provisioner.keys import PublicKey
from provisioner.limits import PROXY_MEMORY, PROXY_NANO_CPUS, describe
from provisioner.protect import Guard, git_excludes
from provisioner.spec import (
    EGRESS_NETWORK,
    LABEL_MANAGED,
    RELAY_PORT,
    SSHD_PORT,
    ContainerSpec,
    InjectedFile,
    KeyFile,
    Mount,
    NetworkSpec,
    Security,
    container_name,
)
from provisioner.sshconf import HostEntry, alias_for

__all__ = [  # the Docker-facing values, re-exported for the planner's callers
    "LABEL_MANAGED",
    "RELAY_PORT",
    "SSHD_PORT",
    "ContainerSpec",
    "InjectedFile",
    "KeyFile",
    "Mount",
    "NetworkSpec",
    "Security",
    "container_name",
]

LABEL_DEVCONTAINER = "prov.devcontainer"
LABEL_NAME = "prov.name"
LABEL_PORT = "prov.port"
LABEL_BIND = "prov.bind"
LABEL_PROJECT = "prov.project"
LABEL_IMAGE_HASH = "prov.image-hash"
LABEL_VERSION = "prov.version"
LABEL_HOST_KEY = "prov.host-key-fingerprint"
LABEL_MOUNTS = "prov.mounts"
LABEL_HOME_VOLUME = "prov.home-volume"
LABEL_FORWARD_AGENT = "prov.forward-agent"  # the named volume holding /home/agent
LABEL_AGENTS = "prov.agents"
LABEL_GPUS = "prov.gpus"
LABEL_ENV_KEYS = "prov.env-keys"
LABEL_HOME = "prov.home"  # which PROV_HOME made it: another one treats it as foreign
LABEL_SUDO = "prov.sudo"
LABEL_LIMITS = "prov.limits"
LABEL_EGRESS = "prov.egress"
LABEL_NETWORK = "prov.network"
LABEL_SSH = "prov.ssh"  # where the alias connects: HOST:PORT
LABEL_ROLE = "prov.role"  # "env", "egress" (the environment's proxy) or "slot"
LABEL_SLOT = "prov.slot"  # a proxy made as a slot, before its environment: the slot's ID
LABEL_SLOT_IMAGE = "prov.slot.image"  # the egress image a slot was made of, as asked
LABEL_PROTECT = "prov.protect"  # project paths covered read-only (".git" pinned writable)
LABEL_CREDENTIALS = "prov.credentials"  # tokens / copy / mount / none
LABEL_SECRETS = "prov.secrets"  # NAME@HOST:HEADER of what the proxy injects
LABEL_BRANCH = "prov.branch"  # branch mode: the clone's branch ("": the tree itself)

SESSION_ENV_PATH = "/etc/prov/environment"
KEYS_MOUNT = "/etc/prov/keys"
HOST_KEY_FILE = "ssh_host_ed25519_key"
AUTHORIZED_KEYS_FILE = "authorized_keys"
# Where the entrypoint installs it (sshd's AuthorizedKeysFile for agent).
AUTHORIZED_KEYS_PATH = "/etc/ssh/authorized_keys/agent"


# Capabilities an environment keeps (Docker's default set less FSETID, MKNOD,
# NET_RAW, SETFCAP, SETPCAP): what the entrypoint and sshd need as root, none
# of which the agent's own processes hold (sshd drops them with the UID).
ENV_CAPS = (
    "CHOWN",  # the entrypoint gives the home dir to agent
    "DAC_OVERRIDE",  # root reads the 0600 keys mount and writes root-only files
    "FOWNER",  # chmod of files root does not own (the way to the project)
    "SETUID",  # sshd switches to agent (and sudo to root, with --sudo)
    "SETGID",  # likewise for groups
    "SYS_CHROOT",  # sshd's unprivileged pre-auth child is chrooted
    "AUDIT_WRITE",  # PAM writes a login record; sshd refuses logins without it
    "KILL",  # sshd signals session processes of another UID
    "NET_BIND_SERVICE",  # sshd on port 22 where the engine does not lower the bar
    # Held by the entrypoint only: it removes the routes out and then drops
    # both from the bounding set before starting sshd.
    "NET_ADMIN",
    "SETPCAP",
)
# With --sudo, root in the environment may also do what package installs need.
SUDO_CAPS = ("FSETID", "SETFCAP")
# squid drops to its proxy user; the entrypoint gives it its certificate db.
EGRESS_CAPS = ("SETUID", "SETGID", "CHOWN")
# Held by the gate's entrypoint only, to set its own firewall; dropped from
# the bounding set before squid or socat start.
GATE_FIREWALL_CAPS = ("NET_ADMIN", "SETPCAP")
# The environment's CA (injection), in its keys dir: the entrypoint adds it to
# the system's trust (which Node, Python, curl and Rust's TLS read).
EGRESS_CA_FILE = "egress-ca.pem"


def proxy_name(name: str) -> str:
    return f"prov-{name}-egress"


def network_name(name: str) -> str:
    return f"prov-{name}-net"


def home_volume_name(name: str) -> str:
    return f"prov-{name}-home"


def keys_volume_name(name: str) -> str:
    """A remote environment's host key and authorized key (its keys dir there)."""
    return f"prov-{name}-keys"


def egress_volume_name(name: str) -> str:
    """A remote environment's egress proxy configuration (its egress dir there)."""
    return f"prov-{name}-egress"


def project_volume_name(name: str) -> str:
    """A remote environment's copy of the project (--sync rsync)."""
    return f"prov-{name}-project"


@dataclass(frozen=True)
class EgressPlan:
    """The environment's gate: a container on its internal network and on
    prov's outside network. In allowlist mode it is the egress proxy (the only
    way out); with a published port (any internal mode) it also relays that
    port to the environment's sshd, which is the only thing it relays to."""

    container: ContainerSpec
    allow: tuple[str, ...]
    proxying: bool = True  # runs the egress proxy (allowlist mode)
    # Its configuration (squid.conf, the environment's CA, extra CAs for the
    # real hosts): the egress dir's files, mounted read-only at CONF_DIR.
    files: tuple[KeyFile, ...] = ()
    secrets: tuple[Secret, ...] = ()

    @property
    def url(self) -> str:
        return f"http://{self.container.address}:{PROXY_PORT}"

    @property
    def relays(self) -> bool:
        return self.container.port != 0


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to log in, and the host key to insist on."""

    host: str
    port: int
    user: str
    host_key: PublicKey
    identity_file: Path  # private key, or a .pub whose private half is in ssh-agent


@dataclass(frozen=True)
class Placement:
    """What the engine's site (engine/site.py) answered, as the plan needs it.

    Here (the default) this machine's paths are mounted: the keys, the proxy's
    configuration, the agents' logins. Elsewhere none are: keys and the proxy's
    configuration come in volumes, logins are copied in, the project is an
    rsync copy in a volume (`project_copied`) or the engine host's own path,
    and the alias goes through `proxy_command`."""

    mounts_local_paths: bool = True
    project_copied: bool = False
    proxy_command: str | None = None


HERE = Placement()


@dataclass(frozen=True)
class Plan:
    env_name: str
    container: ContainerSpec
    network: NetworkSpec
    egress: EgressPlan | None
    ssh: HostEntry
    project_dir: Path
    ntm_command: tuple[str, ...]
    ntm_env: dict[str, str]
    host_key: PublicKey
    limits: str = ""  # in words: memory, CPUs, processes (limits.describe)
    disk: str = ""  # what bounds the agent's writes outside the project, in words

    @property
    def published(self) -> tuple[str, int] | None:
        """(bind, host port) where sshd is published, on the environment itself
        or on its gate; None when only the alias reaches it."""
        for spec in (self.container, self.egress.container if self.egress else None):
            if spec is not None and spec.port:
                return spec.bind, spec.port
        return None

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


def home_id(paths: ProvPaths) -> str:
    """A short, stable identity of PROV_HOME, carried by everything it makes."""
    import hashlib

    return hashlib.sha256(str(paths.home).encode()).hexdigest()[:16]


def build_network(
    name: str,
    subnet: str,
    gateway: str,
    containment: Containment,
    paths: ProvPaths,
    network: str = "",
) -> NetworkSpec:
    """The environment's network (`network`: its name, when not prov-NAME-net:
    a slot's)."""
    return NetworkSpec(
        name=network or network_name(name),
        subnet=subnet,
        gateway=gateway,
        internal=containment.internal,
        labels={LABEL_MANAGED: "true", LABEL_NAME: name, LABEL_HOME: home_id(paths)},
    )


def _limits_label(containment: Containment) -> str:
    """The limits as asked and sized (limits.resolve): `none` where lifted."""
    cpus = f"{containment.cpus:g}" if containment.cpus else "none"
    return f"pids={containment.pids_limit},memory={containment.memory or 'none'},cpus={cpus}"


def env_security(containment: Containment) -> Security:
    """`containment` as resolved (limits.resolve): 0 is no limit."""
    return Security(
        cap_add=ENV_CAPS + (SUDO_CAPS if containment.sudo else ()),
        # sudo is a setuid program: with no-new-privileges it cannot run at all.
        no_new_privileges=not containment.sudo,
        pids_limit=containment.pids_limit,
        memory=containment.memory or None,
        nano_cpus=int(containment.cpus * 1e9) if containment.cpus else None,
        disable_ipv6=containment.internal,
    )


# Outside its home and the project the agent (not root) may write only to the
# image's world-writable directories: each is memory of its own size, counted
# in the environment's memory limit, so none of it reaches the host's disk.
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/run/lock")
SCRATCH_SHARE = 4  # each may take a quarter of the memory limit
SCRATCH_NO_LIMIT = 2 << 30  # each, when the environment has no memory limit
RUN_LOCK_SIZE = 1 << 20


def scratch_each(containment: Containment) -> int:
    """Bytes each of /tmp and /var/tmp may hold (a resolved containment)."""
    each = containment.memory // SCRATCH_SHARE if containment.memory else SCRATCH_NO_LIMIT
    return each >> 20 << 20


def scratch_dirs(containment: Containment) -> tuple[tuple[str, int], ...]:
    """The agent's writable places outside its home, as sized tmpfs mounts."""
    each = scratch_each(containment)
    return tuple((d, RUN_LOCK_SIZE if d == "/run/lock" else each) for d in SCRATCH_DIRS)


@dataclass(frozen=True, kw_only=True)
class PlanInputs:
    """Everything the plan is made from: the request, as prepared, and the
    facts placement found (port, network, addresses)."""

    name: str
    image: str
    image_hash: str
    bind: str
    port: int
    project_dir: Path
    project_uid: int
    project_gid: int
    projects_base: Path
    credentials: tuple[CredentialMount, ...]
    authorized_key: PublicKey
    identity_file: Path
    host_key_public: PublicKey
    host_key_private: bytes = field(repr=False)
    agents: AgentCounts
    paths: ProvPaths
    network: NetworkSpec
    env_address: str
    containment: Containment
    egress_image: str = ""
    egress_address: str = ""
    egress_network: str = ""
    allow: tuple[str, ...] = ()
    extra_mounts: tuple[ExtraMount, ...] = ()
    session_env: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold secrets
    gpus: int | None = None
    agent_versions: dict[str, str] | None = None
    placement: Placement = HERE
    guards: tuple[Guard, ...] = ()
    credentials_mode: str = "tokens"
    branch: str | None = None
    secrets: tuple[Secret, ...] = ()
    egress_ca: CA | None = None
    upstream_cas: bytes = field(default=b"", repr=False)
    forward_ports: tuple[int, ...] = ()
    devcontainer: str = ""
    disk: str = ""  # limits.disk_text: what bounds the agent's writes outside the project
    home_bound: int = 0  # bytes of the home's own file system (homedisk); 0: a plain volume
    allow_nets: tuple[str, ...] = ()  # private ranges the proxy may reach (--allow-net)
    hosts: tuple[str, ...] = ()  # "ADDRESS NAME..." the proxy finds names at before DNS


def _env_labels(
    i: PlanInputs, mounts: tuple[Mount, ...], identity: str, egress_label: str
) -> dict[str, str]:
    """The environment container's labels: what `up` compares for drift, and
    what ls, status and egress show (names only, never a value)."""
    return {
        LABEL_MANAGED: "true",
        LABEL_NAME: i.name,
        LABEL_HOME: identity,
        LABEL_ROLE: "env",
        LABEL_PORT: str(i.port),
        LABEL_BIND: i.bind,
        LABEL_PROJECT: str(i.project_dir),
        LABEL_IMAGE_HASH: i.image_hash,
        LABEL_VERSION: __version__,
        LABEL_HOST_KEY: i.host_key_public.fingerprint,
        LABEL_MOUNTS: json.dumps(
            [f"{m.source}:{m.target}{':ro' if m.read_only else ''}" for m in mounts]
        ),
        LABEL_AGENTS: ",".join(f"{a} {v}" for a, v in sorted((i.agent_versions or {}).items()))
        or "none",
        LABEL_GPUS: "" if i.gpus is None else ("all" if i.gpus < 0 else str(i.gpus)),
        # Names only: the values may be secrets and labels are public.
        LABEL_ENV_KEYS: ",".join(k for k, _ in i.session_env),
        LABEL_SUDO: "yes" if i.containment.sudo else "no",
        LABEL_LIMITS: _limits_label(i.containment),
        LABEL_EGRESS: egress_label,
        LABEL_NETWORK: f"{i.network.name} {i.network.subnet}",
        LABEL_HOME_VOLUME: home_volume_name(i.name),
        LABEL_FORWARD_AGENT: "yes" if i.containment.forward_agent else "no",
        LABEL_PROTECT: ",".join(g.rel + ("/" if g.kind == "dir" else "") for g in i.guards),
        LABEL_CREDENTIALS: i.credentials_mode,
        LABEL_BRANCH: i.branch or "",
        # Names and hosts only, never a value.
        LABEL_SECRETS: ",".join(sorted(s.public() for s in i.secrets)),
        # The devcontainer.json applied, for postStartCommand at `prov start`.
        LABEL_DEVCONTAINER: i.devcontainer,
    }


PROXY_SECURITY = Security(
    cap_add=EGRESS_CAPS + GATE_FIREWALL_CAPS,
    no_new_privileges=True,
    pids_limit=256,
    memory=PROXY_MEMORY,
    nano_cpus=PROXY_NANO_CPUS,
    disable_ipv6=True,  # its firewall is IPv4's; no way round it
)


def _firewall_env(allow_nets: tuple[str, ...]) -> dict[str, str]:
    """What the gate's own rules let it open besides 80/443 to public
    addresses (its entrypoint's firewall; squid refuses the rest too)."""
    return {
        "PROV_ALLOW_NETS": " ".join(allow_nets),
        "PROV_PRIVATE_NETS": " ".join(n for n in PRIVATE_NETS if ":" not in n),
    }


def _gate(i: PlanInputs, identity: str, egress_label: str) -> EgressPlan | None:
    """The environment's gate: its egress proxy (allowlist mode) and the relay
    of a published port (any internal mode); None when it needs neither."""
    # On an internal network Docker publishes nothing: a published port is
    # carried by the gate, which relays it to sshd and to nothing else.
    relayed = i.port if i.containment.internal else 0
    proxying = i.containment.egress == "allowlist"
    if not (proxying or relayed):
        return None
    gate_env = {
        "PROV_LISTEN": i.egress_address,
        "PROV_PROXY": "1" if proxying else "0",
        **_firewall_env(i.allow_nets),
    }
    conf: tuple[KeyFile, ...] = ()
    if proxying:
        injected = i.secrets if i.egress_ca is not None else ()
        squid = squid_conf(
            i.egress_address,
            i.env_address,
            i.allow,
            injected,
            bool(i.upstream_cas),
            i.allow_nets,
            hosts_file=bool(i.hosts),
        )
        conf = (KeyFile("squid.conf", 0o644, squid.encode()),)
        if i.hosts:
            conf += (KeyFile(HOSTS_FILE, 0o644, "".join(f"{h}\n" for h in i.hosts).encode()),)
        if injected and i.egress_ca is not None:
            conf += (
                KeyFile("ca.pem", 0o644, i.egress_ca.cert_pem),
                KeyFile("ca.key", 0o644, i.egress_ca.key_pem),
            )
            if i.upstream_cas:
                conf += (KeyFile("upstream-cas.pem", 0o644, i.upstream_cas),)
    if relayed:
        gate_env["PROV_RELAY_TO"] = f"{i.env_address}:22"
        gate_env["PROV_RELAY_PORT"] = RELAY_PORT.split("/", 1)[0]
    proxy = ContainerSpec(
        name=proxy_name(i.name),
        image=i.egress_image,
        hostname=f"{i.name}-egress",
        labels={
            LABEL_MANAGED: "true",
            LABEL_NAME: i.name,
            LABEL_HOME: identity,
            LABEL_ROLE: "egress",
            LABEL_EGRESS: egress_label,
            LABEL_NETWORK: f"{i.network.name} {i.network.subnet}",
            LABEL_PORT: str(relayed),
        },
        environment=gate_env,
        bind=i.bind,
        port=relayed,
        container_port=RELAY_PORT,
        mounts=(Mount(i.paths.egress_dir(i.name), CONF_DIR, read_only=True),)
        if i.placement.mounts_local_paths and conf
        else (),
        ro_volumes=((egress_volume_name(i.name), CONF_DIR),)
        if not i.placement.mounts_local_paths and conf
        else (),
        volume_labels={LABEL_MANAGED: "true", LABEL_NAME: i.name, LABEL_HOME: identity},
        keys_dir=i.paths.keys_dir(i.name),
        key_files=(),
        files=(),
        security=PROXY_SECURITY,
        network=i.network.name,
        address=i.egress_address,
        extra_network=i.egress_network,
        tmpfs=("/run", "/tmp"),
        read_only=True,
    )
    return EgressPlan(proxy, i.allow, proxying, conf, i.secrets if i.egress_ca else ())


def slot_network(slot_id: str, subnet: str, gateway: str, paths: ProvPaths) -> NetworkSpec:
    """A slot's network (pure): internal, as an environment's in the default
    containment; the environment that claims the slot is made on it."""
    return NetworkSpec(
        name=slot_network_name(slot_id),
        subnet=subnet,
        gateway=gateway,
        internal=True,
        labels={
            LABEL_MANAGED: "true",
            LABEL_HOME: home_id(paths),
            LABEL_ROLE: "slot",
            LABEL_SLOT: slot_id,
        },
    )


def slot_spec(
    slot_id: str,
    egress_image: str,
    conf_dir: Path,
    network: NetworkSpec,
    address: str,
    allow_nets: tuple[str, ...] = (),
) -> ContainerSpec:
    """A slot's proxy (pure): the egress proxy made before its environment,
    at the proxy's `address` on the slot's `network` and on prov's outside
    network, allowing nothing and listening on its own loopback only (its
    configuration is injection.slot_conf) until an `up` claims it: makes the
    environment on that network, writes its configuration into `conf_dir`,
    renames it and sends SIGHUP. Its role label stays "slot"; it relays no
    port (an environment whose gate publishes one gets a proxy of its own)."""
    return ContainerSpec(
        name=slot_container_name(slot_id),
        image=egress_image,
        hostname="prov-egress",
        labels={
            **{k: v for k, v in network.labels.items() if k != LABEL_ROLE},
            LABEL_ROLE: "slot",
            LABEL_SLOT_IMAGE: egress_image,
            LABEL_NETWORK: f"{network.name} {network.subnet}",
        },
        # The ranges the user's egress-allow file allows: an environment that
        # asks for others (--allow-net) gets a gate of its own, as the
        # firewall is set when the container starts.
        environment={
            "PROV_LISTEN": "127.0.0.1",
            "PROV_PROXY": "1",
            "PROV_SLOT": "1",
            **_firewall_env(allow_nets),
        },
        bind="127.0.0.1",
        port=0,
        mounts=(Mount(conf_dir, CONF_DIR, read_only=True),),
        keys_dir=conf_dir,
        key_files=(),
        files=(),
        security=PROXY_SECURITY,
        network=network.name,
        address=address,
        extra_network=EGRESS_NETWORK,
        tmpfs=("/run", "/tmp"),
        read_only=True,
    )


def slot_container_name(slot_id: str) -> str:
    return f"prov-slot-{slot_id}"


def slot_network_name(slot_id: str) -> str:
    return f"prov-slot-{slot_id}-net"


def _env_environment(
    i: PlanInputs, project_in_volume: bool, egress: EgressPlan | None
) -> dict[str, str]:
    """The environment container's Docker env: what its entrypoint needs, and
    the proxy's address (not secret; `prov exec` gets it with no login)."""
    environment = {
        "PROV_HOME_VOLUME": "1",  # /home/agent is prov's volume, not a host mount
        # 1: that volume is its own file system: no sshd on anything else.
        "PROV_HOME_BOUND": "1" if i.home_bound else "0",
        "PROV_FORWARD_AGENT": "1" if i.containment.forward_agent else "0",
        "PROV_UID": str(i.project_uid),
        "PROV_GID": str(i.project_gid),
        "PROV_PROJECT_DIR": str(i.project_dir),
        "PROV_SUDO": "1" if i.containment.sudo else "0",
        "PROV_EGRESS": i.containment.egress,
    }
    if project_in_volume:
        environment["PROV_PROJECT_VOLUME"] = "1"
    excludes = git_excludes(i.guards)
    if excludes:  # the placeholder files: never committed by `git add -A` inside
        environment["PROV_GIT_EXCLUDE"] = excludes
    if egress is not None and egress.proxying:
        # Docker's env is right for these: they are not secret, and `prov exec`
        # (docker exec) gets them with no login in between.
        environment["PROV_PROXY"] = egress.url
        environment["PROV_PROXY_ADDR"] = i.egress_address
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            environment[var] = egress.url
        environment["NO_PROXY"] = environment["no_proxy"] = "localhost,127.0.0.1,::1"
        environment["NODE_USE_ENV_PROXY"] = "1"
    return environment


def _alias_entry(i: PlanInputs, alias: str) -> HostEntry:
    """The alias's host block. On an internal network Docker publishes nothing:
    the alias goes to the environment's own address, which only this machine
    (or, for a remote engine, its host) can reach."""
    ssh_host, ssh_port = (
        (i.env_address, 22) if i.containment.internal else (connect_host(i.bind), i.port)
    )
    return HostEntry(
        alias=alias,
        hostname=ssh_host,
        port=ssh_port,
        user=AGENT_USER,
        identity_file=i.identity_file,
        known_hosts=i.paths.known_hosts,
        control_dir=i.paths.control_dir,
        forward_agent=i.containment.forward_agent,
        proxy_command=i.placement.proxy_command,
        local_forwards=i.forward_ports,
    )


def _env_files(i: PlanInputs) -> tuple[tuple[KeyFile, ...], tuple[InjectedFile, ...]]:
    """The keys (and the proxy's CA) sshd reads, and the files put in before start."""
    key_files = (
        KeyFile(HOST_KEY_FILE, 0o600, i.host_key_private),
        KeyFile(AUTHORIZED_KEYS_FILE, 0o644, (i.authorized_key.line + "\n").encode()),
        *((KeyFile(EGRESS_CA_FILE, 0o644, i.egress_ca.cert_pem),) if i.egress_ca else ()),
    )
    if not i.session_env:
        return key_files, ()
    # A root-only file, not Docker's env (which `docker inspect` shows to anyone
    # with Docker access); pam_env hands it to every login.
    body = "".join(f"{key}={value}\n" for key, value in i.session_env)
    return key_files, (InjectedFile(SESSION_ENV_PATH, 0o600, body.encode()),)


def build_plan(i: PlanInputs) -> Plan:
    alias = alias_for(i.name)
    # The project in a volume of the environment's own, at the same path: a
    # remote engine's rsync copy, or branch mode's clone.
    project_in_volume = i.placement.project_copied or i.branch is not None
    here = i.placement.mounts_local_paths
    mounts = (
        *(() if project_in_volume else (Mount(i.project_dir, str(i.project_dir)),)),
        # Branch mode: what the clone is made from, read-only (the tree is not mounted).
        *((Mount(i.project_dir / ".git", ORIGIN, read_only=True),) if i.branch is not None else ()),
        # On a remote engine credentials are copied in, never mounted.
        *((Mount(c.source, c.target) for c in i.credentials) if here else ()),
        *(Mount(m.source, m.target, m.read_only) for m in i.extra_mounts),
    )
    # Over the project mount: what the host executes from, read-only (a mount
    # point each, so it cannot be renamed, replaced or made), and .git pinned.
    guarded = tuple(
        Mount(i.project_dir / g.rel, str(i.project_dir / g.rel), read_only=not g.writable)
        for g in i.guards
    )
    identity = home_id(i.paths)
    egress_label: str = i.containment.egress
    if i.containment.egress == "allowlist":
        egress_label += ":" + ",".join((*i.allow, *i.allow_nets, *i.hosts))
    labels = _env_labels(i, mounts, identity, egress_label)
    key_files, files = _env_files(i)
    egress = _gate(i, identity, egress_label)
    environment = _env_environment(i, project_in_volume, egress)
    spec = ContainerSpec(
        name=container_name(i.name),
        image=i.image,
        hostname=i.name,
        labels=labels,
        environment=environment,
        bind=i.bind,
        port=0 if i.containment.internal else i.port,
        # Not in LABEL_MOUNTS: every environment has it, at a path of its own.
        mounts=(*mounts, *guarded, Mount(i.paths.keys_dir(i.name), KEYS_MOUNT, read_only=True))
        if here
        else (*mounts, *guarded),
        volumes=(
            (home_volume_name(i.name), AGENT_HOME),
            *(((project_volume_name(i.name), str(i.project_dir)),) if project_in_volume else ()),
        ),
        ro_volumes=() if here else ((keys_volume_name(i.name), KEYS_MOUNT),),
        volume_labels={LABEL_MANAGED: "true", LABEL_NAME: i.name, LABEL_HOME: identity},
        keys_dir=i.paths.keys_dir(i.name),
        key_files=key_files,
        files=files,
        security=env_security(i.containment),
        scratch=scratch_dirs(i.containment),
        network=i.network.name,
        address=i.env_address,
        gpus=i.gpus,
    )
    entry = _alias_entry(i, alias)
    labels[LABEL_SSH] = f"{entry.hostname}:{entry.port}"
    # NTM names the session after the project dir (NTM-CONTRACT.md).
    cmd, env = ntm_invocation(i.project_dir.name, alias, i.agents, i.project_dir, i.projects_base)
    return Plan(
        env_name=i.name,
        container=spec,
        network=i.network,
        egress=egress,
        ssh=entry,
        project_dir=i.project_dir,
        ntm_command=cmd,
        ntm_env=env,
        host_key=i.host_key_public,
        limits=describe(i.containment),
        disk=i.disk,
    )
