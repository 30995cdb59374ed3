"""What the user asked for, validated, as frozen dataclasses; and prov's paths."""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from provisioner.errors import ConfigError, UsageError
from provisioner.fsutil import read_user_file
from provisioner.injection import Secret

DEFAULT_BASE_IMAGE = "ubuntu:24.04"
DEFAULT_TIMEOUT = 60.0
DEFAULT_BIND = "127.0.0.1"
DEFAULT_FIRST_PORT = 2222
AGENT_USER = "agent"
AGENT_HOME = "/home/agent"

# Docker allows [a-zA-Z0-9][a-zA-Z0-9_.-]*; tmux rejects '.' and ':' in session
# names and NTM uses the name as the session, so the intersection is used.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def validate_name(name: str) -> str:
    if name != name.lower() and _NAME_RE.match(name.lower()):
        raise UsageError(
            f"Invalid environment name {name!r}: it has upper-case letters",
            "OpenSSH lower-cases host names, so prov-MyApp and prov-myapp would be one "
            "alias with one pinned host key.",
            f"use {name.lower()!r}.",
        )
    if not _NAME_RE.match(name):
        raise UsageError(
            f"Invalid environment name {name!r}",
            "A name must start with a letter or digit and contain only letters, digits, "
            "'-' and '_' (at most 63 characters), so that it is valid for Docker, "
            "tmux and ssh alike (tmux renames a session with '.' or ':', so NTM would not "
            "find it).",
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


KNOWN_AGENTS = ("claude", "codex", "gemini")
# Pinned so the same inputs build the same image; `--agent-version` overrides.
AGENT_VERSIONS = {"claude": "2.1.332", "codex": "0.171.0", "gemini": "0.61.0"}
# Passed into the environment when set on the host; their values are never shown.
API_KEY_VARS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY")
# tokens: the agents' login files, shared (the default here); copy: a private
# copy of their dirs; mount: their dirs themselves (the agent can write what
# the host's CLIs run); none.
CredentialsMode = Literal["tokens", "copy", "mount", "none"]
CREDENTIAL_MODES: tuple[CredentialsMode, ...] = ("tokens", "copy", "mount", "none")
# How a remote environment gets the project: rsync pushes it into a volume of
# its own; none bind-mounts the same path on the engine host, which must exist.
SyncMode = Literal["rsync", "none"]
SYNC_MODES: tuple[SyncMode, ...] = ("rsync", "none")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VERSION_RE = re.compile(r"^[0-9A-Za-z.+-]{1,64}$")


def parse_agents(text: str) -> tuple[str, ...]:
    """`claude,codex,gemini`, any subset, or `none`."""
    if text.strip().lower() == "none":
        return ()
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in KNOWN_AGENTS]
    if unknown or not names:
        raise UsageError(
            f"Unknown agent(s) in --agents {text!r}",
            f"prov installs {', '.join(KNOWN_AGENTS)}.",
            "pass a comma-separated subset such as claude,codex, or `none`.",
        )
    return names


def parse_agent_versions(items: list[str]) -> dict[str, str]:
    versions = dict(AGENT_VERSIONS)
    for item in items:
        agent, sep, version = item.partition("=")
        if not sep or agent not in KNOWN_AGENTS or not _VERSION_RE.match(version):
            raise UsageError(
                f"Invalid --agent-version {item!r}",
                "It takes AGENT=VERSION with AGENT one of " + ", ".join(KNOWN_AGENTS) + ".",
                "e.g. --agent-version claude=2.1.300.",
            )
        versions[agent] = version
    return versions


def parse_env(items: list[str], env_file: Path | None) -> tuple[tuple[str, str], ...]:
    """--env KEY=VALUE (or KEY, taken from prov's own environment) and --env-file lines."""
    lines: list[tuple[str, str]] = []
    if env_file is not None:
        text = read_user_file(env_file, "--env-file")
        lines += [
            (str(env_file), ln.removesuffix("\r"))
            for ln in text.split("\n")
            if ln.strip() and not ln.lstrip().startswith("#")
        ]
    lines += [("--env", item) for item in items]
    pairs: dict[str, str] = {}
    for source, line in lines:
        # The value exactly as written (spaces included); only the key is trimmed.
        key, sep, value = line.lstrip().removeprefix("export ").partition("=")
        key = key.strip()
        if not _ENV_KEY_RE.match(key):
            raise UsageError(
                f"Invalid environment variable in {source}: {key!r}",
                "Names are letters, digits and _, not starting with a digit.",
                "write KEY=VALUE.",
            )
        if not sep:
            if key not in os.environ:
                raise UsageError(
                    f"{source} names {key} without a value, and it is not set here",
                    "",
                    f"write {key}=VALUE or export {key} first.",
                )
            value = os.environ[key]
        pairs[key] = value
    return tuple(pairs.items())


# pam_env, which gives every login its session variables, reads lines of at
# most 8 KiB (a longer one is lost, and so is every line after it).
SESSION_LINE_MAX = 8000


def check_session_value(key: str, value: str) -> None:
    """Refuse a session variable that would not reach the session exactly as
    given: pam_env strips quotes around a value, ends a value at `#`, joins a
    line ending in a backslash with the next, and loses long lines."""
    problem = ""
    if "\n" in value or "\r" in value:
        problem = "it spans several lines"
    elif "\0" in value:
        problem = "it holds a NUL byte"
    elif any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        problem = "it is not valid UTF-8"
    elif "#" in value:
        problem = "it holds '#', where pam_env (which gives sessions their variables) cuts it"
    elif value[:1] in ("'", '"'):
        problem = "it starts with a quote, which pam_env strips"
    elif value.endswith("\\"):
        problem = "it ends with a backslash, which makes pam_env join it with the next variable"
    elif len(f"{key}={value}".encode()) > SESSION_LINE_MAX:
        problem = f"it is longer than pam_env's line limit (~{SESSION_LINE_MAX} bytes)"
    if problem:
        raise UsageError(
            f"The session variable {key} cannot be passed as it is",
            f"Its value would reach sessions changed or not at all: {problem}.",
            "put the value in a file in the project (the same path inside) and have the "
            "tool read it from there, or use a value without that.",
        )


@dataclass(frozen=True)
class ExtraMount:
    source: Path
    target: str
    read_only: bool
    origin: str = "--mount"  # who asked: --mount, or a devcontainer.json


def parse_mount(text: str) -> ExtraMount:
    parts = text.split(":")
    read_only = len(parts) == 3 and parts[2] == "ro"
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise UsageError(
            f"Invalid --mount {text!r}",
            "It takes SRC:DST or SRC:DST:ro.",
            "e.g. --mount ~/datasets:/data:ro.",
        )
    source = Path(parts[0]).expanduser().absolute()
    if not parts[1].startswith("/"):
        raise UsageError(
            f"Invalid --mount {text!r}",
            "DST must be an absolute path.",
            "e.g. --mount ~/datasets:/data:ro.",
        )
    if not source.exists():
        # Docker would create a root-owned empty directory in its place.
        raise ConfigError(
            f"--mount source {source} does not exist", "", "create it first, or fix the path."
        )
    return ExtraMount(source, posixpath.normpath(parts[1]), read_only)


def parse_gpus(text: str) -> int:
    """`all` -> -1 (Docker's "every GPU"), or a positive count."""
    if text == "all":
        return -1
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise UsageError(
        f"Invalid --gpus {text!r}",
        "It takes `all` or a number of GPUs.",
        "e.g. --gpus all or --gpus 1.",
    )


@dataclass(frozen=True)
class Extras:
    """What the project's environment adds to prov's defaults (issue: environments)."""

    agents: tuple[str, ...] = KNOWN_AGENTS
    agent_versions: tuple[tuple[str, str], ...] = tuple(AGENT_VERSIONS.items())
    ca_certs: tuple[Path, ...] = ()
    from_image: str | None = None
    dockerfile: Path | None = None
    gpus: int | None = None
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold secrets
    mounts: tuple[ExtraMount, ...] = ()
    # None: the default, `tokens` on this machine's engine, `none` on a remote one.
    credentials: CredentialsMode | None = None
    # --protect: more project paths the host runs, covered read-only inside.
    protect: tuple[str, ...] = ()
    # Branch mode: the agent's own clone on this branch (None: the tree itself;
    # "": the default, prov/NAME).
    branch: str | None = None
    # --secret / --secret-file: injected by the proxy, a placeholder inside
    # (injection.Secret keeps its value out of any repr); --drop-secret NAME.
    secrets: tuple[Secret, ...] = ()
    drop_secrets: tuple[str, ...] = ()
    sync: SyncMode | None = None  # remote engines only; None: rsync
    # The project's devcontainer.json is used unless no_devcontainer; this
    # path instead of the one found in the project.
    devcontainer: Path | None = None
    no_devcontainer: bool = False

    def __post_init__(self) -> None:
        if self.credentials is not None and self.credentials not in CREDENTIAL_MODES:
            raise UsageError(
                f"Invalid --credentials {self.credentials!r}",
                "It takes " + ", ".join(CREDENTIAL_MODES) + ".",
                "use `tokens` (default: the login files only), `copy`, `mount` or `none`.",
            )
        if self.sync is not None and self.sync not in SYNC_MODES:
            raise UsageError(
                f"Invalid --sync {self.sync!r}",
                "It takes rsync (push the project into the environment at up; `prov sync` "
                "moves changes either way) or none (the same path must exist on the engine "
                "host).",
                "use --sync rsync or --sync none.",
            )
        if self.branch:  # "" is prov/NAME, each environment's own
            from provisioner.branchmode import validate_branch

            validate_branch(self.branch)
        if self.protect:
            from provisioner.protect import normal_rel

            for path in self.protect:
                normal_rel(path)


EgressMode = Literal["allowlist", "open", "none"]
EGRESS_MODES: tuple[EgressMode, ...] = ("allowlist", "open", "none")
DEFAULT_EGRESS: EgressMode = "allowlist"
DEFAULT_PIDS_LIMIT = 4096
_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$"
)
_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)i?b?$")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MIN_DISK = 256 << 20  # the smallest home file system --disk takes
MIN_MEMORY = 64 << 20


def egress_mode(text: str) -> EgressMode:
    """--egress as its mode (Containment refuses anything else, saying what)."""
    return cast(EgressMode, text.strip().lower())


def credentials_mode(text: str | None) -> CredentialsMode | None:
    return None if text is None else cast(CredentialsMode, text)


def sync_mode(text: str | None) -> SyncMode | None:
    return None if text is None else cast(SyncMode, text)


def parse_domain(text: str) -> str:
    """A DNS name for the egress allowlist (it also allows its subdomains)."""
    domain = text.strip().lower().removeprefix("*.").removeprefix(".").rstrip(".")
    if not _DOMAIN_RE.match(domain) or domain.rsplit(".", 1)[-1].isdigit():
        raise UsageError(
            f"Invalid --allow {text!r}",
            "It takes a domain name such as github.com (its subdomains are allowed too); "
            "not a URL, an IP address or a pattern.",
            "e.g. --allow github.com --allow example.org.",
        )
    return domain


NO_LIMIT = ("none", "unlimited")  # --memory none, --cpus none: 0, no limit


def parse_net(text: str) -> str:
    """An address range the egress proxy may reach although it is private,
    loopback or link-local (--allow-net 10.20.0.0/16, or one address)."""
    import ipaddress

    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise UsageError(
            f"Invalid --allow-net {text!r}",
            "It takes an address range (CIDR) such as 10.20.0.0/16, or one address.",
            "e.g. --allow-net 192.168.50.0/24 for a mirror on your network.",
        ) from None
    return str(net)


def _size(text: str, flag: str, minimum: int, takes: str, example: str) -> int:
    """A size (`4g`, `512m`, `1.5G`, bytes) of at least `minimum` in bytes;
    `none` -> 0. Anything else is a usage error naming `flag`."""
    if text.strip().lower() in NO_LIMIT:
        return 0
    match = _SIZE_RE.match(text.strip().lower())
    size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)]) if match else 0
    if size < minimum:
        raise UsageError(f"Invalid {flag} {text!r}", takes, example)
    return size


def parse_memory(text: str) -> int:
    """`4g`, `512m`, `1.5G`, or bytes -> bytes; `none` -> 0 (no limit)."""
    return _size(
        text,
        "--memory",
        MIN_MEMORY,
        "It takes a size of at least 64m, such as 512m or 4g, or none (no limit).",
        "e.g. --memory 8g (the default is half the engine host's memory).",
    )


def parse_disk(text: str) -> int:
    """`20g`, `512m` -> bytes of the home's file system; `none` -> 0 (a plain volume)."""
    return _size(
        text,
        "--disk",
        MIN_DISK,
        "It takes a size of at least 256m, such as 20g, or none (no bound).",
        "e.g. --disk 20g (the default is a quarter of the engine host's free space, at most 64g).",
    )


def parse_cpus(value: float | str) -> float:
    """`2`, `0.5` -> CPUs; `none` -> 0 (no limit)."""
    shown = value if isinstance(value, str) else f"{value:g}"
    if isinstance(value, str):
        if value.strip().lower() in NO_LIMIT:
            return 0.0
        try:
            value = float(value)
        except ValueError:
            value = -1.0
    if not 0.01 <= value <= 1024:
        raise UsageError(
            f"Invalid --cpus {shown}",
            "It takes the number of CPUs the environment may use, e.g. 2 or 0.5, or none.",
            "e.g. --cpus 2 (the default is half the engine host's CPUs, at least 1).",
        )
    return value


@dataclass(frozen=True)
class Containment:
    """How the environment holds its agent: root, limits, network (issue: containment)."""

    sudo: bool = False
    pids_limit: int = DEFAULT_PIDS_LIMIT
    # None: the default, sized from the engine host at `up` (limits.resolve);
    # 0: no limit, as asked with `none`.
    memory: int | None = None  # bytes
    cpus: float | None = None
    disk: int | None = None  # bytes of the home's own file system (homedisk)
    egress: EgressMode = DEFAULT_EGRESS
    allow: tuple[str, ...] = ()  # --allow domains, on top of the default list
    # --allow-net ranges: private, loopback or link-local addresses the proxy
    # may reach after all (refused by default, whatever name resolves to them).
    allow_nets: tuple[str, ...] = ()
    allow_unsafe_mount: bool = False
    forward_agent: bool = False  # the user's ssh-agent reachable from inside

    def __post_init__(self) -> None:
        if self.egress not in EGRESS_MODES:
            raise UsageError(
                f"Invalid --egress {self.egress!r}",
                "It takes " + ", ".join(EGRESS_MODES) + ".",
                "use allowlist (default: only allowed domains, through prov's proxy), "
                "open (no restriction) or none (no network at all).",
            )
        if not 1 <= self.pids_limit <= 4_194_304:
            raise UsageError(
                f"Invalid --pids-limit {self.pids_limit}",
                "It takes the most processes the environment may run at once.",
                "e.g. --pids-limit 4096 (the default).",
            )
        for domain in self.allow:
            parse_domain(domain)
        for net in self.allow_nets:
            parse_net(net)

    @property
    def internal(self) -> bool:
        """Whether the environment's network is internal (no route out)."""
        return self.egress != "open"


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
    extras: Extras = Extras()
    containment: Containment = Containment()

    @property
    def publishes(self) -> bool:
        """Whether SSH gets a host port: always with --egress open (on the
        environment itself), else when --port or a --bind beyond loopback asks
        for one (carried by the environment's gate; the alias needs none)."""
        return not self.containment.internal or self.port is not None or not is_loopback(self.bind)

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
        data = os.environ.get("XDG_DATA_HOME", "")
        # The XDG base dir spec: a relative XDG_DATA_HOME is invalid and ignored.
        base = Path(data) if data and Path(data).is_absolute() else Path.home() / ".local/share"
        home = Path(raw).expanduser() if raw else base / "prov"
        return cls(home.absolute())

    @property
    def ssh_config(self) -> Path:
        return self.home / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.home / "known_hosts"

    @property
    def lock(self) -> Path:
        """Serialises edits of shared files, port and subnet choice, placement."""
        return self.home / ".lock"

    @property
    def egress_defaults(self) -> Path:
        """Cache of the default egress allowlist (registries read from config)."""
        return self.home / "cache" / "egress-defaults.json"

    @property
    def ca_cache(self) -> Path:
        """CA files already read, as PEM, under the SHA-256 of their bytes."""
        return self.home / "cache" / "ca"

    @property
    def engine_sizes_cache(self) -> Path:
        """Cache of what each engine host has (Docker's /info: memory, CPUs,
        storage driver), which sizes the default limits: /info takes ~40 ms."""
        return self.home / "cache" / "engine-sizes.json"

    @property
    def npm_registry_cache(self) -> Path:
        """Cache of the npm registry this host's npm uses (npm takes ~0.5 s to say)."""
        return self.home / "cache" / "npm-registry.json"

    @property
    def keys_lock(self) -> Path:
        """Serialises key creation, apart from `lock` so that environments can be
        prepared while others are placed (never held while waiting for `lock`)."""
        return self.home / ".keys.lock"

    def placeholders_ledger(self, name: str) -> Path:
        """The placeholders an environment's protection made in its project."""
        return self.env_dir(name) / "placeholders.json"

    def project_acl_ledger(self, name: str) -> Path:
        """What an environment's ACL grant on a root-owned project found before it."""
        return self.env_dir(name) / "project-acl.json"

    @property
    def envs(self) -> Path:
        return self.home / "envs"

    def env_dir(self, name: str) -> Path:
        return self.envs / name

    def egress_dir(self, name: str) -> Path:
        """The egress proxy's configuration (its allowlist, the secrets it injects,
        the environment's CA): mounted read-only into the proxy, never elsewhere."""
        return self.env_dir(name) / "egress"

    def keys_dir(self, name: str) -> Path:
        """What the container's sshd needs (host key, authorized key) and nothing
        else of the env dir (never the client key): mounted read-only."""
        return self.env_dir(name) / "sshd"

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


def user_known_hosts() -> Path:
    return Path.home() / ".ssh" / "known_hosts"
