"""Slots: egress proxies made before anyone asks for them.

An environment's proxy does not depend on its project: it is the egress
image, on prov's outside network, with a configuration. So prov keeps a few
started (`wanted`, 2 unless set), each allowing nothing and listening on its
own loopback only (injection.slot_conf). An `up` in the default containment
claims one under prov's lock instead of creating and starting a proxy: it
copies the environment's configuration into the slot's dir, connects the
slot to the environment's network at the proxy's address, renames it
prov-NAME-egress and sends SIGHUP, so that squid reads the new configuration
while the environment's own container starts. After the `up`, a background
`python -m provisioner.slots` makes new ones.

What keeps a slot from weakening containment:
- until claimed it allows nothing, and listens on no address the outside
  network can reach;
- a claim is the atomic rename of its `ID.ready` marker: two `up`s never get
  the same slot; a claimed slot is never handed out again (it goes with its
  environment's proxy, at `down`, `rm` or a remade proxy), and one that fails
  is removed with what that `up` made (ledger.abandon);
- it is this PROV_HOME's (its label), on this machine's engine only (its
  configuration is a bind mount of a dir here).

The files: $PROV_HOME/slots/ (0700) holds ID/ (the proxy's configuration,
mounted read-only) and ID.making / ID.ready / ID.claimed (its state).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner import egress
from provisioner.config import ProvPaths
from provisioner.engine import Engine, targets
from provisioner.engine.targets import EngineTarget
from provisioner.errors import ConfigError, NotReady, ProvError, UsageError
from provisioner.fsutil import atomic_write, ensure_private_dir, held_lock
from provisioner.injection import slot_conf, write_conf_dir
from provisioner.plan import (
    LABEL_HOME,
    LABEL_NETWORK,
    LABEL_ROLE,
    LABEL_SLOT,
    LABEL_SLOT_IMAGE,
    home_id,
    slot_container_name,
    slot_network,
    slot_network_name,
    slot_spec,
)
from provisioner.spec import EGRESS_NETWORK, LABEL_MANAGED, NetworkSpec

DEFAULT_WANTED = 2
MAX_WANTED = 32
READY_TIMEOUT = 30.0  # seconds for a new slot's squid to listen
# What squid logs once it listens (at its start, and after each SIGHUP).
LISTENING = "Accepting HTTP Socket connections"


@dataclass(frozen=True)
class Slot:
    slot_id: str
    container_id: str
    conf_dir: Path
    network: str  # the slot's network, the environment's from its claim on
    subnet: str


@dataclass(frozen=True)
class SlotsReport:
    wanted: int
    wanted_source: str  # how `wanted` was chosen, in words
    ready: tuple[str, ...]  # unclaimed slots' container names
    claimed: int  # slots that are environments' proxies now
    memory: tuple[int, ...]  # bytes each ready slot uses now (as Docker counts it)
    usable: bool  # whether this engine can have slots
    note: str = ""

    def public(self) -> dict[str, object]:
        return {
            "wanted": self.wanted,
            "wanted_source": self.wanted_source,
            "ready": list(self.ready),
            "claimed": self.claimed,
            "memory": list(self.memory),
            "usable": self.usable,
            "note": self.note,
        }


def slots_dir(paths: ProvPaths) -> Path:
    return paths.home / "slots"


def conf_dir(paths: ProvPaths, slot_id: str) -> Path:
    return slots_dir(paths) / slot_id


def _marker(paths: ProvPaths, slot_id: str, state: str) -> Path:
    return slots_dir(paths) / f"{slot_id}.{state}"


# --- how many --------------------------------------------------------------


def wanted(paths: ProvPaths, environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """How many ready slots to keep, and where that came from: PROV_SLOTS, else
    what `prov up --prepare N` set, else DEFAULT_WANTED."""
    env = os.environ if environ is None else environ
    text = env.get("PROV_SLOTS", "").strip()
    if text:
        return parse_wanted(text, "PROV_SLOTS"), "PROV_SLOTS"
    try:
        saved = (slots_dir(paths) / "wanted").read_text().strip()
    except OSError:
        return DEFAULT_WANTED, "the default"
    with contextlib.suppress(ConfigError):
        return parse_wanted(saved, "saved"), "`prov up --prepare`"
    return DEFAULT_WANTED, "the default"


def parse_wanted(text: str, what: str) -> int:
    if not text.isdigit() or int(text) > MAX_WANTED:
        raise ConfigError(
            f"{what} must be a number of slots from 0 to {MAX_WANTED}",
            f"got {text!r}.",
            "give 0 to keep none, or a small number such as 2.",
        )
    return int(text)


def set_wanted(paths: ProvPaths, count: int) -> None:
    ensure_private_dir(slots_dir(paths))
    atomic_write(slots_dir(paths) / "wanted", f"{count}\n", 0o600)


def usable(engine: Engine) -> bool:
    """Slots mount a dir of this machine: an engine that sees this machine's files."""
    return engine.site.mounts_local_paths and not engine.site.files_in_volumes


def ready_count(paths: ProvPaths) -> int:
    """Ready slots by their markers (no Docker call)."""
    with contextlib.suppress(OSError):
        return sum(1 for _ in slots_dir(paths).glob("*.ready"))
    return 0


# --- claiming ----------------------------------------------------------------


def claim(
    engine: Engine, paths: ProvPaths, image: str, allow_nets: tuple[str, ...] = ()
) -> Slot | None:
    """A ready slot of `image` whose firewall allows exactly `allow_nets`, now
    this caller's alone; None if there is none. One found broken (gone,
    stopped, another image) is removed on the way; one made for other
    ranges is left for another `up`."""
    with contextlib.suppress(OSError):
        for marker in sorted(slots_dir(paths).glob("*.ready")):
            slot_id = marker.name.removesuffix(".ready")
            if _nets(paths, slot_id) != " ".join(allow_nets):
                continue
            if not _take(paths, slot_id):
                continue  # another `up` (or the filler's sweep) took it first
            info = engine.find(slot_container_name(slot_id))
            network, _, subnet = (info.labels.get(LABEL_NETWORK, "") if info else "").partition(" ")
            fits = (
                info is not None
                and info.running
                and info.labels.get(LABEL_SLOT_IMAGE) == image
                and EGRESS_NETWORK in info.networks  # not an older prov's outside network
            )
            if info is None or not fits or not subnet:
                discard(engine, paths, slot_id)
                continue
            return Slot(slot_id, info.id, conf_dir(paths, slot_id), network, subnet)
    return None


def _nets(paths: ProvPaths, slot_id: str) -> str:
    """The ranges a ready slot's firewall allows, as its `nets` file says."""
    try:
        return (conf_dir(paths, slot_id) / "nets").read_text().strip()
    except OSError:
        return ""


def _take(paths: ProvPaths, slot_id: str) -> bool:
    """Mark a ready slot claimed, atomically: whether this caller won it."""
    try:
        _marker(paths, slot_id, "ready").rename(_marker(paths, slot_id, "claimed"))
    except FileNotFoundError:
        return False
    return True


def hand_over(engine: Engine, slot: Slot, files: dict[str, bytes], name: str) -> None:
    """Make a claimed slot an environment's proxy: its configuration, its
    name; SIGHUP has squid read the configuration (it listens at the proxy's
    address on the network once done: the caller waits for that)."""
    write_conf_dir(slot.conf_dir, files)
    # A copy of an earlier configuration (a longer file list) must not stay.
    for stale in {p.name for p in slot.conf_dir.iterdir()} - set(files):
        (slot.conf_dir / stale).unlink()
    engine.rename(slot.container_id, name)
    engine.signal(slot.container_id, "HUP")


def discard(engine: Engine, paths: ProvPaths, slot_id: str, container: str = "") -> None:
    """A slot gone: its container (`container`: its ID, if renamed since),
    its network (after every container on it) and its files."""
    engine.remove(container or slot_container_name(slot_id))
    engine.remove_network(slot_network_name(slot_id))
    forget(paths, slot_id)


def forget(paths: ProvPaths, slot_id: str) -> None:
    shutil.rmtree(conf_dir(paths, slot_id), ignore_errors=True)
    for state in ("making", "ready", "claimed"):
        with contextlib.suppress(FileNotFoundError):
            _marker(paths, slot_id, state).unlink()


# --- making them ---------------------------------------------------------------


@contextlib.contextmanager
def _fill_lock(paths: ProvPaths, wait: bool) -> Iterator[bool]:
    """One filler per PROV_HOME; yields whether this one holds the lock."""
    ensure_private_dir(slots_dir(paths))
    with held_lock(slots_dir(paths) / ".fill.lock", wait) as mine:
        yield mine


def fill(engine: Engine, paths: ProvPaths, image: str, count: int, wait: bool = True) -> int:
    """Keep `count` ready slots of `image`: stale ones removed, missing ones
    made and started (until their squid listens); how many were made. Without
    `wait`, returns 0 at once if another filler is at work."""
    with _fill_lock(paths, wait) as mine:
        return _fill_held(engine, paths, image, count) if mine else 0


def _fill_held(engine: Engine, paths: ProvPaths, image: str, count: int) -> int:
    atomic_write(slots_dir(paths) / "image", image + "\n", 0o600)
    made = 0
    while True:  # `up`s may claim some meanwhile: counted again after each
        ready = sweep(engine, paths, image)
        for extra in ready[count:]:  # fewer asked for now
            if _take(paths, extra):
                discard(engine, paths, extra)
        if len(ready) >= count or made >= MAX_WANTED:
            return made
        _make(engine, paths, image)
        made += 1


def _make(engine: Engine, paths: ProvPaths, image: str) -> None:
    slot_id = secrets.token_hex(4)
    directory = conf_dir(paths, slot_id)
    ensure_private_dir(slots_dir(paths))
    _marker(paths, slot_id, "making").touch(mode=0o600)
    try:
        nets = egress.allowed_nets(())  # the user's egress-allow file's ranges
        write_conf_dir(
            directory, {"squid.conf": slot_conf().encode(), "nets": " ".join(nets).encode()}
        )
        engine.ensure_outside_network(EGRESS_NETWORK, {LABEL_MANAGED: "true"})
        network, proxy = _network(engine, paths, slot_id)
        spec = slot_spec(slot_id, image, directory, network, proxy, nets)
        container_id = engine.create(spec)
        engine.start(container_id)
        _await_listening(engine, container_id)
        _marker(paths, slot_id, "making").rename(_marker(paths, slot_id, "ready"))
    except BaseException:
        discard(engine, paths, slot_id)
        raise


def _network(engine: Engine, paths: ProvPaths, slot_id: str) -> tuple[NetworkSpec, str]:
    """The slot's network, on a /28 no network or route here overlaps (chosen
    again if an `up` took it meanwhile); and the proxy's address on it."""
    from provisioner import netplan
    from provisioner.engine.api import SubnetTaken

    for attempt in range(3):
        used = netplan.parse_subnets(engine.network_subnets())
        subnet = netplan.choose_subnet([*used, *engine.host_view().routes], netplan.pool())
        addrs = netplan.addresses(subnet)
        spec = slot_network(slot_id, str(subnet), addrs.gateway, paths)
        try:
            engine.create_network(spec)
            return spec, addrs.proxy
        except SubnetTaken:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _await_listening(engine: Engine, container_id: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if LISTENING in engine.logs_tail(container_id, 40):
            return
        if not engine.state(container_id).running:
            break
        time.sleep(0.02)
    raise NotReady(
        "A slot's egress proxy did not start",
        engine.logs_tail(container_id),
        "run `prov doctor`; `prov up --prepare 0` turns slots off.",
    )


def _mine(engine: Engine, paths: ProvPaths) -> dict[str, dict[str, Any]]:
    """This PROV_HOME's slot containers (claimed ones too), by slot ID."""
    found = {}
    me = home_id(paths)
    for item in engine.summaries():
        labels = item.get("Labels") or {}
        if labels.get(LABEL_ROLE) == "slot" and labels.get(LABEL_HOME) == me:
            found[str(labels.get(LABEL_SLOT, ""))] = item
    return found


def sweep(engine: Engine, paths: ProvPaths, image: str | None) -> list[str]:
    """Remove what no one will use: unclaimed slots of another image (any
    image, when `image` is None) or not running, half-made ones (run with the
    fill lock held, so no one is making them, even a filler killed half-way
    that left a network and no container), and the files of slots whose
    container is gone. The ready slots left, by ID."""
    containers = _mine(engine, paths)
    ready = []
    for slot_id, item in containers.items():
        labels = item.get("Labels") or {}
        if _marker(paths, slot_id, "ready").exists():
            fresh = (
                image is not None
                and labels.get(LABEL_SLOT_IMAGE) == image
                and EGRESS_NETWORK in ((item.get("NetworkSettings") or {}).get("Networks") or {})
            )
            if fresh and item.get("State") == "running":
                ready.append(slot_id)
            elif _take(paths, slot_id):  # not when an `up` has just claimed it
                discard(engine, paths, slot_id)
        elif not _marker(paths, slot_id, "claimed").exists():
            discard(engine, paths, slot_id)  # half-made: no one is making it now
    try:
        named = {entry.name.split(".", 1)[0] for entry in slots_dir(paths).iterdir()}
    except OSError:
        named = set()
    for slot_id in sorted(named - {"", "wanted", "image", "fill"} - set(containers)):
        if _marker(paths, slot_id, "claimed").exists():
            forget(paths, slot_id)  # its network is its environment's now
        else:  # half-made by a filler that was killed: its network may be there
            discard(engine, paths, slot_id)
    return ready


def remove_unclaimed(engine: Engine, paths: ProvPaths) -> int:
    """Every ready slot of this PROV_HOME removed (`prov gc`, the last `rm`,
    `--prepare 0`); how many."""
    with _fill_lock(paths, wait=True):
        before = ready_count(paths)
        sweep(engine, paths, None)
        return before


def report(engine: Engine, paths: ProvPaths) -> SlotsReport:
    count, source = wanted(paths)
    if not usable(engine):
        return SlotsReport(
            count,
            source,
            (),
            0,
            (),
            False,
            "this engine is not on this machine: its environments' proxies are made at `up`",
        )
    containers = _mine(engine, paths)
    ready = sorted(slot_id for slot_id in containers if _marker(paths, slot_id, "ready").exists())
    claimed = sum(1 for s in containers if _marker(paths, s, "claimed").exists())
    memory = tuple(
        used
        for s in ready
        if (info := engine.find(slot_container_name(s))) is not None
        and (used := engine.memory_use(info.id)) is not None
    )
    return SlotsReport(
        count, source, tuple(slot_container_name(s) for s in ready), claimed, memory, True
    )


# --- in the background -----------------------------------------------------------


def refill_later(engine: Engine, paths: ProvPaths, image: str) -> bool:
    """After an `up`: start a background filler if fewer slots are ready than
    wanted and no filler is at work; whether it started. The filler inherits
    the fill lock, taken here, so that `wait_idle` waits for it from now on."""
    count, _ = wanted(paths)
    if not image or not usable(engine) or ready_count(paths) >= count:
        return False
    import subprocess

    ensure_private_dir(slots_dir(paths))
    lock = os.open(slots_dir(paths) / ".fill.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # one is at work, and counts again before it stops
        log = slots_dir(paths) / "fill.log"
        with contextlib.suppress(OSError):
            if log.stat().st_size > 1 << 20:
                log.unlink()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "provisioner.slots",
                    str(paths.home),
                    image,
                    engine.target.host,
                    str(lock),
                ],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,
                pass_fds=(lock,),
            )
        finally:
            os.close(fd)
    finally:
        os.close(lock)  # the filler's copy holds the lock until it exits
    return True


def wait_idle(paths: ProvPaths) -> None:
    """Until no filler is at work (the benchmark measures a quiet machine)."""
    with _fill_lock(paths, wait=True):
        pass


def _main(argv: list[str]) -> int:
    """The background filler: argv is the PROV_HOME, the image, the engine and
    the fill lock's inherited descriptor (held: it is released at exit)."""
    paths = ProvPaths(Path(argv[0]))
    image, host = argv[1], argv[2]
    try:
        engine = Engine.connect(EngineTarget(host, "the engine of the `up` before"))
        _fill_held(engine, paths, image, wanted(paths)[0])
    except ProvError as exc:
        print(time.strftime("%Y-%m-%dT%H:%M:%S"), f"{exc.what}: {exc.seen}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


def prepare(
    count: int,
    base_image: str,
    note: Callable[[str], None],
    paths: ProvPaths,
    asked: targets.Asked = targets.NOTHING,
) -> SlotsReport:
    """`prov up --prepare N`: keep N slots from now on, made now (0: none, and
    the ready ones removed)."""
    from provisioner.image import ensure_egress_image

    engine = Engine.connect(targets.resolve(asked))
    if not usable(engine):
        raise UsageError(
            "Slots need an engine on this machine",
            f"The engine is {engine.target.describe()}: a slot's configuration is a "
            "dir of this machine, which it cannot mount.",
            "leave --prepare out there: its environments' proxies are made at `up`.",
        )
    set_wanted(paths, count)
    if count == 0:
        remove_unclaimed(engine, paths)
    else:
        image, _built = ensure_egress_image(engine, base_image, note, lambda _line: None)
        note(f"making slots until {count} are ready")
        fill(engine, paths, image, count)
    return report(engine, paths)
