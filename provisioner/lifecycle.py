"""Seeing and steering environments over their life: ls, status, stop, start,
restart, logs, rm. Docker's labels and prov's state dir are the only memory."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from provisioner import keys, sshconf, state
from provisioner.config import AGENT_USER, ProvPaths
from provisioner.engine import ContainerInfo, Engine
from provisioner.errors import ConflictError, NotFound
from provisioner.fsutil import file_lock
from provisioner.openssh import stop_master
from provisioner.plan import (
    LABEL_AGENTS,
    LABEL_BIND,
    LABEL_HOST_KEY,
    LABEL_NAME,
    LABEL_PORT,
    LABEL_PROJECT,
    SshTarget,
    connect_host,
    container_name,
)
from provisioner.progress import Reporter


@dataclass(frozen=True)
class EnvStatus:
    name: str
    state: str  # running / exited / created / removed (container gone, keys kept)
    status: str  # Docker's words, e.g. "Up 3 hours"
    port: int | None
    bind: str
    project_dir: str
    image: str
    agents: str
    ssh_alias: str
    container: str
    host_key_fingerprint: str

    def public(self) -> dict[str, object]:
        return asdict(self)


def _from_summary(item: dict[str, Any]) -> EnvStatus:
    labels = item.get("Labels") or {}
    name = labels.get(LABEL_NAME, "")
    port = labels.get(LABEL_PORT, "")
    return EnvStatus(
        name=name,
        state=str(item.get("State", "unknown")),
        status=str(item.get("Status", "")),
        port=int(port) if port.isdigit() else None,
        bind=labels.get(LABEL_BIND, ""),
        project_dir=labels.get(LABEL_PROJECT, ""),
        image=str(item.get("Image", "")),
        agents=labels.get(LABEL_AGENTS, "-") or "-",
        ssh_alias=sshconf.alias_for(name),
        container=container_name(name),
        host_key_fingerprint=labels.get(LABEL_HOST_KEY, ""),
    )


def _removed(record: state.EnvRecord) -> EnvStatus:
    return EnvStatus(
        name=record.name,
        state="removed",
        status="container removed; keys and alias kept (`prov up` recreates it)",
        port=record.port,
        bind=record.bind,
        project_dir=record.project_dir,
        image="-",
        agents="-",
        ssh_alias=sshconf.alias_for(record.name),
        container="-",
        host_key_fingerprint="",
    )


def list_envs(paths: ProvPaths | None = None) -> list[EnvStatus]:
    """Every environment prov knows: its containers, plus recorded ones whose
    container was removed with `down`."""
    paths = paths or ProvPaths.from_env()
    engine = Engine.connect()
    found = {env.name: env for env in map(_from_summary, engine.summaries()) if env.name}
    if paths.envs.is_dir():
        for env_dir in paths.envs.iterdir():
            if env_dir.name not in found:
                record = state.load(paths, env_dir.name)
                if record is not None:
                    found[record.name] = _removed(record)
    return sorted(found.values(), key=lambda env: env.name)


def status(name: str, paths: ProvPaths | None = None) -> EnvStatus:
    for env in list_envs(paths):
        if env.name == name:
            return env
    raise NotFound(
        f"No environment named {name!r}",
        "prov has neither a container nor a record of it.",
        "list them with `prov ls`.",
    )


def _own_container(engine: Engine, name: str) -> ContainerInfo | None:
    """prov's container for `name`, None if there is none; never someone else's."""
    info = engine.find(container_name(name))
    if info is not None and not info.managed:
        raise ConflictError(
            f"Container {info.name} was not made by prov",
            "It has no prov labels.",
            "prov leaves it alone; remove it yourself if it is yours.",
        )
    return info


def _container(engine: Engine, name: str) -> ContainerInfo:
    info = _own_container(engine, name)
    if info is None:
        raise NotFound(
            f"Environment {name!r} has no container",
            "It was removed (`prov down`) or never created.",
            f"`prov up {name}` creates it again with the same keys and host key.",
        )
    return info


def stop(name: str, paths: ProvPaths | None = None) -> bool:
    """Stop the container; False when it was not running."""
    paths = paths or ProvPaths.from_env()
    engine = Engine.connect()
    info = _container(engine, name)
    stop_master(paths.ssh_config, sshconf.alias_for(name))
    if not info.running:
        return False
    engine.stop(info.id)
    return True


def start(
    name: str,
    reporter: Reporter,
    timeout: float,
    restart: bool = False,
    paths: ProvPaths | None = None,
) -> float:
    """Start (or restart) the container and wait until SSH works; seconds to ready."""
    paths = paths or ProvPaths.from_env()
    # Imported here: ls, status and the others do not need `up`'s modules.
    from provisioner.service import await_ssh

    record = state.require(paths, name)
    engine = Engine.connect()
    info = _container(engine, name)
    stop_master(paths.ssh_config, sshconf.alias_for(name))
    if restart:
        reporter.step("restarting the container")
        engine.restart(info.id)
    elif not info.running:
        reporter.step("starting the container")
        engine.start(info.id)
    host_pair = keys.load_or_create(paths.env_dir(name), keys.HOST_KEY_NAME, "")
    target = SshTarget(
        connect_host(record.bind),
        record.port,
        AGENT_USER,
        host_pair.public,
        Path(record.identity_file),
    )
    return await_ssh(engine, paths, target, sshconf.alias_for(name), info.id, timeout, reporter)


def logs(name: str, follow: bool, tail: int | None) -> Iterator[bytes]:
    engine = Engine.connect()
    info = _container(engine, name)
    return engine.logs(info.id, follow, tail)


@dataclass(frozen=True)
class DownResult:
    name: str
    removed: bool


def down(name: str, paths: ProvPaths | None = None) -> DownResult:
    paths = paths or ProvPaths.from_env()
    engine = Engine.connect()
    info = _own_container(engine, name)
    if info is None:
        if state.load(paths, name) is None:
            raise NotFound(
                f"No environment named {name!r}",
                "prov has no record and no container of that name.",
                "list them with `prov ls`.",
            )
        return DownResult(name, removed=False)
    stop_master(paths.ssh_config, sshconf.alias_for(name))
    engine.remove(info.id)
    return DownResult(name, removed=True)


@dataclass(frozen=True)
class Removal:
    container_removed: bool
    state_removed: bool


def rm(name: str, paths: ProvPaths | None = None) -> Removal:
    """Remove everything prov made for `name`: container, keys, alias, pin."""
    paths = paths or ProvPaths.from_env()
    engine = Engine.connect()
    info = _own_container(engine, name)
    env_dir = paths.env_dir(name)
    if info is None and not env_dir.exists():
        raise NotFound(
            f"No environment named {name!r}", "Nothing to remove.", "list them with `prov ls`."
        )
    alias = sshconf.alias_for(name)
    stop_master(paths.ssh_config, alias)
    if info is not None:
        engine.remove(info.id)
    with file_lock(paths.lock):
        sshconf.delete_entry(paths.ssh_config, alias)
        sshconf.unpin_host_key(paths.known_hosts, alias)
        existed = env_dir.exists()
        shutil.rmtree(env_dir, ignore_errors=True)
    return Removal(container_removed=info is not None, state_removed=existed)
