"""The project's devcontainer.json, read as prov applies it.

A repository's `.devcontainer/devcontainer.json` (or `.devcontainer.json`)
says what its environment is: an image or a Dockerfile, features, variables,
mounts, forwarded ports and the commands that set it up. prov gives that
environment, with its own SSH, agents and containment on top: what would
break containment (`--privileged`, the host's network, added capabilities,
the Docker socket, root) is refused naming the line; what prov does not do is
named once at `up`, never dropped silently; `initializeCommand`, which would
run on this machine, never runs.

Everything here is pure but `find` and `read` (they read the project): the
file's text and the image's `devcontainer.metadata` label come in, a frozen
`DevContainer` goes out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import ConfigError, UsageError

CANDIDATES = (".devcontainer/devcontainer.json", ".devcontainer.json")
METADATA_LABEL = "devcontainer.metadata"
# prov's tags for the images a devcontainer.json describes (image.py builds them).
DEVCONTAINER_REPO = "prov-devcontainer"

# What prov honours (beyond the image itself); the rest is named at `up`.
_HONOURED = {
    "name",
    "$schema",
    "image",
    "build",
    "dockerFile",
    "context",
    "features",
    "overrideFeatureInstallOrder",
    "containerEnv",
    "remoteEnv",
    "mounts",
    "runArgs",
    "forwardPorts",
    "onCreateCommand",
    "updateContentCommand",
    "postCreateCommand",
    "postStartCommand",
    "initializeCommand",
    "hostRequirements",
    "remoteUser",
    "containerUser",
    "updateRemoteUserUID",
    "customizations",
    "id",
    "privileged",
    "capAdd",
    "securityOpt",
}
# Properties that ask for what prov does its own way, with what prov does instead.
_OWN_WAY = {
    "workspaceFolder": "the project is at its own path inside (NTM needs the same path)",
    "workspaceMount": "the project is mounted at its own path inside (NTM needs the same path)",
    "overrideCommand": "prov's entrypoint always runs (it starts sshd)",
    "postAttachCommand": "there is no attach: sessions come over SSH",
    "waitFor": "up returns when SSH works and the create commands have run",
    "shutdownAction": "`prov down` stops the environment",
    "appPort": "use forwardPorts (through the alias)",
    "portsAttributes": "ports are forwarded through the alias as listed",
    "otherPortsAttributes": "ports are forwarded through the alias as listed",
    "userEnvProbe": "sessions get the image's environment and the file's variables",
    "init": "prov's entrypoint is the container's first process",
    "entrypoint": "prov's entrypoint is the container's first process",
}
_COMMANDS = ("onCreateCommand", "updateContentCommand", "postCreateCommand")
ROOT_USERS = ("root", "0")


@dataclass(frozen=True)
class Build:
    """`build`: a Dockerfile, its context, args and target (paths on this machine)."""

    dockerfile: Path
    context: Path
    args: tuple[tuple[str, str], ...] = ()
    target: str | None = None


@dataclass(frozen=True)
class Command:
    """One lifecycle command: argv (a string runs with /bin/sh -c), and its
    name where the file gave several to run in parallel."""

    phase: str  # onCreateCommand, ...
    argv: tuple[str, ...]
    label: str = ""

    def shown(self) -> str:
        shell = self.argv[:2] == ("/bin/sh", "-c")
        text = self.argv[2] if shell and len(self.argv) == 3 else shlex.join(self.argv)
        return f"{self.phase}{f' {self.label}' if self.label else ''}: {text}"


@dataclass(frozen=True)
class DevContainer:
    """What prov takes from devcontainer.json (and the image's metadata)."""

    path: Path
    digest: str  # sha256 of the file's bytes
    image: str | None = None
    build: Build | None = None
    features: tuple[str, ...] = ()
    container_env: tuple[tuple[str, str], ...] = ()
    remote_env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[tuple[str, str, bool], ...] = ()  # (source, target, read-only)
    forward_ports: tuple[int, ...] = ()
    # Groups run one after another: the create phases in order, in each the
    # features' commands before the file's; a group's commands (an object's
    # entries) run in parallel.
    create_commands: tuple[tuple[Command, ...], ...] = ()
    start_commands: tuple[tuple[Command, ...], ...] = ()
    gpu: str = ""  # "", "all" (required) or "optional"
    memory: str | None = None
    cpus: float | None = None
    env: tuple[tuple[str, str], ...] = ()  # runArgs -e
    unsupported: tuple[str, ...] = ()  # named at up
    notes: tuple[str, ...] = ()  # what prov does in place of something asked

    @property
    def uses_cli(self) -> bool:
        """Features are OCI artifacts: the devcontainers CLI builds them."""
        return bool(self.features)


def find(project: Path, asked: Path | None) -> Path | None:
    """The file to use: `asked` (which must exist), else the first of
    CANDIDATES in the project, else None."""
    if asked is not None:
        path = asked.expanduser().absolute()
        if not path.is_file():
            raise ConfigError(
                f"--devcontainer {path} does not exist",
                "",
                "pass the path of a devcontainer.json, or --no-devcontainer to use none.",
            )
        return path
    for rel in CANDIDATES:
        path = project / rel
        if path.is_file():
            return path
    return None


def read(path: Path) -> tuple[dict[str, Any], str, str]:
    """(the file's object, its text, its sha256). JSON with comments and
    trailing commas, as the spec allows."""
    import json5

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}", f"{exc.strerror}.", "check the file.") from None
    text = raw.decode("utf-8", errors="replace")
    try:
        data = json5.loads(text)
    except ValueError as exc:
        where = str(exc).replace("<string>", str(path))
        raise ConfigError(
            f"{path} is not valid JSON (with comments)",
            f"The parser said: {where}.",
            "fix the file, or pass --no-devcontainer to ignore it.",
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} does not hold a JSON object", "", "fix the file, or pass --no-devcontainer."
        )
    return data, text, hashlib.sha256(raw).hexdigest()


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first occurrence of `needle` (0 if absent)."""
    index = text.find(needle)
    return text.count("\n", 0, index) + 1 if index >= 0 else 0


@dataclass(frozen=True)
class Context:
    """What ${...} variables in the file stand for."""

    project: Path
    name: str
    host_env: Mapping[str, str] = field(default_factory=dict, repr=False)


_VAR_RE = re.compile(r"\$\{([^}]+)\}")


def substitute(value: str, ctx: Context, container_env: Mapping[str, str] | None = None) -> str:
    """The spec's variables: localWorkspaceFolder(Basename), containerWorkspace-
    Folder(Basename) (the same path here), localEnv:VAR[:default],
    containerEnv:VAR[:default] (remoteEnv only), devcontainerId."""

    def one(match: re.Match[str]) -> str:
        key, _, rest = match.group(1).partition(":")
        if key in ("localWorkspaceFolder", "containerWorkspaceFolder"):
            return str(ctx.project)
        if key in ("localWorkspaceFolderBasename", "containerWorkspaceFolderBasename"):
            return ctx.project.name
        if key == "devcontainerId":
            return hashlib.sha256(f"prov-{ctx.name}".encode()).hexdigest()[:16]
        if key in ("localEnv", "env"):
            var, _, default = rest.partition(":")
            return ctx.host_env.get(var, default)
        if key == "containerEnv" and container_env is not None:
            var, _, default = rest.partition(":")
            return container_env.get(var, default)
        return match.group(0)

    return _VAR_RE.sub(one, value)


def _commands(phase: str, value: object, where: str) -> tuple[Command, ...]:
    if value is None or value == "" or value == []:
        return ()
    if isinstance(value, str):
        return (Command(phase, ("/bin/sh", "-c", value)),)
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return (Command(phase, tuple(value)),)
    if isinstance(value, dict):
        found: list[Command] = []
        for label, item in value.items():
            found += [
                Command(phase, c.argv, str(label)) for c in _commands(phase, item, where) if c.argv
            ]
        return tuple(found)
    raise ConfigError(
        f"{where}: {phase} is neither a string, a list of strings nor an object of them",
        f"It is {json.dumps(value)[:200]}.",
        "fix the file, or pass --no-devcontainer.",
    )


def _env(value: object, phase: str, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {phase} is not an object", "", "fix the file.")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(key)):
            raise ConfigError(
                f"{where}: {phase} has an invalid variable name {key!r}",
                "Names are letters, digits and _, not starting with a digit.",
                "fix the file.",
            )
        if item is not None:
            out[str(key)] = str(item)
    return out


def _mount(item: object, ctx: Context, where: str) -> tuple[str, str, bool] | str:
    """(source, target, read-only) of a bind mount, or why it is not one prov makes."""
    fields: dict[str, str] = {}
    if isinstance(item, str):
        for part in substitute(item, ctx).split(","):
            key, sep, val = part.partition("=")
            fields[key.strip().lower()] = val.strip() if sep else "true"
    elif isinstance(item, dict):
        fields = {str(k).lower(): substitute(str(v), ctx) for k, v in item.items()}
    else:
        raise ConfigError(f"{where}: a mount is neither a string nor an object", "", "fix it.")
    kind = fields.get("type", "volume" if "source" not in fields else "bind")
    source = fields.get("source") or fields.get("src", "")
    target = fields.get("target") or fields.get("destination") or fields.get("dst", "")
    read_only = fields.get("readonly", fields.get("ro", "false")).lower() in ("true", "1", "")
    if kind != "bind":
        return f"mount of type {kind} at {target or '?'} (prov makes bind mounts only)"
    if not source or not target:
        raise ConfigError(
            f"{where}: a bind mount needs a source and a target",
            f"It is {json.dumps(item)[:200]}.",
            "write source=PATH,target=PATH,type=bind.",
        )
    return source, target, read_only


# runArgs that hand the agent the host: refused, naming the line.
_REFUSED_FLAGS = {
    "--privileged": "gives the container every capability and the host's devices",
    "--cap-add": "adds capabilities prov's containment drops",
    "--security-opt": "changes the seccomp/AppArmor confinement",
    "--device": "gives the container a host device",
    "--pid": "shares a namespace with the host",
    "--ipc": "shares a namespace with the host",
    "--uts": "shares a namespace with the host",
    "--userns": "shares a namespace with the host",
    "--cgroupns": "shares a namespace with the host",
    "--cgroup-parent": "moves the container out of Docker's limits",
}
_NAMESPACE_OK = ("private", "container:", "")
_VALUED = {
    "--memory",
    "-m",
    "--cpus",
    "-e",
    "--env",
    "--gpus",
    "--network",
    "--net",
    "-v",
    "--volume",
    "--mount",
    "-u",
    "--user",
    "--cap-add",
    "--security-opt",
    "--device",
    "--pid",
    "--ipc",
    "--uts",
    "--userns",
    "--cgroupns",
    "--cgroup-parent",
    "--name",
    "--hostname",
    "-h",
    "--label",
    "-l",
    "--add-host",
    "--shm-size",
    "--ulimit",
    "--env-file",
    "-p",
    "--publish",
    "--dns",
    "--workdir",
    "-w",
    "--entrypoint",
}


def _split_run_args(args: list[str]) -> list[tuple[str, str]]:
    """(flag, value) pairs: `--flag=value`, `--flag value`, `-e value`, or a bare flag."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            flag, _, value = arg.partition("=")
            pairs.append((flag, value))
        elif arg in _VALUED and i + 1 < len(args):
            pairs.append((arg, args[i + 1]))
            i += 1
        else:
            pairs.append((arg, ""))
        i += 1
    return pairs


def _refuse(where: str, text: str, needle: str, why: str) -> None:
    line = line_of(text, needle)
    raise UsageError(
        f"Refusing {where}{f' line {line}' if line else ''}: {needle}",
        f"It {why}; the agent inside is untrusted and would get this machine with it. "
        "Nothing was created.",
        "remove it from the file (prov keeps the agent without root, on a network of its "
        "own), or pass --no-devcontainer to ignore the file.",
    )


_SOCKETS = ("docker.sock", "containerd.sock", "podman.sock")


def _run_args(args: object, text: str, where: str, ctx: Context, acc: _Merged) -> tuple[str, ...]:
    if args is None:
        return ()
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{where}: runArgs is not a list of strings", "", "fix the file.")
    unsupported: list[str] = []
    for flag, value in _split_run_args([substitute(a, ctx) for a in args]):
        shown = f"{flag} {value}".strip() if value else flag
        needle = flag if value == "" else (f"{flag}={value}" if f"{flag}={value}" in text else flag)
        if flag in _REFUSED_FLAGS:
            if flag in ("--pid", "--ipc", "--uts", "--userns", "--cgroupns") and (
                value == "" or value.startswith(_NAMESPACE_OK[:2])
            ):
                continue
            _refuse(where, text, needle, f"({shown}) {_REFUSED_FLAGS[flag]}")
        elif flag in ("--network", "--net"):
            if value in ("host",) or value.startswith("container:"):
                _refuse(where, text, needle, f"({shown}) puts the container on the host's network")
            unsupported.append(f"runArgs {shown} (prov gives each environment its own network)")
        elif flag in ("-v", "--volume", "--mount"):
            if any(s in value for s in _SOCKETS):
                _refuse(where, text, needle, f"({shown}) hands the container the Docker socket")
            found = _run_arg_mount(flag, value, shown, ctx, where)
            if isinstance(found, str):
                unsupported.append(found)
            else:
                acc.mounts.append(found)
        elif flag in ("-u", "--user"):
            if value.split(":")[0] in ROOT_USERS:
                _refuse(where, text, needle, f"({shown}) runs the container as root")
            acc.notes.append(f"runArgs {shown}: the agent runs as prov's user `agent`")
        elif flag in ("--memory", "-m"):
            acc.memory = value
        elif flag == "--cpus":
            try:
                acc.cpus = float(value)
            except ValueError:
                raise ConfigError(f"{where}: runArgs --cpus {value!r} is not a number") from None
        elif flag in ("-e", "--env"):
            key, sep, val = value.partition("=")
            if sep:
                acc.env[key] = val
            elif key in ctx.host_env:
                acc.env[key] = ctx.host_env[key]
        elif flag == "--gpus":
            acc.gpu = "all"
        else:
            unsupported.append(f"runArgs {shown}")
    return tuple(unsupported)


def _run_arg_mount(
    flag: str, value: str, shown: str, ctx: Context, where: str
) -> tuple[str, str, bool] | str:
    """runArgs' -v SRC:DST[:ro] or --mount: a bind mount, or why it is not one."""
    if flag == "--mount":
        return _mount(value, ctx, where)
    parts = value.split(":")
    if len(parts) >= 2 and parts[0].startswith(("/", "~", ".")):
        return parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")
    return f"runArgs {shown} (a named volume; prov makes bind mounts only)"


def _ports(value: object, where: str) -> tuple[tuple[int, ...], list[str]]:
    if value is None:
        return (), []
    if not isinstance(value, list):
        raise ConfigError(f"{where}: forwardPorts is not a list", "", "fix the file.")
    ports: list[int] = []
    skipped: list[str] = []
    for item in value:
        text = str(item)
        host_part, _, port_part = text.rpartition(":")
        if port_part.isdigit() and 0 < int(port_part) < 65536 and host_part in ("", "localhost"):
            ports.append(int(port_part))
        else:
            skipped.append(f"forwardPorts {text!r} (prov forwards ports of the container itself)")
    return tuple(dict.fromkeys(ports)), skipped


def metadata_entries(label: str | None) -> list[dict[str, Any]]:
    """The image's devcontainer.metadata label: a list of entries (features'
    first, then the config's), or one object."""
    if not label:
        return []
    try:
        data = json.loads(label)
    except ValueError:
        return []
    items = data if isinstance(data, list) else [data]
    return [item for item in items if isinstance(item, dict)]


@dataclass
class _Merged:
    """What the entries (the image's metadata, then the file) add up to, as
    they are read one after another."""

    mounts: list[tuple[str, str, bool]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # runArgs' -e
    notes: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    memory: str | None = None
    cpus: float | None = None
    gpu: str = ""
    container_env: dict[str, str] = field(default_factory=dict)
    remote_env: dict[str, str] = field(default_factory=dict)  # unsubstituted
    phases: dict[str, list[tuple[Command, ...]]] = field(
        default_factory=lambda: {p: [] for p in _COMMANDS}
    )
    start: list[tuple[Command, ...]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)


def with_image(first: DevContainer, ctx: Context, label: str | None, base: str) -> DevContainer:
    """`first` (the file alone) merged with the devcontainer.metadata `label` of
    the image prov's layers went on (`base`): the features' entries first.
    When the devcontainers CLI built that base (a prov-devcontainer image of a
    file with features), the file's own entry is already the last of them."""
    entries = metadata_entries(label)
    if not entries:
        return first
    by_cli = bool(first.features) and base.startswith(f"{DEVCONTAINER_REPO}:")
    return resolve(first.path, ctx, entries, config_in_metadata=by_cli)


def resolve(
    path: Path,
    ctx: Context,
    metadata: list[dict[str, Any]] | None = None,
    config_in_metadata: bool = False,
) -> DevContainer:
    """Read `path` and merge it with the image's metadata entries (features and
    earlier configs first, the file last; with `config_in_metadata` the file's
    own entry is already the last of them, as the devcontainers CLI records it)."""
    data, text, digest = read(path)
    where = str(path)
    if "dockerComposeFile" in data:
        raise ConfigError(
            f"{where} describes a Docker Compose setup (dockerComposeFile)",
            "prov runs one container per environment with its own network and proxy; "
            "a Compose project is not something it makes.",
            "give the file an `image` or `build` of the service the agent works in, pass "
            "another file with --devcontainer PATH, or --no-devcontainer.",
        )
    entries = list(metadata or [])
    if not config_in_metadata:
        entries.append(data)
    acc = _Merged()
    for entry in entries:
        _refuse_privileges(entry, entry is data, where, text)
        origin = where if entry is data else f"the image's {METADATA_LABEL} ({entry.get('id', '')})"
        _merge(acc, entry, origin, ctx, where, text)
    acc.unsupported += _not_applied(data)
    if data.get("customizations"):
        acc.notes.append("customizations (editor settings) are for editors; prov has none")
    acc.unsupported += _run_args(data.get("runArgs"), text, where, ctx, acc)
    # remoteEnv may name containerEnv (and the image's own, which the CLI
    # resolves inside; here: what the file and the features set).
    container_env = {k: substitute(v, ctx) for k, v in acc.container_env.items()}
    remote_env = {k: substitute(v, ctx, container_env) for k, v in acc.remote_env.items()}
    image, build = _image(data, path, ctx, text)
    features = data.get("features") or {}
    if not isinstance(features, dict):
        raise ConfigError(f"{where}: features is not an object", "", "fix the file.")
    return DevContainer(
        path=path,
        digest=digest,
        image=image,
        build=build,
        features=tuple(str(f) for f in features),
        container_env=tuple(container_env.items()),
        remote_env=tuple(remote_env.items()),
        mounts=tuple(dict.fromkeys(acc.mounts)),
        forward_ports=tuple(dict.fromkeys(acc.ports)),
        create_commands=tuple(group for p in _COMMANDS for group in acc.phases[p]),
        start_commands=tuple(acc.start),
        gpu=acc.gpu,
        memory=acc.memory,
        cpus=acc.cpus,
        env=tuple(acc.env.items()),
        unsupported=tuple(dict.fromkeys(acc.unsupported)),
        notes=tuple(dict.fromkeys(acc.notes)),
    )


def _refuse_privileges(entry: dict[str, Any], is_file: bool, where: str, text: str) -> None:
    """The file, or a feature in the image's metadata, asking for privileges."""
    for key in ("privileged", "capAdd", "securityOpt"):
        if not entry.get(key):
            continue
        if is_file:
            _refuse(where, text, f'"{key}"', f"({key}) breaks prov's containment")
        raise UsageError(
            f"Refusing the feature {entry.get('id', '?')}: it asks for {key}",
            f"The image's {METADATA_LABEL} says {key}: {json.dumps(entry[key])[:120]}; the "
            "agent inside is untrusted and would get this machine with it. Nothing was "
            "created.",
            "drop that feature from the file, or pass --no-devcontainer.",
        )


def _merge(
    acc: _Merged, entry: dict[str, Any], origin: str, ctx: Context, where: str, text: str
) -> None:
    """One entry's variables, commands, mounts, ports, users and GPU into `acc`."""
    acc.container_env.update(_env(entry.get("containerEnv"), "containerEnv", origin))
    acc.remote_env.update(_env(entry.get("remoteEnv"), "remoteEnv", origin))
    for phase in _COMMANDS:
        group = _commands(phase, entry.get(phase), origin)
        if group:
            acc.phases[phase].append(group)
    group = _commands("postStartCommand", entry.get("postStartCommand"), origin)
    if group:
        acc.start.append(group)
    for item in entry.get("mounts") or ():
        found = _mount(item, ctx, origin)
        if isinstance(found, str):
            acc.unsupported.append(found)
        else:
            acc.mounts.append(found)
    found_ports, skipped = _ports(entry.get("forwardPorts"), origin)
    acc.ports += found_ports
    acc.unsupported += skipped
    for key in ("remoteUser", "containerUser"):
        user = entry.get(key)
        if user is None:
            continue
        if str(user) in ROOT_USERS:
            _refuse(where, text, f'"{key}"', f"({key}: {user}) runs the agent as root")
        acc.notes.append(
            f"{key} {user}: the agent runs as prov's user `agent` (the project "
            "owner's UID), without root"
        )
    requirements = entry.get("hostRequirements") or {}
    gpu = requirements.get("gpu")
    if gpu is True or gpu == "true":
        acc.gpu = "all"
    elif gpu == "optional" and not acc.gpu:
        acc.gpu = "optional"
    for req in ("cpus", "memory", "storage"):
        if requirements.get(req) is not None:
            acc.unsupported.append(f"hostRequirements.{req} (not checked)")


def _not_applied(data: dict[str, Any]) -> list[str]:
    """The file's properties prov does not apply, each with why."""
    found: list[str] = []
    if data.get("initializeCommand"):
        found.append(
            "initializeCommand (it would run on this machine; prov runs nothing the project "
            "says outside the container)"
        )
    found += [f"{key} ({why})" for key, why in _OWN_WAY.items() if key in data]
    found += [
        f"{key} (unknown to prov)" for key in data if key not in _HONOURED and key not in _OWN_WAY
    ]
    return found


def _image(
    data: dict[str, Any], path: Path, ctx: Context, text: str
) -> tuple[str | None, Build | None]:
    where = str(path)
    build = data.get("build")
    if build is None and data.get("dockerFile"):  # the spec's older spelling
        build = {"dockerfile": data["dockerFile"], "context": data.get("context", ".")}
    if build is not None:
        if not isinstance(build, dict) or not build.get("dockerfile"):
            raise ConfigError(f"{where}: build has no dockerfile", "", "fix the file.")
        base = path.parent
        dockerfile = (base / substitute(str(build["dockerfile"]), ctx)).resolve()
        context = (base / substitute(str(build.get("context", ".")), ctx)).resolve()
        project = ctx.project.resolve()
        for what, p in (("dockerfile", dockerfile), ("context", context)):
            if p != project and not p.is_relative_to(project):
                raise UsageError(
                    f"{where}: build.{what} {p} lies outside the project {project}",
                    "Its files would be sent to Docker and end up where the agent can read them.",
                    "keep the Dockerfile and its context inside the project.",
                )
        if not dockerfile.is_file():
            raise ConfigError(
                f"{where}: build.dockerfile {dockerfile} does not exist", "", "fix the path."
            )
        args = build.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError(f"{where}: build.args is not an object", "", "fix the file.")
        target = build.get("target")
        return None, Build(
            dockerfile,
            context,
            tuple((str(k), substitute(str(v), ctx)) for k, v in args.items()),
            str(target) if target else None,
        )
    image = data.get("image")
    if isinstance(image, str) and image.strip():
        return substitute(image.strip(), ctx), None
    raise ConfigError(
        f"{where} names no image",
        "It has neither `image` nor `build` (with a dockerfile).",
        "add one, or pass --no-devcontainer to ignore the file.",
    )


def host_env() -> dict[str, str]:
    return dict(os.environ)
