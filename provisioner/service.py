"""`up`, in three typed stages: prepare (prepare.py: checks, keys, image) ->
place (network, port, plan, containers, alias; under prov's lock) -> finish
(start, wait for SSH, record). Many environments run the stages pipelined.
What a run created is kept in a ledger and undone on failure. Progress goes
to a Reporter; only the CLI prints.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shlex
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from provisioner import (
    host,
    hostsize,
    injection,
    limits,
    netplan,
    openssh,
    ports,
    prepare,
    ready,
    reconcile,
    slots,
    sshconf,
    state,
    sync,
)
from provisioner.config import (
    AGENT_USER,
    ProvPaths,
    UpRequest,
    is_loopback,
    user_known_hosts,
    user_ssh_config,
)
from provisioner.engine import ContainerInfo, Engine, targets
from provisioner.engine.api import PortTaken, SubnetTaken
from provisioner.engine.hostview import HostView
from provisioner.errors import ConflictError, ProvError
from provisioner.fsutil import ensure_private_dir, file_lock, require_own_home
from provisioner.image import BuiltImage, ImageRequest
from provisioner.ledger import Made, abandon
from provisioner.ownership import is_ours
from provisioner.plan import (
    AUTHORIZED_KEYS_FILE,
    AUTHORIZED_KEYS_PATH,
    LABEL_NETWORK,
    LABEL_PORT,
    LABEL_PROTECT,
    LABEL_SLOT,
    SESSION_ENV_PATH,
    NetworkSpec,
    Placement,
    Plan,
    PlanInputs,
    SshTarget,
    build_network,
    build_plan,
    connect_host,
    egress_volume_name,
    home_volume_name,
    keys_volume_name,
    network_name,
    scratch_each,
    slot_network_name,
)
from provisioner.progress import Reporter
from provisioner.spec import EGRESS_NETWORK

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class UpResult:
    name: str
    container: str
    ssh_alias: str
    host: str
    port: int
    user: str
    identity_file: str
    known_hosts: str
    host_key_fingerprint: str
    project_dir: str
    ntm_command: str
    ntm_argv: tuple[str, ...]
    ntm_env: dict[str, str]
    ready_seconds: float
    action: str  # created / started / unchanged / recreated
    # sshd on a host port (`--port`, or --egress open): where, and on which
    # engine host ("" for this machine)
    published_bind: str = ""
    published_port: int = 0
    published_on: str = ""
    image_seconds: float = 0.0  # of the run: building the image, when it was built
    limits: str = ""  # memory, CPUs, processes, as sized for the engine host
    disk: str = ""  # what bounds the agent's writes outside the project

    @property
    def guide_command(self) -> str:
        """The guide's `ssh -p PORT agent@localhost` form for the published port."""
        if not self.published_port:
            return ""
        host = connect_host(self.published_bind)
        shown = "localhost" if is_loopback(host) else host
        return shlex.join(
            [
                "ssh",
                "-p",
                str(self.published_port),
                "-i",
                self.identity_file,
                f"{self.user}@{shown}",
            ]
        )

    def public(self) -> dict[str, object]:
        return {
            "name": self.name,
            "container": self.container,
            "ssh_alias": self.ssh_alias,
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "identity_file": self.identity_file,
            "known_hosts": self.known_hosts,
            "host_key_fingerprint": self.host_key_fingerprint,
            "project_dir": self.project_dir,
            "ntm_command": self.ntm_command,
            "published": {
                "bind": self.published_bind,
                "port": self.published_port,
                "engine_host": self.published_on,
                "ssh_command": self.guide_command,
            }
            if self.published_port
            else None,
        }


def _own_ports(own: ContainerInfo | None) -> set[int]:
    """Host ports an environment's own container holds (published, or in its label)."""
    if own is None:
        return set()
    held = {p for _, p in own.published}
    with contextlib.suppress(ValueError):
        held.add(int(own.labels.get(LABEL_PORT, "")))
    return held


@dataclass(frozen=True)
class _Placed:
    """Stage 2 (`_place`): the plan, and the containers that now exist for it."""

    made: Made
    plan: Plan
    port: int
    action: str
    container_id: str
    reauthorize: bool  # the authorized key on this machine was repaired

    @property
    def prepared(self) -> prepare.Prepared:
        return self.made.prepared


UpOutcome = UpResult | ProvError


@dataclass(frozen=True)
class LostPort:
    """An environment whose port, chosen by prov, was taken before Docker could
    start it (what this run made for it already undone): tried once more."""

    error: PortTaken
    port: int


_Outcome = UpOutcome | LostPort  # within one run of up_many


def up(
    request: UpRequest,
    reporter: Reporter,
    paths: ProvPaths | None = None,
    asked: targets.Asked = targets.NOTHING,
) -> UpResult:
    outcome = up_many([(request, reporter)], paths, asked)[0]
    if isinstance(outcome, ProvError):
        raise outcome
    return outcome


def up_many(
    items: Sequence[tuple[UpRequest, Reporter]],
    paths: ProvPaths | None = None,
    asked: targets.Asked = targets.NOTHING,
) -> list[UpOutcome]:
    """Bring environments up together; one outcome per item, in order.

    Pipelined so that ten environments cost little more than one: each is
    prepared (project, keys, image) in parallel; meanwhile, under prov's lock,
    the ports Docker has reserved are listed once (Docker's container list
    waits for containers that are starting, so it must come before any start)
    and each environment, as soon as it is prepared, gets its network and
    containers, then is handed on to be started and awaited in parallel. A
    failure affects only its own environment; Ctrl-C undoes what this run
    created, for all of them.
    """
    paths = paths or ProvPaths.from_env()
    require_own_home()
    ensure_private_dir(paths.home)
    # Each environment on its engine: the one named for this run, else the one
    # it was made on; environments of one engine come up together.
    groups: dict[str, tuple[targets.EngineTarget, list[int]]] = {}
    placing: list[int] = []  # --engine auto, for environments not made yet
    for index, (request, _reporter) in enumerate(items):
        recorded = state.engine_of(paths, request.name)
        if asked.auto and not recorded:  # an existing environment stays where it was made
            placing.append(index)
            continue
        target = targets.for_env(request.name, recorded, asked)
        groups.setdefault(target.host, (target, []))[1].append(index)
    if placing:
        chosen = _auto_place([items[i] for i in placing], paths)
        for index, target in zip(placing, chosen, strict=True):
            groups.setdefault(target.host, (target, []))[1].append(index)
    outcomes: list[_Outcome | None] = [None] * len(items)
    for target, indexes in groups.values():
        try:
            done: list[_Outcome] = list(_up_on(target, [items[i] for i in indexes], paths))
            # A port prov chose was taken between its check and Docker's start
            # (each failure already undone): once more, with what is taken now.
            again = port_races(done, [items[i][0] for i in indexes])
            if again:
                lost = frozenset(o.port for k in again if isinstance(o := done[k], LostPort))
                redone = _up_on(target, [items[indexes[k]] for k in again], paths, lost)
                for k, outcome in zip(again, redone, strict=True):
                    done[k] = outcome
        except ProvError as exc:  # that engine: its environments fail, the others go on
            done = [exc] * len(indexes)
        for index, outcome in zip(indexes, done, strict=True):
            outcomes[index] = outcome
    return [o.error if isinstance(o, LostPort) else o for o in outcomes if o is not None]


def _up_on(
    target: targets.EngineTarget,
    items: Sequence[tuple[UpRequest, Reporter]],
    paths: ProvPaths,
    avoid: frozenset[int] = frozenset(),
) -> list[_Outcome]:
    targets.require_supported(target, "prov up")  # before any connection to it
    engine = Engine.connect(target)
    builder = _builder(engine)
    images: dict[ImageRequest, BuiltImage] = {}
    images_lock = threading.Lock()

    def prepare_one(item: tuple[UpRequest, Reporter]) -> prepare.Prepared:
        return prepare.prepare(engine, builder, item[0], item[1], paths, images, images_lock)

    # Many containers starting at once share the CPU; polling their ports
    # as often as for one would only take more of it.
    poll = ready.BANNER_POLL if len(items) <= 1 else ready.BANNER_POLL_CROWDED
    publishing = any(request.publishes for request, _ in items)

    def finish(placed: _Placed) -> _Outcome:
        try:
            return _finish(engine, placed, paths, poll)
        except PortTaken as exc:
            return LostPort(exc, placed.port)
        except ProvError as exc:
            return exc

    outcomes: list[prepare.Prepared | _Outcome]
    ledger: list[Made] = []  # environments Docker may hold something of
    done: dict[int, _Outcome] = {}  # by id() of the prepare.Prepared
    try:
        if len(items) <= 1:
            outcomes = list(_each(prepare_one, items))
            prepared_ones = [o for o in outcomes if isinstance(o, prepare.Prepared)]
            placed_ones: list[_Placed] = []
            done.update(
                _place(engine, prepared_ones, paths, ledger, publishing, placed_ones.append, avoid)
            )
            for placed in placed_ones:
                done[id(placed.prepared)] = finish(placed)
        else:
            from concurrent.futures import Future, ThreadPoolExecutor, as_completed

            workers = min(len(items), 32)
            futures: dict[int, Future[_Outcome]] = {}
            with (
                ThreadPoolExecutor(max_workers=workers) as preparing,
                ThreadPoolExecutor(max_workers=workers) as finishing,
            ):
                prepared = [preparing.submit(_guarded, prepare_one, item) for item in items]

                def in_order_of_readiness() -> Iterator[prepare.Prepared]:
                    for future in as_completed(prepared):
                        outcome = future.result()
                        if isinstance(outcome, prepare.Prepared):
                            yield outcome

                def launch(placed: _Placed) -> None:
                    futures[id(placed.prepared)] = finishing.submit(finish, placed)

                # Each environment is placed as soon as it is prepared, while
                # the others are still being prepared (prepare never waits
                # for the lock _place holds).
                done.update(
                    _place(
                        engine, in_order_of_readiness(), paths, ledger, publishing, launch, avoid
                    )
                )
                outcomes = [future.result() for future in prepared]
                done.update({key: future.result() for key, future in futures.items()})
    except BaseException:
        for made in ledger:
            abandon(engine, made, paths)
        raise
    _refill_slots(engine, paths, [o for o in outcomes if isinstance(o, prepare.Prepared)])
    return [done[id(o)] if isinstance(o, prepare.Prepared) else o for o in outcomes]


def _refill_slots(engine: Engine, paths: ProvPaths, prepared: list[prepare.Prepared]) -> None:
    """Slots for the next `up`s, made in the background (see slots)."""
    images = {
        p.egress_image
        for p in prepared
        if p.egress_image and p.request.containment.egress == "allowlist"
    }
    for image in images:
        with contextlib.suppress(OSError):  # an `up` that worked is not failed by this
            slots.refill_later(engine, paths, image)


def port_races(outcomes: Sequence[_Outcome], requests: Sequence[UpRequest]) -> list[int]:
    """Which environments lost the port prov chose for them (not one asked with
    --port) to something that took it before Docker started the container."""
    return [
        k
        for k, (outcome, request) in enumerate(zip(outcomes, requests, strict=True))
        if isinstance(outcome, LostPort) and request.port is None
    ]


def _auto_place(
    items: Sequence[tuple[UpRequest, Reporter]], paths: ProvPaths
) -> list[targets.EngineTarget]:
    """--engine auto: spread new environments over the named engines by free memory."""
    from provisioner import lifecycle, placement

    reports = lifecycle.engine_reports(paths=paths, named_only=True)
    candidates = [
        placement.Candidate(r.name, r.available or 0, r.running or 0)
        for r in reports
        if r.reachable
    ]
    chosen = placement.spread(candidates, [req.containment.memory for req, _ in items])
    hosts = {r.name: r.host for r in reports}
    skipped = [r.name for r in reports if not r.reachable]
    for (request, reporter), name in zip(items, chosen, strict=True):
        reporter.note(
            f"--engine auto: {request.name} goes to engine {name!r}"
            + (f" ({', '.join(skipped)} did not answer)" if skipped else "")
        )
    return [targets.EngineTarget(hosts[name], f"engine {name!r} (auto)") for name in chosen]


def _builder(engine: Engine) -> Engine:
    """Where images are built: this machine's engine (a remote one gets a copy)."""
    if engine.site.builds_here:
        return engine
    local = targets.EngineTarget(targets.DEFAULT_HOST, "this machine's engine, for builds")
    try:
        return Engine.connect(local)
    except ProvError as exc:
        raise ProvError(
            "prov builds images on this machine's Docker engine, and none answers here",
            f"The environment goes to {engine.target.describe()}, which gets a copy of the "
            f"image built here. {exc.seen}",
            "start Docker on this machine (`sudo scripts/start-dockerd.sh`), then run "
            "`prov up` again.",
        ) from None


def _guarded(fn: Callable[[_T], _R], item: _T) -> _R | ProvError:
    try:
        return fn(item)
    except ProvError as exc:
        return exc


def _each(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R | ProvError]:
    """`fn` over `items`, in threads when there are several; a ProvError is that
    item's outcome, anything else (Ctrl-C) propagates once all have finished."""

    if len(items) <= 1:
        return [_guarded(fn, item) for item in items]
    # Imported here: it loads logging too (~10 ms), which one environment skips.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(items), 32)) as pool:
        return list(pool.map(lambda item: _guarded(fn, item), items))


def _place(
    engine: Engine,
    prepared_ones: Iterable[prepare.Prepared],
    paths: ProvPaths,
    ledger: list[Made],
    publishing: bool,
    on_placed: Callable[[_Placed], None],
    avoid: frozenset[int] = frozenset(),
) -> dict[int, ProvError]:
    """Give each environment its network, port and container, under prov's lock
    (a created container reserves its port in Docker's eyes), and hand each one
    placed to `on_placed`. What Docker holds for each is in `ledger` (undone by
    the caller if the run is interrupted); failures, already undone, come back
    keyed by id() of their prepare.Prepared. `publishing`: some environment publishes
    a port (then the ports Docker has reserved are listed first)."""
    errors: dict[int, ProvError] = {}
    failed: list[Made] = []
    with file_lock(paths.lock):
        view = engine.host_view()
        reserved = (engine.reserved_ports() | avoid) if publishing else set()
        used = [*netplan.parse_subnets(engine.network_subnets()), *view.routes]
        for prepared in prepared_ones:
            made = Made(prepared)
            ledger.append(made)
            try:
                placed = _place_one(engine, made, paths, reserved, used, view)
            except ProvError as exc:
                ledger.remove(made)
                failed.append(made)
                errors[id(prepared)] = exc
                continue
            reserved.add(placed.port)
            on_placed(placed)
    # Outside the lock, which _abandon takes itself.
    for made in failed:
        abandon(engine, made, paths)
    return errors


def _place_one(
    engine: Engine,
    made: Made,
    paths: ProvPaths,
    reserved: set[int],
    used: list[ipaddress.IPv4Network],
    view: HostView,
) -> _Placed:
    prepared = made.prepared
    request = prepared.request
    port = 0
    if request.publishes:
        port = ports.choose_port(
            reserved,
            request.port,
            request.bind,
            _own_ports(prepared.existing),
            prepared.record.port if prepared.record else None,
            view.bindable,
        )
    # A subnet another network took between the listing and the creation
    # (another PROV_HOME's `up`, the user's `docker network create`) is
    # chosen again, avoiding every subnet Docker holds by then.
    slot = _claim_slot(engine, prepared, paths)
    if slot is not None:
        made.proxy_id, made.slot = slot.container_id, slot.slot_id  # handed over by _launch
    for attempt in range(SUBNET_TRIES):
        existing_network = engine.network(_network_name(prepared, slot))
        network, addrs = _network_for(existing_network, request, paths, used)
        used.append(addrs.subnet)
        plan = _plan(engine, prepared, paths, port, network, addrs)
        try:
            decision = _converge(engine, made, plan, existing_network, paths, view)
            break
        except SubnetTaken:
            if attempt == SUBNET_TRIES - 1:
                raise
            used.extend(netplan.parse_subnets(engine.network_subnets()))
    assert made.container_id is not None  # noqa: S101 - _converge sets it or raises
    # The alias is written here, under the lock _place holds anyway, so that no
    # environment's start waits for the others' placing.
    pair = prepared.host_pair
    alias = sshconf.alias_for(request.name)
    sshconf.pin_host_key(paths.known_hosts, alias, pair.public.key_type, pair.public.blob_b64)
    sshconf.write_entry(paths.ssh_config, plan.ssh)
    return _Placed(
        made=made,
        plan=plan,
        port=port,
        action=decision.action,
        container_id=made.container_id,
        reauthorize=decision.reauthorize,
    )


def _claim_slot(engine: Engine, prepared: prepare.Prepared, paths: ProvPaths) -> slots.Slot | None:
    """A ready slot for a new environment in the default containment (its
    network and its started proxy: see slots), else None: it makes its own."""
    request = prepared.request
    if (
        prepared.existing is not None  # an environment keeps its network
        or request.containment.egress != "allowlist"
        or request.publishes  # its gate relays a port, fixed when a container is made
        or not prepared.egress_image
        or not slots.usable(engine)
    ):
        return None
    # A slot's firewall allows what the user's file did when it was made.
    slot = slots.claim(engine, paths, prepared.egress_image, prepared.allow_nets)
    if slot is not None:
        # One this environment had before (`down` keeps a network it made).
        old = engine.network(network_name(request.name))
        if old is not None and is_ours(old.get("Labels") or {}, paths):
            engine.remove_network(network_name(request.name))
    return slot


def _network_name(prepared: prepare.Prepared, slot: slots.Slot | None) -> str:
    """The environment's network: a claimed slot's, the one its container is
    on (a slot's, for one made on a slot), else prov-NAME-net."""
    if slot is not None:
        return slot.network
    labelled = prepared.existing.labels.get(LABEL_NETWORK, "") if prepared.existing else ""
    return labelled.split(" ", 1)[0] or network_name(prepared.request.name)


def _plan(
    engine: Engine,
    prepared: prepare.Prepared,
    paths: ProvPaths,
    port: int,
    network: NetworkSpec,
    addrs: netplan.Addresses,
) -> Plan:
    request = prepared.request
    size = hostsize.host_size(engine, paths)
    return build_plan(
        PlanInputs(
            name=request.name,
            image=prepared.built.tag,
            image_hash=prepared.built.content_hash,
            bind=request.bind,
            port=port,
            project_dir=prepared.project.path,
            project_uid=prepared.project.uid,
            project_gid=prepared.project.gid,
            projects_base=host.ntm_projects_base(),
            credentials=prepared.mounted,
            authorized_key=prepared.public,
            identity_file=prepared.identity,
            host_key_public=prepared.host_pair.public,
            host_key_private=prepared.host_pair.private_openssh,
            agents=request.agents,
            paths=paths,
            network=network,
            env_address=addrs.env,
            containment=(resolved := limits.resolve(request.containment, size)),
            disk=limits.disk_text(
                prepared.home.size,
                prepared.home.why,
                resolved.sudo,
                scratch_each(resolved),
            ),
            home_bound=prepared.home.size,
            egress_image=prepared.egress_image,
            egress_address=addrs.proxy,
            egress_network=EGRESS_NETWORK,
            allow=prepared.allow,
            allow_nets=prepared.allow_nets,
            hosts=prepared.hosts,
            extra_mounts=request.extras.mounts,
            session_env=prepared.session_env,
            gpus=request.extras.gpus,
            agent_versions=prepared.built.agent_versions,
            placement=Placement(
                mounts_local_paths=engine.site.mounts_local_paths,
                project_copied=prepared.sync == "rsync",
                proxy_command=engine.site.proxy_command(),
            ),
            guards=prepared.guards,
            secrets=prepared.secrets,
            egress_ca=prepared.egress_ca,
            upstream_cas=prepared.upstream_cas,
            credentials_mode=prepared.credentials,
            branch=prepared.branch,
            forward_ports=prepared.devcontainer.forward_ports if prepared.devcontainer else (),
            devcontainer=str(prepared.devcontainer.path) if prepared.devcontainer else "",
        )
    )


def _finish(engine: Engine, placed: _Placed, paths: ProvPaths, poll: float) -> UpResult:
    """Stage 3: start (or re-verify) a placed environment and wait for SSH."""
    plan, action, container_id = placed.plan, placed.action, placed.container_id
    prepared = placed.prepared
    request, reporter, port = prepared.request, prepared.reporter, placed.port
    host_pair, identity = prepared.host_pair, prepared.identity
    alias = sshconf.alias_for(request.name)
    proxy_start: _Background | None = None
    # The entrypoint's first start took back what the image gave the agent.
    taken = _Taken(engine, container_id) if action in ("created", "recreated") else None
    try:
        proxy_start = _launch(
            engine,
            plan,
            action,
            container_id,
            reporter,
            _proxy_job(engine, placed, paths),
        )
        new_proxy = proxy_start is not None  # ready once it listens
        target = SshTarget(plan.ssh.hostname, plan.ssh.port, AGENT_USER, host_pair.public, identity)
        if placed.reauthorize:
            if action == "unchanged":
                # sshd reads its authorized key from a root-owned copy the entrypoint
                # made at start: replace that copy (a stopped one gets it at start).
                key = next(k for k in plan.container.key_files if k.name == AUTHORIZED_KEYS_FILE)
                engine.inject_files(container_id, [(AUTHORIZED_KEYS_PATH, 0o644, key.content)])
            reporter.warn(
                f"the environment's authorized key did not match {identity} (a key was "
                "removed or replaced here): authorized it again"
            )
        if action in ("unchanged", "started") and prepared.existing is not None:
            _warn_unguarded(prepared.existing, plan, reporter)
        if action in ("unchanged", "started") and _update_session_env(
            engine, plan, container_id, reporter
        ):
            openssh.stop_multiplexing(paths.ssh_config, alias)
        # The login's command is the check that the agent may write its project.
        project = str(prepared.project.path)
        if action == "unchanged":
            seconds = ready.recheck_ssh(paths.ssh_config, alias, project)
        else:
            seconds = ready.await_ssh(
                engine,
                paths.ssh_config,
                target,
                alias,
                container_id,
                request.timeout,
                reporter,
                poll,
                banner=engine.site.ports_here,
                project=project,
                after_banner=taken.start if taken is not None else None,
            )
        if proxy_start is not None:
            proxy_start.join()
            proxy_start = None
        _ready_beyond_ssh(engine, plan, prepared, container_id, proxy_started=new_proxy)
        if prepared.sync == "rsync":
            reporter.step("pushing the project (rsync)")
            sync.push(paths.ssh_config, alias, prepared.project.path)
        if prepared.branch is not None:
            _clone(paths, alias, prepared, reporter)
    except BaseException as exc:
        if proxy_start is not None:  # never remove a container while it is being started
            proxy_start.settle()
        if taken is not None:
            taken.settle()
        if isinstance(exc, ProvError):  # anything else: up_many undoes every environment
            abandon(engine, placed.made, paths)
        raise

    _record(engine, plan, prepared, port, paths, alias)
    if prepared.devcontainer is not None:
        _devcontainer_commands(engine, paths, alias, prepared, action, container_id)
    said = taken.result() if taken is not None else ""
    disk = plan.disk + (f"; {said}" if said else "")
    return _result(engine, plan, prepared, action, seconds, paths, disk)


def _ready_beyond_ssh(
    engine: Engine,
    plan: Plan,
    prepared: prepare.Prepared,
    container_id: str,
    proxy_started: bool,
) -> None:
    """See ready.beyond_login."""
    gate = plan.egress.container if plan.egress is not None else None
    proxying = plan.egress is not None and plan.egress.proxying
    ready.beyond_login(
        engine,
        prepared.request.timeout,
        gate.address if gate is not None and proxying and proxy_started else None,
        plan.published,
        gate.name if gate is not None else container_id,
    )


def _record(
    engine: Engine,
    plan: Plan,
    prepared: prepare.Prepared,
    port: int,
    paths: ProvPaths,
    alias: str,
) -> None:
    """What a ready environment leaves: its record, the Include in the user's
    ssh config, the published port's pin, the keeper running; a warning when
    plain ssh would not find the alias."""
    request, reporter, identity = prepared.request, prepared.reporter, prepared.identity
    host_pair = prepared.host_pair
    with file_lock(paths.lock):
        state.save(
            paths,
            state.EnvRecord(
                name=request.name,
                port=port,
                bind=request.bind,
                project_dir=str(prepared.project.path),
                identity_file=str(identity),
                base_image=request.base_image,
                ssh_host=plan.ssh.hostname,
                ssh_port=plan.ssh.port,
                engine=engine.target.host,
                sync=prepared.sync,
                project_acl_uid=prepared.project.uid if prepared.project.grant else 0,
                protect="\n".join(request.extras.protect),
                branch=prepared.branch or "",
                branch_base=prepared.branch_base,
            ),
        )
        if request.write_user_ssh_config and sshconf.ensure_include(
            user_ssh_config(), paths.ssh_config
        ):
            reporter.note(f"added `Include {paths.ssh_config}` to {user_ssh_config()}")
        if request.write_user_ssh_config and engine.site.pins_published_port:
            hosts, published_port = _port_pins(plan.published)
            public = host_pair.public
            changed = sshconf.pin_published_port(
                user_known_hosts(), alias, hosts, published_port, public.key_type, public.blob_b64
            )
            if changed and hosts:
                reporter.note(
                    f"pinned the host key for port {published_port} of {' and '.join(hosts)} "
                    f"in {user_known_hosts()}"
                )
    if prepared.credentials == "tokens":
        from provisioner import keeper

        keeper.ensure_running(paths)  # carries a refresh inside to the host, and back
    if request.write_user_ssh_config:
        problem = openssh.alias_problem(alias, plan.ssh.hostname, plan.ssh.port)
        if problem:
            reporter.warn(
                f"{problem}. NTM runs plain ssh, so it cannot reach this environment until "
                f"that is fixed: add `{sshconf.include_line(paths.ssh_config)}` at the top of "
                "the config ssh reads, or run prov with the HOME of your passwd entry"
            )


def _result(
    engine: Engine,
    plan: Plan,
    prepared: prepare.Prepared,
    action: str,
    seconds: float,
    paths: ProvPaths,
    disk: str,
) -> UpResult:
    request, identity, host_pair = prepared.request, prepared.identity, prepared.host_pair
    return UpResult(
        name=request.name,
        container=plan.container.name,
        ssh_alias=plan.ssh.alias,
        host=plan.ssh.hostname,
        port=plan.ssh.port,
        user=AGENT_USER,
        identity_file=str(identity),
        known_hosts=str(paths.known_hosts),
        host_key_fingerprint=host_pair.public.fingerprint,
        project_dir=str(prepared.project.path),
        ntm_command=plan.ntm_display,
        ntm_argv=plan.ntm_command,
        ntm_env=plan.ntm_env,
        ready_seconds=seconds,
        action=action,
        published_bind=plan.published[0] if plan.published else "",
        published_port=plan.published[1] if plan.published else 0,
        published_on=engine.site.host_name,
        image_seconds=prepared.image_seconds,
        limits=plan.limits,
        disk=disk,
    )


def _port_pins(published: tuple[str, int] | None) -> tuple[tuple[str, ...], int]:
    """The names a client on this machine uses for a published port (the
    address it connects to and, on loopback, `localhost`: the guide's form),
    and the port; none when nothing is published."""
    if published is None:
        return (), 0
    host = connect_host(published[0])
    return ((host, "localhost") if is_loopback(host) else (host,)), published[1]


SUBNET_TRIES = 3


def _network_for(
    existing: dict[str, Any] | None,
    request: UpRequest,
    paths: ProvPaths,
    used: list[ipaddress.IPv4Network],
) -> tuple[NetworkSpec, netplan.Addresses]:
    """The environment's network: the existing one (same addresses, so the
    alias stays valid), else a new /28 that overlaps nothing in `used`."""
    subnet = None
    if existing is not None:
        if not is_ours(existing.get("Labels") or {}, paths):
            raise ConflictError(
                f"Docker network {network_name(request.name)} is not this prov home's",
                "It was made by another PROV_HOME, or by someone else.",
                f"remove it (`docker network rm {network_name(request.name)}`) if it is stale, "
                "or choose another name.",
            )
        configs = (existing.get("IPAM") or {}).get("Config") or []
        subnets = netplan.parse_subnets([str(c.get("Subnet", "")) for c in configs])
        subnet = subnets[0] if subnets else None
    if subnet is None:
        subnet = netplan.choose_subnet(used, netplan.pool())
    addrs = netplan.addresses(subnet)
    name = str(existing.get("Name", "")) if existing is not None else ""
    spec = build_network(
        request.name, str(subnet), addrs.gateway, request.containment, paths, network=name
    )
    return spec, addrs


def _write_egress_conf(engine: Engine, plan: Plan, paths: ProvPaths, name: str) -> bool:
    """The egress proxy's files, in the env dir (and, on a remote engine, in the
    volume the proxy mounts there); whether they changed."""
    if plan.egress is None or not plan.egress.files:
        return False
    files = {f.name: f.content for f in plan.egress.files}
    changed = injection.write_conf_dir(paths.egress_dir(name), files)
    if engine.site.files_in_volumes and (
        changed or engine.volume(egress_volume_name(name)) is None
    ):
        engine.fill_volume(
            egress_volume_name(name),
            plan.egress.container.image,
            [(f.name, f.mode, f.content) for f in plan.egress.files],
            plan.egress.container.volume_labels,
            top_mode=0o755,
        )
    return changed


def _converge(
    engine: Engine,
    made: Made,
    plan: Plan,
    network: dict[str, Any] | None,
    paths: ProvPaths,
    view: HostView,
) -> reconcile.Decision:
    """Decide what to do (reconcile.decide) and create what is missing (a
    created container reserves its port and address in Docker's eyes, so this
    runs under prov's lock), recording each creation in `made`. Starting is
    left to `_launch`, outside the lock, so parallel `up`s overlap.
    `network`: Docker's view of the environment's network, if it exists."""
    prepared = made.prepared
    existing, request, reporter = prepared.existing, prepared.request, prepared.reporter
    c = plan.container
    proxy = prepared.existing_proxy
    stale = reconcile.stale_keys(c.keys_dir, c.key_files) if existing is not None else set()
    decision = reconcile.decide(existing, plan, stale, request.recreate)
    # The proxy's configuration: a running proxy with an older one is made again.
    conf_changed = _write_egress_conf(engine, plan, paths, request.name)
    if decision.keys_to_write:  # a new container's keys, or a repaired authorized key
        reconcile.write_keys(c)
        if engine.site.files_in_volumes:  # never as files of this machine there
            engine.fill_volume(
                keys_volume_name(request.name),
                c.image,
                [(k.name, k.mode, k.content) for k in c.key_files],
                c.volume_labels,
            )
    for warning in decision.warnings:
        reporter.warn(warning)
    if existing is not None and decision.action in ("unchanged", "started"):
        _keep(engine, made, plan, paths, existing, decision, conf_changed)
        return decision
    # Check what could stop the new container from starting before the old
    # one is removed: a failed recreate must not cost a working environment.
    published = plan.published
    held = (*(existing.published if existing else ()), *(proxy.published if proxy else ()))
    if published and not view.bindable(*published) and published not in held:
        where = engine.site.where()
        raise ConflictError(
            f"Port {published[1]} on {published[0]}{where} is already in use",
            "Another process listens there, so Docker could not publish sshd on it.",
            "pick another --port, or leave --port out to let prov choose a free one.",
        )
    if existing is not None:
        reporter.step("recreating the container: " + "; ".join(decision.drift))
        # The master connection to the old container must not serve the new one.
        openssh.stop_master(paths.ssh_config, sshconf.alias_for(request.name))
        engine.remove(existing.id)
    if proxy is not None:
        engine.remove(proxy.id)
        # A slot this environment was made on, left behind by a new network (its
        # container was removed behind prov's back): its network goes too.
        old_slot = proxy.labels.get(LABEL_SLOT, "")
        if old_slot and slot_network_name(old_slot) != plan.network.name:
            slots.discard(engine, paths, old_slot, container=proxy.id)
    if network is not None and bool(network.get("Internal")) != plan.network.internal:
        engine.remove_network(plan.network.name)  # egress changed: open <-> internal
        network = None
    if plan.egress is not None:
        engine.ensure_outside_network(EGRESS_NETWORK, {"prov.managed": "true"})
    if network is None:
        engine.create_network(plan.network)
        made.network_created = True
    reporter.step("creating the container")
    new_home = engine.site.files_in_volumes and (
        prepared.home.made or engine.volume(home_volume_name(request.name)) is None
    )
    # A Ctrl-C during the request could leave Docker finishing a container we
    # never learn the ID of; hold it for the few ms the request takes.
    with _deferred_interrupt():
        if plan.egress is not None:
            _make_proxy(engine, made, plan, paths)
        made.action = decision.action
        made.container_id = engine.create(c)
    _fill_new(engine, made.container_id, prepared, new_home)
    return decision


def _keep(
    engine: Engine,
    made: Made,
    plan: Plan,
    paths: ProvPaths,
    existing: ContainerInfo,
    decision: reconcile.Decision,
    conf_changed: bool,
) -> None:
    """An existing container stays: only its proxy is made again when it is
    gone, stopped or has an older configuration. The proxy keeps no state, and
    a stopped one could point at a network removed meanwhile (prov-egress is
    shared, and Docker lets a network go while only stopped containers refer
    to it, e.g. `docker network prune`)."""
    proxy = made.prepared.existing_proxy
    moved = proxy is not None and EGRESS_NETWORK not in proxy.networks  # an older prov's network
    if plan.egress is not None and (proxy is None or not proxy.running or conf_changed or moved):
        if proxy is not None:
            engine.remove(proxy.id)
        engine.ensure_outside_network(EGRESS_NETWORK, {"prov.managed": "true"})
        _make_proxy(engine, made, plan, paths)
    made.action = decision.action
    made.container_id = existing.id


def _make_proxy(engine: Engine, made: Made, plan: Plan, paths: ProvPaths) -> None:
    """The environment's gate: a ready slot claimed and handed over (see
    slots), or, if none fits, a new one created (started by _launch)."""
    egress = plan.egress
    assert egress is not None  # noqa: S101 - called only for one
    if not made.slot:  # claimed with its network (_claim_slot)
        made.proxy_id = engine.create(egress.container)


def _fill_new(
    engine: Engine, container_id: str, prepared: prepare.Prepared, new_home: bool
) -> None:
    """What a new container gets before it starts: the offered copies of the
    user's settings and, in a new remote home volume, the private copy of the
    logins (once: later the agent's own refreshed tokens there must stay)."""
    if prepared.settings:
        _offer_settings(engine, container_id, prepared)
    if new_home and prepared.credentials == "copy" and prepared.mounted:
        engine.put_paths(
            container_id,
            [(m.source, m.target) for m in prepared.mounted],
            prepared.project.uid,
            prepared.project.gid,
        )


def _clone(paths: ProvPaths, alias: str, prepared: prepare.Prepared, reporter: Reporter) -> None:
    """Branch mode: the agent's clone at the project path (made once, as the
    agent, through the alias), and the host's `prov-NAME` remote to fetch from."""
    from provisioner import branchmode

    assert prepared.branch is not None  # noqa: S101 - branch mode only
    project = prepared.project.path
    reporter.step(f"cloning into the environment (branch {prepared.branch})")
    code, output = openssh.system_ssh(
        paths.ssh_config,
        alias,
        branchmode.clone_script(str(project), prepared.branch, prepared.branch_base),
        timeout=3600,
    )
    if code != 0:
        raise ProvError(
            f"Cloning {project} into the environment failed",
            f"git said (exit {code}): " + (" ".join(output.split())[-400:] or "nothing") + ".",
            "check that `git -C PROJECT status` works here, then run `prov up` again.",
        )
    with file_lock(paths.lock):
        done = branchmode.add_remote(project, prepared.name)
    if done == "added":
        reporter.note(
            f"added the git remote {branchmode.remote_name(prepared.name)} to {project}: "
            f"`git fetch {branchmode.remote_name(prepared.name)}` brings the agent's commits "
            "(never hooks or config)"
        )


def _warn_unguarded(existing: ContainerInfo, plan: Plan, reporter: Reporter) -> None:
    """A protected path that appeared in the project since the container was made
    (a .pre-commit-config.yaml, a hooksPath) is covered only by a new container."""
    have = set(filter(None, existing.labels.get(LABEL_PROTECT, "").split(",")))
    missing = [p for p in plan.container.labels[LABEL_PROTECT].split(",") if p and p not in have]
    if missing:
        reporter.warn(
            "not yet protected in the running environment (made before they were in the "
            "project, or by an older prov): " + ", ".join(missing) + f"; `prov up "
            f"{plan.env_name} --recreate` covers them (the home and the work are kept)"
        )


def _offer_settings(engine: Engine, container_id: str, prepared: prepare.Prepared) -> None:
    """Copies of the user's settings in the new container's home, the agent's;
    one whose directory is a login mounted as a directory (Codex's ~/.codex)
    goes into that directory here."""
    from provisioner import keeper
    from provisioner.agents import offered_copy
    from provisioner.config import AGENT_HOME
    from provisioner.fsutil import atomic_write

    uid, gid = prepared.project.uid, prepared.project.gid
    logins = tuple(keeper.Mounted(m.source, m.target) for m in prepared.mounted)
    into_volume = []
    for setting in prepared.settings:
        data = _read_setting(setting.source)
        if data is None:
            continue
        copy = offered_copy(setting.target.removeprefix(AGENT_HOME + "/"), data)
        on_host = keeper.dir_mounted(setting.target, logins)
        if on_host is not None:
            atomic_write(on_host, copy, 0o600, (uid, gid))
        else:
            into_volume.append((setting.target, copy))
    if into_volume:
        engine.put_owned(container_id, into_volume, uid, gid, AGENT_HOME)


def _read_setting(path: Path) -> bytes | None:
    """A settings file of the user's to offer as a copy; None if it went away
    or cannot be read (a copy is an offer: the environment works without it)."""
    try:
        return path.read_bytes()[: 4 << 20]
    except OSError:
        return None


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Delay SIGINT (KeyboardInterrupt) until the block is done; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


class _Background:
    """A start that runs while the caller goes on; `join` raises what it raised."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._error: ProvError | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except ProvError as exc:
            self._error = exc

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def settle(self) -> None:
        """Wait for it to end, whatever it raised (another failure is being handled)."""
        self._thread.join()


class _Taken:
    """What the entrypoint took back from the image's layer, in words, read
    beside the login: the entrypoint records it before sshd starts, so it is
    there once sshd answers."""

    def __init__(self, engine: Engine, container_id: str) -> None:
        self._engine, self._container_id = engine, container_id
        self._job: _Background | None = None
        self._text = ""

    def start(self) -> None:
        self._job = _Background(self._read)

    def _read(self) -> None:
        record = self._engine.read_file(self._container_id, limits.LAYER_TAKEN_PATH)
        self._text = limits.layer_taken_text(record.decode(errors="replace") if record else "")

    def result(self) -> str:
        if self._job is None:
            self._read()
        else:
            self._job.join()
        return self._text

    def settle(self) -> None:
        if self._job is not None:
            self._job.settle()


def _proxy_job(engine: Engine, placed: _Placed, paths: ProvPaths) -> Callable[[], None] | None:
    """What makes the environment's proxy ready, done beside its own start: a
    claimed slot handed over (its network, name, configuration, SIGHUP), a
    proxy this run created started; None when it runs already."""
    made, egress = placed.made, placed.plan.egress
    if egress is None or made.proxy_id is None:
        return None
    proxy_id, gate = made.proxy_id, egress.container
    if not made.slot:
        return lambda: engine.start(proxy_id)
    slot = slots.Slot(made.slot, proxy_id, slots.conf_dir(paths, made.slot), gate.network, "")
    files = {f.name: f.content for f in egress.files}
    return lambda: slots.hand_over(engine, slot, files, gate.name)


def _launch(
    engine: Engine,
    plan: Plan,
    action: str,
    container_id: str,
    reporter: Reporter,
    proxy_job: Callable[[], None] | None = None,
) -> _Background | None:
    """Start a new or stopped container and its egress proxy. A proxy this run
    created starts in the background, at the same time as its environment
    (sshd does not need it, and the two starts overlap in Docker instead of
    adding up: measured here, a warm `up` took 0.68 s with the proxy started
    after the environment and ~0.62 s with both at once): join the returned start before
    saying the environment is ready. A new container gets its session
    environment (if any) before it starts; a stopped one has it already."""
    background = _Background(proxy_job) if proxy_job is not None else None
    try:
        _start_env(engine, plan, action, container_id, reporter)
    except BaseException:
        if background is not None:  # never remove a container while it is being started
            background.settle()
        raise
    return background


def _update_session_env(engine: Engine, plan: Plan, container_id: str, reporter: Reporter) -> bool:
    """An existing environment asked for other session variables (-e, --env-file,
    API keys set here): rewrite its root-only file, say what that changes, and
    return True. Asked for none: what it has stays."""
    wanted = next((f for f in plan.container.files if f.path == SESSION_ENV_PATH), None)
    if wanted is None:
        return False
    if engine.read_file(container_id, SESSION_ENV_PATH) == wanted.content:
        return False
    engine.inject_files(container_id, [(wanted.path, wanted.mode, wanted.content)])
    keys = sorted({line.split("=", 1)[0] for line in wanted.content.decode().splitlines()})
    reporter.warn(
        "session environment updated (" + ", ".join(keys) + "): new logins get it; "
        "tmux panes and agents already running keep their old values until restarted"
    )
    return True


def _start_env(
    engine: Engine, plan: Plan, action: str, container_id: str, reporter: Reporter
) -> None:
    if action == "started":
        reporter.step("starting the stopped container")
        if engine.state(container_id).status == "restarting":
            # Docker's restart loop (e.g. its keys were missing; now repaired)
            # waits ever longer between tries: start it now instead.
            engine.stop(container_id, timeout=1)
        engine.start(container_id)
    elif action in ("created", "recreated"):
        # Create, copy, start: the session file is in place before the
        # entrypoint runs, so no login can come before it.
        if plan.container.files:
            engine.inject_files(
                container_id, [(f.path, f.mode, f.content) for f in plan.container.files]
            )
        engine.start(container_id)


def _devcontainer_commands(
    engine: Engine,
    paths: ProvPaths,
    alias: str,
    prepared: prepare.Prepared,
    action: str,
    container_id: str,
) -> None:
    """devcontainer.json's create commands, until they have succeeded once in
    this container (a root-only marker inside says so), and postStartCommand
    whenever it started now."""
    from provisioner import dcrun

    dc = prepared.devcontainer
    assert dc is not None  # noqa: S101 - called only with one
    dcrun.run_in(
        engine,
        container_id,
        dc,
        paths.ssh_config,
        alias,
        str(prepared.project.path),
        new=action in ("created", "recreated"),
        started=action != "unchanged",
        reporter=prepared.reporter,
    )
