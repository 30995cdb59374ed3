"""Seeing and steering environments over their life: ls, status, stop, start,
restart, logs, rm. Docker's labels and prov's state dir are the only memory."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from provisioner import homedisk, keys, limits, sshconf, state
from provisioner.config import AGENT_HOME, AGENT_USER, ProvPaths, user_known_hosts, validate_name
from provisioner.engine import ContainerInfo, Engine, targets
from provisioner.errors import DockerUnavailable, NotFound, ProvError, UsageError
from provisioner.fsutil import file_lock
from provisioner.openssh import stop_master, system_ssh
from provisioner.ownership import is_ours, require_ours
from provisioner.plan import (
    LABEL_AGENTS,
    LABEL_BIND,
    LABEL_BRANCH,
    LABEL_CREDENTIALS,
    LABEL_DEVCONTAINER,
    LABEL_EGRESS,
    LABEL_HOME,
    LABEL_HOME_VOLUME,
    LABEL_HOST_KEY,
    LABEL_LIMITS,
    LABEL_NAME,
    LABEL_NETWORK,
    LABEL_PORT,
    LABEL_PROJECT,
    LABEL_PROTECT,
    LABEL_ROLE,
    LABEL_SECRETS,
    LABEL_SLOT,
    LABEL_SSH,
    LABEL_SUDO,
    SshTarget,
    connect_host,
    container_name,
    egress_volume_name,
    home_id,
    home_volume_name,
    keys_volume_name,
    network_name,
    project_volume_name,
    proxy_name,
)
from provisioner.progress import Reporter
from provisioner.spec import LABEL_MANAGED


@dataclass(frozen=True)
class EnvStatus:
    name: str
    state: str  # running / exited / created / removed (container gone, keys kept)
    status: str  # Docker's words, e.g. "Up 3 hours"
    port: int | None  # where the alias connects, with `host`
    bind: str
    project_dir: str
    image: str
    agents: str
    ssh_alias: str
    container: str
    host_key_fingerprint: str
    sudo: str = "-"
    egress: str = "-"
    limits: str = "-"  # memory, CPUs, processes, in words
    limits_bytes: int = 0  # the memory limit (0: none)
    memory: str = "-"  # in use, of the limit (a running environment)
    disk: str = "-"  # what bounds the agent's writes outside the project (`status` only)
    home_disk: str = "-"  # its home file system: in use, of its size ("-": not bounded)
    home: str = "this"  # "this" PROV_HOME, or "other" (shown by `ls --all`)
    home_volume: str = "-"  # where /home/agent lives, and what keeps it
    engine: str = "-"  # the Docker engine it is on, and how prov chose it
    host: str = ""
    published: str = "-"  # BIND:PORT where sshd is on a host port (--port), else "-"
    credentials: str = "-"  # tokens / copy / mount / none ("-": made before prov said)
    protected: str = "-"  # project paths read-only inside (".git" pinned), comma-separated
    branch: str = "-"  # branch mode: the clone's branch, and how far it is ahead

    def public(self) -> dict[str, object]:
        return asdict(self)


def _from_summary(item: dict[str, Any], paths: ProvPaths) -> EnvStatus:
    labels = item.get("Labels") or {}
    name = labels.get(LABEL_NAME, "")
    ssh_host, _, port = labels.get(LABEL_SSH, "").rpartition(":")
    if not ssh_host:  # made before prov recorded it
        ssh_host, port = (
            connect_host(labels.get(LABEL_BIND, "127.0.0.1")),
            labels.get(LABEL_PORT, ""),
        )
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
        sudo=labels.get(LABEL_SUDO, "-"),
        egress=labels.get(LABEL_EGRESS, "-").split(":", 1)[0],
        host=ssh_host,
        published=(
            f"{labels.get(LABEL_BIND, '127.0.0.1')}:{labels[LABEL_PORT]}"
            if labels.get(LABEL_PORT, "0") not in ("", "0")
            else "-"
        ),
        limits=limits.label_words(labels[LABEL_LIMITS]) if LABEL_LIMITS in labels else "-",
        limits_bytes=limits.label_memory(labels.get(LABEL_LIMITS, "")),
        credentials=labels.get(LABEL_CREDENTIALS, "-"),
        protected=labels.get(LABEL_PROTECT, "") or "-",
        branch=labels.get(LABEL_BRANCH, "") or "-",
        home="this" if is_ours(labels, paths) else "other",
        home_volume=(
            f"{labels[LABEL_HOME_VOLUME]} (kept by `down`, removed by `rm`)"
            if LABEL_HOME_VOLUME in labels
            else "none: the home dir is lost on `down` (`up --recreate` gives it a volume)"
        ),
    )


def _removed(record: state.EnvRecord) -> EnvStatus:
    return EnvStatus(
        name=record.name,
        state="removed",
        status="container removed; keys and alias kept (`prov up` recreates it)",
        port=record.ssh_port or record.port,
        host=record.ssh_host,
        bind=record.bind,
        project_dir=record.project_dir,
        image="-",
        agents="-",
        ssh_alias=sshconf.alias_for(record.name),
        container="-",
        host_key_fingerprint="",
        home_volume=f"{home_volume_name(record.name)} (kept; `up` mounts it again)",
    )


def _is_env_name(name: str) -> bool:
    try:
        validate_name(name)
    except ProvError:
        return False
    return True


def _unlisted(name: str, state_word: str, status: str) -> EnvStatus:
    """A key dir prov cannot describe fully (no record, or one it cannot read):
    shown, so it can be removed, rather than hidden or failing the whole list."""
    return EnvStatus(
        name=name,
        state=state_word,
        status=status,
        port=None,
        bind="-",
        project_dir="-",
        image="-",
        agents="-",
        ssh_alias=sshconf.alias_for(name),
        container="-",
        host_key_fingerprint="",
    )


def engine_heading(envs: list[EnvStatus]) -> str:
    """The engine `prov ls` names above its table: "" for this machine's
    default engine (found with nothing set), else how it was chosen."""
    default = targets.EngineTarget(targets.DEFAULT_HOST, targets.DEFAULT_SOURCE).describe()
    return "" if not envs or envs[0].engine == default else envs[0].engine


def list_envs(
    paths: ProvPaths | None = None,
    everyone: bool = False,
    timeout: float = 10.0,
    asked: targets.Asked = targets.NOTHING,
) -> list[EnvStatus]:
    """Every environment this PROV_HOME knows, on every engine it knows of (the
    default one, the ones environments were made on, the named ones), asked
    in parallel: its containers, plus recorded ones whose container was
    removed with `down`. An engine that does not answer is one line, and its
    recorded environments say so. `everyone` adds the containers of other
    PROV_HOMEs, marked as such."""
    paths = paths or ProvPaths.from_env()
    from provisioner import keeper

    keeper.ensure_running(paths)  # e.g. after a reboot: environments came back, it did not
    records: dict[str, state.EnvRecord | ProvError | None] = {}
    if paths.envs.is_dir():
        for env_dir in paths.envs.iterdir():
            # Only prov's own entries: a stray file (.DS_Store) is not an environment.
            if env_dir.is_dir() and _is_env_name(env_dir.name):
                try:
                    records[env_dir.name] = state.load(paths, env_dir.name)
                except ProvError as exc:
                    records[env_dir.name] = exc
    engines = _engines_to_list(records, asked)
    answers = _ask_engines(engines, paths, timeout)
    found: dict[str, EnvStatus] = {}
    others: list[EnvStatus] = []
    unreachable: dict[str, str] = {}
    for target in engines:
        answer = answers[target.host]
        if isinstance(answer, str):
            unreachable[target.host] = answer
            continue
        for env in answer:
            if env.home == "this" and env.name and env.name not in found:
                found[env.name] = env
            elif env.home != "this":
                others.append(env)
    hosts = {target.host for target in engines}
    for name, record in records.items():
        if name in found:
            continue
        if isinstance(record, state.EnvRecord) and record.engine not in ("", *hosts):
            continue  # made on an engine not listed now (another one was named)
        if isinstance(record, ProvError):
            found[name] = _unlisted(name, "broken", f"{record.what}: {record.hint}")
        elif record is None:
            found[name] = _unlisted(name, "incomplete", f"keys but no record; `prov rm {name}`")
        elif record.engine in unreachable:
            found[name] = replace(
                _removed(record),
                state="unknown",
                status=f"its engine does not answer: {unreachable[record.engine]}",
                engine=record.engine,
            )
        else:
            found[name] = replace(_removed(record), engine=record.engine or engines[0].describe())
    listed = list(found.values()) + (others if everyone else [])
    listed += [
        _unlisted("-", "unreachable", f"engine {host}: {why}")
        for host, why in unreachable.items()
        if not any(env.engine.startswith(host) for env in listed)
    ]
    listed = _with_ahead(listed, records, paths)
    return sorted(listed, key=lambda env: (env.home != "this", env.name == "-", env.name))


def _with_ahead(
    envs: list[EnvStatus], records: dict[str, state.EnvRecord | ProvError | None], paths: ProvPaths
) -> list[EnvStatus]:
    """Branch mode: how far each running clone's branch is ahead of the commit
    it started at, asked inside over each alias's master, all at once."""
    import threading

    from provisioner import branchmode

    asked = [
        (i, env, record)
        for i, env in enumerate(envs)
        if env.branch != "-"
        and env.state == "running"
        and isinstance(record := records.get(env.name), state.EnvRecord)
        and record.branch_base
    ]
    if not asked:
        return envs
    found: dict[int, str] = {}

    def ask(index: int, env: EnvStatus, record: state.EnvRecord) -> None:
        code, out = system_ssh(
            paths.ssh_config,
            env.ssh_alias,
            branchmode.ahead_script(record.project_dir, record.branch_base),
            timeout=10.0,
        )
        count = out.strip().splitlines()[-1] if out.strip() else ""
        found[index] = f"{env.branch} +{count}" if code == 0 and count.isdigit() else env.branch

    threads = [threading.Thread(target=ask, args=item) for item in asked]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [replace(env, branch=found.get(i, env.branch)) for i, env in enumerate(envs)]


def _engines_to_list(
    records: dict[str, state.EnvRecord | ProvError | None], asked: targets.Asked
) -> list[targets.EngineTarget]:
    """The default engine first, then those environments were made on, then
    the named ones; each once."""
    found = [targets.resolve(asked)]
    if targets.explicit(asked):  # the user named one engine: that one only
        return found
    for record in records.values():
        if isinstance(record, state.EnvRecord) and record.engine:
            found.append(targets.EngineTarget(record.engine, f"where {record.name!r} was made"))
    found += [
        targets.EngineTarget(host, f"engine {name!r}")
        for name, host in sorted(targets.named().items())
    ]
    unique: dict[str, targets.EngineTarget] = {}
    for target in found:
        unique.setdefault(target.host, target)
    return list(unique.values())


def _ask_engines(
    asked: list[targets.EngineTarget], paths: ProvPaths, timeout: float
) -> dict[str, list[EnvStatus] | str]:
    """Each engine's environments, or why it did not answer (in parallel)."""
    import threading

    answers: dict[str, list[EnvStatus] | str] = {}
    failures: dict[str, ProvError] = {}

    def ask(target: targets.EngineTarget) -> None:
        try:
            engine = Engine.connect(target)
            summaries = [
                item
                for item in engine.summaries()
                if (item.get("Labels") or {}).get(LABEL_ROLE, "env") == "env"
            ]
            envs = [
                (
                    str(item.get("Id", "")),
                    replace(_from_summary(item, paths), engine=target.describe()),
                )
                for item in summaries
            ]
            homes = homedisk.homes_in_use(engine, summaries)
            answers[target.host] = [_with_home(env, homes) for env in _memory_in_use(engine, envs)]
        except ProvError as exc:
            failures[target.host] = exc
            answers[target.host] = exc.what

    if len(asked) == 1:
        ask(asked[0])
        if asked[0].host in failures:  # the only engine: its failure in full
            raise failures[asked[0].host]
        return answers
    threads = [threading.Thread(target=ask, args=(t,), daemon=True) for t in asked]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    for target in asked:
        answers.setdefault(target.host, f"no answer within {timeout:g} s")
    return answers


def _with_home(env: EnvStatus, homes: dict[str, tuple[int, int]]) -> EnvStatus:
    if env.name not in homes:
        return env
    used, size = homes[env.name]
    return replace(env, home_disk=limits.use_text(used, size))


def engine_of(name: str, paths: ProvPaths, asked: targets.Asked = targets.NOTHING) -> Engine:
    """The engine environment NAME lives on (see targets.for_env)."""
    return Engine.connect(targets.for_env(name, state.engine_of(paths, name), asked))


def status(
    name: str, paths: ProvPaths | None = None, asked: targets.Asked = targets.NOTHING
) -> EnvStatus:
    paths = paths or ProvPaths.from_env()
    for env in list_envs(paths, asked=asked):
        if env.name == name:
            return _with_use(env, paths, asked) if env.state == "running" else env
    raise NotFound(
        f"No environment named {name!r}",
        "prov has neither a container nor a record of it.",
        "list them with `prov ls`.",
    )


def _memory_in_use(engine: Engine, envs: list[tuple[str, EnvStatus]]) -> list[EnvStatus]:
    """The environments with the memory the running ones use against their limit
    (Engine.memory_use: cgroup files here, a stats call on a remote engine)."""
    from concurrent.futures import ThreadPoolExecutor

    def with_use(item: tuple[str, EnvStatus]) -> EnvStatus:
        container_id, env = item
        used = engine.memory_use(container_id) if env.state == "running" else None
        if used is None:
            return env
        return replace(env, memory=limits.use_text(used, env.limits_bytes))

    if len(envs) <= 1 or engine.link is None:  # here: cgroup files, no waiting
        return [with_use(item) for item in envs]
    # Each stats call waits for Docker's collector (up to 1 s): all at once.
    with ThreadPoolExecutor(max_workers=min(32, len(envs))) as pool:
        return list(pool.map(with_use, envs))


def _with_use(env: EnvStatus, paths: ProvPaths, asked: targets.Asked) -> EnvStatus:
    """A running environment with what bounds its disk, in words, and what the
    agent's writes outside the project hold now (its home volume, the
    container's own layer)."""
    from provisioner import homedisk

    engine = engine_of(env.name, paths, asked)
    info = own_container(engine, env.name, paths)
    if info is None:
        return env
    bound = homedisk.bound_of(engine.volume(home_volume_name(env.name)))
    layer, home = engine.disk_use(info.id, home_volume_name(env.name))
    if bound:  # Docker does not measure a volume bound to another mount
        home = engine.fs_used(info.id, AGENT_HOME)
    return replace(env, disk=limits.disk_use_text(home, layer, bound))


def own_container(
    engine: Engine, name: str, paths: ProvPaths, role: str = "env"
) -> ContainerInfo | None:
    """This PROV_HOME's container for `name` (or its egress proxy), None if
    there is none; never one prov did not make, nor another home's."""
    info = engine.find(container_name(name) if role == "env" else proxy_name(name))
    if info is not None:
        require_ours(info, paths)
    return info


def _container(engine: Engine, name: str, paths: ProvPaths) -> ContainerInfo:
    info = own_container(engine, name, paths)
    if info is None:
        raise NotFound(
            f"Environment {name!r} has no container",
            "It was removed (`prov down`) or never created.",
            f"`prov up {name}` creates it again with the same keys and host key.",
        )
    return info


@dataclass(frozen=True)
class Session:
    name: str
    windows: int


def live_sessions(
    name: str, paths: ProvPaths | None = None, asked: targets.Asked = targets.NOTHING
) -> list[Session]:
    """The agent's tmux sessions in a running environment (each usually an NTM
    project with its agents), asked over the alias as NTM would; [] when the
    container is not running or cannot be asked."""
    paths = paths or ProvPaths.from_env()
    try:
        info = own_container(engine_of(name, paths, asked), name, paths)
    except DockerUnavailable:
        return []  # the command itself then says what is wrong with its engine
    if info is None or not info.running:
        return []
    _, output = system_ssh(  # no tmux server: no lines, whatever the exit status
        paths.ssh_config,
        sshconf.alias_for(name),
        "tmux list-sessions -F 'prov-session #{session_windows} #{session_name}' 2>/dev/null",
        timeout=15.0,
    )
    sessions = []
    for line in output.splitlines():
        marker, _, rest = line.partition(" ")
        windows, _, session = rest.partition(" ")
        if marker == "prov-session" and windows.isdigit():
            sessions.append(Session(session, int(windows)))
    return sessions


def stop(name: str, paths: ProvPaths | None = None, asked: targets.Asked = targets.NOTHING) -> bool:
    """Stop the container (then its egress proxy); False when it was not running."""
    paths = paths or ProvPaths.from_env()
    engine = engine_of(name, paths, asked)
    info = _container(engine, name, paths)
    stop_master(paths.ssh_config, sshconf.alias_for(name))
    proxy = own_container(engine, name, paths, "egress")
    if info.running:
        engine.stop(info.id)
    if proxy is not None and proxy.running:
        engine.stop(proxy.id)
    return info.running


def start(
    name: str,
    reporter: Reporter,
    timeout: float,
    restart: bool = False,
    paths: ProvPaths | None = None,
    asked: targets.Asked = targets.NOTHING,
) -> float:
    """Start (or restart) the container and wait until SSH works; seconds to ready."""
    paths = paths or ProvPaths.from_env()
    # Imported here: ls, status and the others do not need the readiness code.
    from provisioner import ready

    record = state.require(paths, name)
    engine = engine_of(name, paths, asked)
    info = _container(engine, name, paths)
    proxy = own_container(engine, name, paths, "egress")
    stop_master(paths.ssh_config, sshconf.alias_for(name))
    from provisioner import keeper

    keeper.ensure_running(paths)
    if proxy is not None and not proxy.running:
        try:
            engine.start(proxy.id)
        except ProvError as exc:
            raise type(exc)(
                f"Cannot start {name}'s egress proxy",
                exc.seen,
                f"`prov up {name}` makes a new proxy (it keeps no state) and starts both.",
            ) from None
    if restart:
        reporter.step("restarting the container")
        engine.restart(info.id)
    elif not info.running:
        # Its home's file system, if it has one, mounted again (gone after a
        # reboot of the engine host): the entrypoint refuses to start without.
        homedisk.ensure(engine, name, info.image_id, None, _volume_labels(name, paths))
        reporter.step("starting the container")
        engine.start(info.id)
    host_key = keys.read_public(paths.env_dir(name), keys.HOST_KEY_NAME)
    if host_key is None:
        raise NotFound(
            f"The host key of {name!r} is missing",
            f"{paths.env_dir(name) / keys.HOST_KEY_NAME} does not exist.",
            f"`prov up {name} --recreate` makes a new one (and a new pin).",
        )
    target = SshTarget(
        record.ssh_host or connect_host(record.bind),
        record.ssh_port or record.port,
        AGENT_USER,
        host_key,
        Path(record.identity_file),
    )
    alias = sshconf.alias_for(name)
    seconds = ready.await_ssh(
        engine,
        paths.ssh_config,
        target,
        alias,
        info.id,
        timeout,
        reporter,
        banner=engine.site.ports_here,
        project=record.project_dir,
    )
    # The rest of ready, as `up` has it: a proxy started now listens, the
    # project takes a file, a published port (its gate may relay it) answers.
    ready.beyond_login(
        engine,
        timeout,
        _proxy_address(info) if proxy is not None and not proxy.running else None,
        (record.bind, record.port) if record.port else None,
        proxy.id if proxy is not None else info.id,
    )
    config = info.labels.get(LABEL_DEVCONTAINER, "")
    if config and (restart or not info.running):
        _devcontainer_start(engine, paths, name, info, Path(config), record, reporter)
    return seconds


def _proxy_address(info: ContainerInfo) -> str | None:
    """Where the environment's egress proxy listens (None: it runs no proxy):
    its fixed address on the environment's network."""
    import ipaddress

    from provisioner import netplan

    if not info.labels.get(LABEL_EGRESS, "").startswith("allowlist"):
        return None
    _net, _, subnet = info.labels.get(LABEL_NETWORK, "").partition(" ")
    try:
        return netplan.addresses(ipaddress.IPv4Network(subnet)).proxy
    except ValueError:
        return None  # made before prov labelled it: not waited for


def _devcontainer_start(
    engine: Engine,
    paths: ProvPaths,
    name: str,
    info: ContainerInfo,
    config: Path,
    record: state.EnvRecord,
    reporter: Reporter,
) -> None:
    """devcontainer.json's postStartCommand (and its create commands, if they
    never succeeded in this container), read from the file again."""
    from provisioner import dcrun, devcontainer
    from provisioner.image import BASE_LABEL

    if not config.is_file():
        reporter.warn(f"{config} is gone: its postStartCommand did not run")
        return
    project = Path(record.project_dir)
    ctx = devcontainer.Context(project, name, devcontainer.host_env())
    dc = devcontainer.with_image(
        devcontainer.resolve(config, ctx),
        ctx,
        info.labels.get(devcontainer.METADATA_LABEL),
        info.labels.get(BASE_LABEL, ""),
    )
    dcrun.run_in(
        engine,
        info.id,
        dc,
        paths.ssh_config,
        sshconf.alias_for(name),
        str(project),
        new=False,
        started=True,
        reporter=reporter,
    )


def logs(
    name: str, follow: bool, tail: int | None, asked: targets.Asked = targets.NOTHING
) -> Iterator[bytes]:
    paths = ProvPaths.from_env()
    engine = engine_of(name, paths, asked)
    info = _container(engine, name, paths)
    return engine.logs(info.id, follow, tail)


@dataclass(frozen=True)
class DownResult:
    name: str
    removed: bool
    placeholders: tuple[str, ...] = ()  # the protection's, removed from the project


def _remove_gate(
    engine: Engine, paths: ProvPaths, proxy: ContainerInfo | None, info: ContainerInfo | None
) -> None:
    """The environment's proxy; and, once its own container is gone (`info`:
    what it was), a slot's network it was made on, with the slot's files."""
    from provisioner import slots

    slot = proxy.labels.get(LABEL_SLOT, "") if proxy is not None else ""
    if proxy is not None:
        engine.remove(proxy.id)
    if slot:
        slots.discard(engine, paths, slot, container=proxy.id if proxy else "")
    network = (info.labels.get(LABEL_NETWORK, "") if info is not None else "").split(" ")[0]
    if network.startswith("prov-slot-"):  # its proxy made again, not a slot any more
        engine.remove_network(network)


def down(
    name: str, paths: ProvPaths | None = None, asked: targets.Asked = targets.NOTHING
) -> DownResult:
    paths = paths or ProvPaths.from_env()
    engine = engine_of(name, paths, asked)
    info = own_container(engine, name, paths)
    proxy = own_container(engine, name, paths, "egress")
    if info is None:
        _remove_gate(engine, paths, proxy, None)
        if state.load(paths, name) is None:
            raise NotFound(
                f"No environment named {name!r}",
                "prov has no record and no container of that name.",
                "list them with `prov ls`.",
            )
        return DownResult(name, removed=False)
    stop_master(paths.ssh_config, sshconf.alias_for(name))
    if proxy is not None:  # first: the agent's way out goes before the agent
        engine.remove(proxy.id)
    engine.remove(info.id)
    _remove_gate(engine, paths, proxy, info)
    return DownResult(name, removed=True, placeholders=_unplace(name, paths))


def _unplace(name: str, paths: ProvPaths) -> tuple[str, ...]:
    """The protection's placeholders in the project, once no container covers
    them: removed while still empty."""
    from provisioner import protect

    try:
        record = state.load(paths, name)
    except ProvError:
        return ()
    if record is None or record.sync:  # a remote engine's project: none made here
        return ()
    return protect.remove_placeholders(Path(record.project_dir), paths.placeholders_ledger(name))


@dataclass(frozen=True)
class Removal:
    container_removed: bool
    # A root-owned project whose ACL grant for the agent was taken away
    # (with the number of files the agent made, handed to its owner); "".
    access_revoked: str = ""
    slots_removed: int = 0  # ready slots removed with the last environment


def rm(
    name: str, paths: ProvPaths | None = None, asked: targets.Asked = targets.NOTHING
) -> Removal:
    """Remove everything prov made for `name`: container, proxy, network, the
    home volume (on a remote engine also its keys and project volumes), keys,
    alias, pin."""
    paths = paths or ProvPaths.from_env()
    try:
        engine = engine_of(name, paths, asked)
    except DockerUnavailable as exc:
        raise DockerUnavailable(
            exc.what,
            exc.seen,
            f"{exc.hint.rstrip('.')}; or, if that engine is gone "
            f"for good, `prov rm {name} --forget` removes what prov keeps here.",
        ) from None
    info = own_container(engine, name, paths)
    proxy = own_container(engine, name, paths, "egress")
    env_dir = paths.env_dir(name)
    alias = sshconf.alias_for(name)
    if info is None and not env_dir.exists() and not sshconf.has_entry(paths.ssh_config, alias):
        raise NotFound(
            f"No environment named {name!r}", "Nothing to remove.", "list them with `prov ls`."
        )
    stop_master(paths.ssh_config, alias)
    if info is not None:
        engine.remove(info.id)
    _remove_gate(engine, paths, proxy, info)
    _unplace(name, paths)
    net = engine.network(network_name(name))
    if net is not None and is_ours(net.get("Labels") or {}, paths):
        engine.remove_network(network_name(name))
    for volume_name in (
        home_volume_name(name),
        keys_volume_name(name),
        project_volume_name(name),
        egress_volume_name(name),
    ):
        volume = engine.volume(volume_name)
        if volume is not None and is_ours(volume.get("Labels") or {}, paths):
            engine.remove_volume(volume_name)  # the agent's home and work: gone for good
    disk = engine.volume(homedisk.disk_volume_name(name))
    if disk is not None and is_ours(disk.get("Labels") or {}, paths):
        homedisk.release(engine, name, info.image_id if info is not None else "")
    revoked = _forget_here(name, paths)
    return Removal(
        container_removed=info is not None,
        access_revoked=revoked,
        slots_removed=_slots_after_last(engine, paths),
    )


def _volume_labels(name: str, paths: ProvPaths) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_NAME: name, LABEL_HOME: home_id(paths)}


def _slots_after_last(engine: Engine, paths: ProvPaths) -> int:
    """The last environment of this PROV_HOME gone: its ready slots go too
    (nothing would use them), unless the user asked for them (`--prepare`,
    PROV_SLOTS). How many were removed."""
    from provisioner import slots

    with contextlib.suppress(OSError):
        if any(paths.envs.iterdir()):
            return 0
    if slots.wanted(paths)[1] != "the default" or not slots.usable(engine):
        return 0
    return slots.remove_unclaimed(engine, paths)


def forget(name: str, paths: ProvPaths | None = None) -> str:
    """`rm --forget`: prov's own files here only (its engine is gone)."""
    paths = paths or ProvPaths.from_env()
    alias = sshconf.alias_for(name)
    if not paths.env_dir(name).exists() and not sshconf.has_entry(paths.ssh_config, alias):
        raise NotFound(
            f"No environment named {name!r}", "Nothing to forget.", "list them with `prov ls`."
        )
    stop_master(paths.ssh_config, alias)
    return _forget_here(name, paths)


def _forget_here(name: str, paths: ProvPaths) -> str:
    """Remove what prov keeps here for `name`; what `_revoke_access` did."""
    env_dir = paths.env_dir(name)
    alias = sshconf.alias_for(name)
    with file_lock(paths.lock), file_lock(paths.keys_lock):
        revoked = _revoke_access(name, paths)
        _remove_remote(name, paths)
        shutil.rmtree(env_dir, ignore_errors=True)
        try:
            sshconf.delete_entry(paths.ssh_config, alias)
            sshconf.unpin_host_key(paths.known_hosts, alias)
            sshconf.pin_published_port(user_known_hosts(), alias, (), 0, "", "")
        except ProvError as exc:
            # Everything else is gone; say so, and what is left to do by hand.
            raise type(exc)(
                f"Removed {name}'s container and keys, but not its alias: {exc.what}",
                exc.seen,
                exc.hint,
            ) from None
    return revoked


def _remove_remote(name: str, paths: ProvPaths) -> None:
    """Branch mode: the `prov-NAME` remote prov added to the host's repository."""
    from provisioner import branchmode

    try:
        record = state.load(paths, name)
    except ProvError:
        return
    if record is not None and record.branch:
        branchmode.remove_remote(Path(record.project_dir), name)


def _revoke_access(name: str, paths: ProvPaths) -> str:
    """A root-owned project the agent was granted access to: take the grant
    away, unless another environment here uses the same project and grant."""
    try:
        record = state.load(paths, name)
    except ProvError:
        return ""
    if record is None or not record.project_acl_uid:
        return ""
    for other in paths.envs.iterdir() if paths.envs.is_dir() else ():
        if other.name == name or not _is_env_name(other.name):
            continue
        try:
            them = state.load(paths, other.name)
        except ProvError:
            continue
        if (
            them is not None
            and them.project_dir == record.project_dir
            and them.project_acl_uid == record.project_acl_uid
        ):
            return ""  # still theirs: the last one to go takes it away
    from provisioner import projectacl

    project = Path(record.project_dir)
    try:
        owner = project.stat()
    except OSError:
        return ""
    handed = projectacl.revoke(
        project,
        record.project_acl_uid,
        (owner.st_uid, owner.st_gid),
        paths.project_acl_ledger(name),
    )
    return (
        f"{project} (the agent's ACL entries removed; {handed} file(s) it made given "
        f"to UID {owner.st_uid})"
    )


@dataclass(frozen=True)
class SecretUse:
    name: str
    host: str
    header: str
    requests: int  # served by the proxy lately (within the log kept)


@dataclass(frozen=True)
class EgressReport:
    name: str
    mode: str  # allowlist / open / none
    allowed: tuple[str, ...]
    denials: tuple[str, ...]  # the proxy's refusals, oldest first
    secrets: tuple[SecretUse, ...] = ()  # what the proxy injects (never a value)
    requests: dict[str, int] = field(default_factory=dict)  # host -> requests let through
    recent: tuple[str, ...] = ()  # the latest requests, allowed and refused, oldest first
    allowed_nets: tuple[str, ...] = ()  # private ranges it may reach (--allow-net)

    def public(self) -> dict[str, object]:
        return asdict(self)


def egress_report(
    name: str,
    tail: int = 2000,
    paths: ProvPaths | None = None,
    asked: targets.Asked = targets.NOTHING,
) -> EgressReport:
    """What the environment may reach, what its proxy refused lately, and the
    secrets it injects with how many requests each served."""
    from provisioner.egress import read_proxy_log

    paths = paths or ProvPaths.from_env()
    engine = engine_of(name, paths, asked)
    info = _container(engine, name, paths)
    mode, _, allowed = info.labels.get(LABEL_EGRESS, "open").partition(":")
    proxy = own_container(engine, name, paths, "egress")
    log = read_proxy_log(engine.logs_tail(proxy.id, tail) if proxy is not None else "")
    secrets = []
    for item in filter(None, info.labels.get(LABEL_SECRETS, "").split(",")):
        secret_name, _, rest = item.partition("@")
        secret_host, _, header = rest.partition(":")
        secrets.append(SecretUse(secret_name, secret_host, header, log.opened.get(secret_host, 0)))
    entries = [a for a in allowed.split(",") if a]
    return EgressReport(
        name,
        mode,
        tuple(a for a in entries if "/" not in a and " " not in a),
        log.denials,
        tuple(secrets),
        dict(sorted(log.allowed.items(), key=lambda item: (-item[1], item[0]))),
        log.recent[-RECENT_LINES:],
        tuple(a for a in entries if "/" in a),
    )


RECENT_LINES = 50  # of the proxy's log, in `prov egress`


@dataclass(frozen=True)
class GcImage:
    tag: str  # "" for an untagged image a build left behind
    image_id: str
    frees: int  # bytes no other image shares
    created: int

    @property
    def ref(self) -> str:
        return self.tag or self.image_id

    @property
    def shown(self) -> str:
        return self.tag or f"<untagged> {self.image_id.removeprefix('sha256:')[:12]}"


@dataclass(frozen=True)
class GcReport:
    removable: tuple[GcImage, ...]  # used by no container and under no image in use
    in_use: tuple[str, ...]  # tags of images containers use, or layers below them
    removed: bool  # False for a dry run
    slots: int = 0  # this PROV_HOME's ready slots: removed (with apply), or there
    # An older prov's outside network no container refers to: removed, or there.
    networks: tuple[str, ...] = ()

    @property
    def frees(self) -> int:
        return sum(image.frees for image in self.removable)


def gc(
    apply: bool = False, only: tuple[str, ...] = (), asked: targets.Asked = targets.NOTHING
) -> GcReport:
    """prov's images (prov-env:*) that no container on this engine uses, of any
    PROV_HOME, and that are not a layer below an image in use; removed only with
    `apply`; `only`: just these tags or IDs. The base images (prov-base,
    --base-image) are never touched."""
    from provisioner import slots
    from provisioner.image import IMAGE_LABEL, IMAGE_REPO

    engine = Engine.connect(targets.resolve(asked))
    # This home's ready slots first: they keep their image in use. The next
    # `up` makes them again (of the image it uses then).
    paths = ProvPaths.from_env()
    ready = 0
    if slots.usable(engine):
        ready = slots.remove_unclaimed(engine, paths) if apply else slots.ready_count(paths)
    # Untagged images of prov's (a build's stages, or one interrupted) too.
    listed = engine.images(IMAGE_REPO) + engine.dangling_images(f"{IMAGE_LABEL}=1")
    used = engine.image_ids_in_use()
    parents: dict[str, str] = {}
    for image_id in used:  # the chain of layers below each image in use
        current = image_id
        while current and current not in parents:
            parents[current] = engine.image_parent(current)
            current = parents[current]
    sizes = engine.unique_image_sizes() if listed else {}
    removable, in_use = select_unused(listed, used, parents, sizes, IMAGE_REPO)
    if only:  # just the images named (any tag of theirs)
        removable = tuple(
            i for i in removable if i.tag in only or i.image_id.removeprefix("sha256:") in only
        )
        in_use = tuple(t for t in in_use if t in only)
    if apply:
        for candidate in removable:
            engine.remove_image(candidate.ref)
    networks = _old_outside_networks(engine)
    if apply:
        for network in networks:
            engine.remove_network(network)
    return GcReport(removable, in_use, apply, ready, networks)


def _old_outside_networks(engine: Engine) -> tuple[str, ...]:
    """An older prov's outside network (spec.OLD_EGRESS_NETWORKS), once no
    container refers to it, running or stopped (a stopped one could not start
    again without it)."""
    from provisioner.spec import OLD_EGRESS_NETWORKS

    referred = {
        network
        for item in engine.summaries()
        for network in ((item.get("NetworkSettings") or {}).get("Networks") or {})
    }
    return tuple(
        name
        for name in OLD_EGRESS_NETWORKS
        if name not in referred
        and (found := engine.network(name)) is not None
        and (found.get("Labels") or {}).get(LABEL_MANAGED) == "true"
        and not found.get("Containers")
    )


def select_unused(
    listed: list[dict[str, Any]],
    used: set[str],
    parents: dict[str, str],
    sizes: dict[str, int],
    repo: str,
) -> tuple[tuple[GcImage, ...], tuple[str, ...]]:
    """(removable images, oldest first; tags kept because in use): an image is
    kept when a container uses it or it is a layer below one that does. An
    untagged one in `listed` (a build's leftover) is listed by its ID."""
    needed = set()
    for image_id in used:
        current = image_id
        while current and current not in needed:
            needed.add(current)
            current = parents.get(current, "")
    removable, in_use = [], []
    for image in listed:
        image_id = str(image.get("Id", ""))
        tags = [t for t in image.get("RepoTags") or [] if t.startswith(repo + ":")]
        if image_id in needed:
            in_use += tags
            continue
        created = int(image.get("Created") or 0)
        removable += [GcImage(tag, image_id, sizes.get(image_id, 0), created) for tag in tags]
        if not [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]:
            removable.append(GcImage("", image_id, sizes.get(image_id, 0), created))
    return tuple(sorted(removable, key=lambda i: i.created)), tuple(sorted(in_use))


@dataclass(frozen=True)
class EngineReport:
    name: str
    host: str
    reachable: bool
    detail: str  # version and size, or why it did not answer
    environments: int | None = None  # this PROV_HOME's, on it
    cpus: int | None = None
    memory: int | None = None  # bytes, the engine host's total
    available: int | None = None  # bytes the engine host could still give
    running: int | None = None  # containers running there (anyone's)

    def public(self) -> dict[str, object]:
        return asdict(self)


def engine_reports(
    timeout: float = 10.0, paths: ProvPaths | None = None, named_only: bool = False
) -> list[EngineReport]:
    """Every named engine and the one prov uses without --engine, each asked in
    parallel; one that does not answer within `timeout` is reported as such.
    `named_only`: the named engines alone (the candidates of --engine auto)."""
    import threading

    from provisioner.engine import targets

    paths = paths or ProvPaths.from_env()
    asked = [] if named_only else [("(default)", targets.resolve())]
    asked += [
        (name, targets.EngineTarget(host, f"engine {name!r}"))
        for name, host in sorted(targets.named().items())
    ]
    results: dict[str, EngineReport] = {}

    def ask(name: str, target: targets.EngineTarget) -> None:
        try:
            engine = Engine.connect(target)
            info = engine.info()
            mine = [s for s in engine.summaries() if is_ours(s.get("Labels") or {}, paths)]
            envs = sum(1 for s in mine if (s.get("Labels") or {}).get(LABEL_ROLE, "env") == "env")
            results[name] = EngineReport(
                name,
                target.host,
                True,
                f"Docker {info.get('ServerVersion', '?')}",
                envs,
                int(info.get("NCPU") or 0) or None,
                int(info.get("MemTotal") or 0) or None,
                engine.memory_available(),
                int(info.get("ContainersRunning") or 0),
            )
        except ProvError as exc:
            results[name] = EngineReport(name, target.host, False, exc.seen or exc.what)

    threads = [threading.Thread(target=ask, args=t, daemon=True) for t in asked]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return [
        results.get(name)
        or EngineReport(name, target.host, False, f"no answer within {timeout:g} s")
        for name, target in asked
    ]


def sync_project(
    name: str,
    back: bool,
    delete: bool,
    paths: ProvPaths | None = None,
    asked: targets.Asked = targets.NOTHING,
) -> str:
    """rsync the project of a remote environment one way; a summary line."""
    from provisioner import sync

    paths = paths or ProvPaths.from_env()
    record = state.require(paths, name)
    if record.sync != "rsync":
        where = (
            "the engine host's own copy (--sync none)"
            if record.sync == "none"
            else "this machine's project dir itself (it is mounted)"
        )
        raise UsageError(
            f"{name}'s project is not synced",
            f"Its environment works on {where}; there is nothing to move.",
            "`prov sync` is for environments made on a remote engine with --sync rsync.",
        )
    info = _container(engine_of(name, paths, asked), name, paths)
    if not info.running:
        raise NotFound(
            f"{name} is not running",
            f"Its container is {info.status}; rsync reaches the project through its alias.",
            f"`prov start {name}` first.",
        )
    alias, project = sshconf.alias_for(name), Path(record.project_dir)
    if back:
        protected = tuple(filter(None, record.protect.split("\n")))
        return sync.pull(paths.ssh_config, alias, project, delete, protected)
    return sync.push(paths.ssh_config, alias, project, delete)
