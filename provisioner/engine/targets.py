"""Which Docker engine prov talks to: one resolution for every code path.

Order, as the docker CLI's own: `--docker-host` > DOCKER_HOST > DOCKER_CONTEXT >
the current Docker context (`docker context use`, in the Docker config dir's
config.json) > the local socket. Before this, prov's own socket path ignored
contexts while docker-py honoured DOCKER_HOST only, so a build and a container
could land on different engines.

Pure apart from reading the Docker config dir; no Docker call here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import ConfigError, UsageError

DEFAULT_SOCKET = "/var/run/docker.sock"
DEFAULT_HOST = f"unix://{DEFAULT_SOCKET}"
DEFAULT_SOURCE = "the local socket"  # how prov says it found the default engine
LOCAL_TCP_HOSTS = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class EngineTarget:
    host: str  # unix:///path, tcp://host:port, ssh://[user@]host[:port]
    source: str  # how it was chosen, in words the user recognises

    @property
    def socket(self) -> str | None:
        """The socket path of a unix:// engine, else None."""
        return self.host[len("unix://") :] if self.host.startswith("unix://") else None

    @property
    def local(self) -> bool:
        """Whether the engine runs on this machine (its bind mounts are this
        machine's paths, its containers' addresses reachable from here)."""
        if self.socket is not None:
            return True
        if self.host.startswith("tcp://"):
            hostport = self.host[len("tcp://") :].split("/", 1)[0]
            return any(hostport.startswith(h + ":") or hostport == h for h in LOCAL_TCP_HOSTS)
        return False

    def describe(self) -> str:
        return f"{self.host} ({self.source})"


AUTO = "auto"  # --engine auto: prov up chooses among the named engines


@dataclass(frozen=True)
class Asked:
    """The engine the user named for this command, as the CLI parsed it:
    --docker-host ADDRESS or --engine NAME (`auto`: `up` chooses), or neither.
    Passed down as a value; nothing below the CLI keeps a choice of its own."""

    docker_host: str | None = None
    engine: str | None = None

    @classmethod
    def of(cls, docker_host: str | None, engine: str | None) -> Asked:
        return cls((docker_host or "").strip() or None, (engine or "").strip() or None)

    @property
    def auto(self) -> bool:
        return self.engine == AUTO


NOTHING = Asked()  # no flag: the environment and Docker's contexts decide


# --- named engines (`prov engine add/ls/rm`) ---------------------------------


def engines_file(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "prov" / "engines.toml"


def named(path: Path | None = None) -> dict[str, str]:
    """NAME -> engine address, from the user's engines file."""
    import tomllib

    path = path or engines_file()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"Cannot read {path}", str(exc), "fix the file, or remove it and add engines again."
        ) from None
    table = data.get("engines", {})
    return {str(k): str(v.get("host", "")) for k, v in table.items() if isinstance(v, dict)}


def add_named(name: str, host: str, path: Path | None = None) -> None:
    """Record NAME -> host, editing the file in place (comments and order stay)."""
    import tomlkit

    from provisioner.config import validate_name
    from provisioner.fsutil import edit_in_place, ensure_private_dir, read_owned

    try:
        validate_name(name)
    except UsageError:
        raise UsageError(
            f"Invalid engine name {name!r}",
            "Engine names are lower-case letters, digits, '-' and '_'.",
            "choose a name such as 'builder' or 'gpu-1'.",
        ) from None
    if name == AUTO:
        raise UsageError(
            "'auto' cannot name an engine",
            "`--engine auto` means: choose among the named engines.",
            "choose another name.",
        )
    _checked(host, f"engine {name!r}")
    path = path or engines_file()
    ensure_private_dir(path.parent)
    data = read_owned(path, "The engines file")
    doc = tomlkit.parse(data.decode()) if data else tomlkit.document()
    table = doc.setdefault("engines", tomlkit.table(is_super_table=True))
    if name in table:
        raise UsageError(
            f"An engine named {name!r} exists already",
            f"It is {table[name].get('host', '?')}.",
            f"remove it first (`prov engine rm {name}`), or choose another name.",
        )
    entry = tomlkit.table()
    entry["host"] = host
    table[name] = entry
    edit_in_place(path, tomlkit.dumps(doc).encode())


def remove_named(name: str, path: Path | None = None) -> None:
    import tomlkit

    from provisioner.errors import NotFound
    from provisioner.fsutil import edit_in_place, read_owned

    path = path or engines_file()
    data = read_owned(path, "The engines file")
    doc = tomlkit.parse(data.decode()) if data else tomlkit.document()
    table = doc.get("engines")
    if not isinstance(table, dict) or name not in table:
        raise NotFound(
            f"No engine named {name!r}", f"{path} does not list it.", "see `prov engine ls`."
        )
    del table[name]
    edit_in_place(path, tomlkit.dumps(doc).encode())


def docker_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    configured = env.get("DOCKER_CONFIG")
    return Path(configured).expanduser() if configured else Path.home() / ".docker"


def resolve(
    asked: Asked = NOTHING,
    environ: Mapping[str, str] | None = None,
    config_dir: Path | None = None,
) -> EngineTarget:
    """The engine to use: the one `asked` names, else the environment's and
    Docker's choice (`resolve()` alone: the engine prov would use unasked)."""
    env = os.environ if environ is None else environ
    flag, named_flag = asked.docker_host, asked.engine
    if flag and named_flag:
        raise UsageError(
            "--engine and --docker-host both name an engine",
            f"--engine {named_flag}, --docker-host {flag}.",
            "pass one of them.",
        )
    if named_flag == AUTO:
        raise UsageError(
            "--engine auto chooses where new environments go",
            "It applies to `prov up` only; other commands act on an environment where it is.",
            "name the engine (`prov engine ls` lists them), or leave --engine out.",
        )
    if named_flag:
        hosts = named(engines_file(env))
        if named_flag not in hosts:
            raise UsageError(
                f"No engine named {named_flag!r}",
                f"{engines_file(env)} lists " + (", ".join(sorted(hosts)) or "none") + ".",
                f"add it (`prov engine add {named_flag} ssh://HOST`), or see `prov engine ls`.",
            )
        return EngineTarget(_checked(hosts[named_flag], "--engine"), f"engine {named_flag!r}")
    if flag:
        return EngineTarget(_checked(flag, "--docker-host"), "--docker-host")
    if env.get("DOCKER_HOST"):
        return EngineTarget(_checked(env["DOCKER_HOST"], "DOCKER_HOST"), "DOCKER_HOST")
    config_dir = config_dir or docker_config_dir(env)
    if env.get("DOCKER_CONTEXT"):
        name = env["DOCKER_CONTEXT"]
        return _context(name, config_dir, f"DOCKER_CONTEXT={name}")
    current = _current_context(config_dir)
    if current and current != "default":
        return _context(current, config_dir, f"docker context {current!r} (docker context use)")
    return EngineTarget(DEFAULT_HOST, DEFAULT_SOURCE)


def explicit(asked: Asked, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the user named an engine for this command (flag or DOCKER_HOST /
    DOCKER_CONTEXT), rather than leaving prov to its default."""
    env = os.environ if environ is None else environ
    return bool(
        asked.docker_host or asked.engine or env.get("DOCKER_HOST") or env.get("DOCKER_CONTEXT")
    )


def for_env(
    name: str,
    recorded: str,
    asked: Asked = NOTHING,
    environ: Mapping[str, str] | None = None,
) -> EngineTarget:
    """The engine of environment NAME: the one named for this command if any,
    else `recorded`, the one its record says it was made on ("": none), else
    the default."""
    if (not explicit(asked, environ) or asked.auto) and recorded:  # auto: it stays put
        return EngineTarget(recorded, f"where {name!r} was made")
    return resolve(asked, environ)


def _checked(host: str, source: str) -> str:
    if "://" not in host:
        raise UsageError(
            f"{source} {host!r} is not an engine address",
            "It needs a scheme: unix:///path, tcp://HOST:PORT or ssh://[USER@]HOST.",
            f"fix {source}.",
        )
    return host


def _current_context(config_dir: Path) -> str | None:
    try:
        data = json.loads((config_dir / "config.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"Cannot read the Docker config {config_dir / 'config.json'}",
            str(exc),
            "fix the file (the docker CLI reads it too), or set DOCKER_HOST.",
        ) from None
    current = data.get("currentContext") if isinstance(data, dict) else None
    return str(current) if current else None


def _context(name: str, config_dir: Path, source: str) -> EngineTarget:
    if name == "default":
        return EngineTarget(DEFAULT_HOST, source)
    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    try:
        data = json.loads((meta / "meta.json").read_text())
        host = data["Endpoints"]["docker"]["Host"]
    except FileNotFoundError:
        raise ConfigError(
            f"Docker context {name!r} does not exist",
            f"prov chose it from {source}; there is no {meta / 'meta.json'}.",
            "list contexts with `docker context ls`, or unset DOCKER_CONTEXT / run "
            "`docker context use default`.",
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"Cannot read Docker context {name!r}",
            f"{meta / 'meta.json'}: {exc}",
            "recreate it with `docker context create`, or set DOCKER_HOST.",
        ) from None
    tls = config_dir / "contexts" / "tls" / meta.name
    if tls.exists():
        raise UsageError(
            f"Docker context {name!r} uses TLS certificates, which prov cannot use yet",
            f"prov chose it from {source}; its engine is {host}.",
            "set DOCKER_HOST with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH instead, or use an "
            "ssh:// context.",
        )
    return EngineTarget(_checked(str(host), f"context {name!r}"), source)


def require_supported(target: EngineTarget, what: str) -> None:
    """prov runs environments on this machine's engine, or on an engine it
    reaches over SSH (whose aliases jump through that host). A remote engine
    over plain TCP would give no such way to the environments' sshd."""
    if target.local or target.host.startswith("ssh://"):
        return
    raise UsageError(
        f"`{what}` cannot run environments on {target.describe()}",
        "prov reaches an environment on another machine through SSH to that machine (its "
        "Docker socket and the aliases' jumps go over one connection); a tcp:// engine "
        "elsewhere gives no such way in.",
        "use ssh://[USER@]HOST for that machine (Docker need not listen on TCP at all), or "
        "this machine's engine.",
    )
