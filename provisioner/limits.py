"""How much of the engine host one environment may take (pure).

A user who types only `prov up NAME` gets an environment that cannot starve
the host or the other environments: its memory and CPU are sized from what
the engine host has (Docker's /info: MemTotal, NCPU), and its egress proxy
gets a small fixed share. `--memory`/`--cpus` override the sizes, `none` by
name lifts a limit.

In a Containment, None means "the default, sized at `up`" and 0 means "none,
as the user asked"; `resolve` turns the former into bytes and CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from provisioner.config import MIN_MEMORY, Containment
from provisioner.errors import ProvError

# One environment may take half of the engine host's memory and half of its
# CPUs (at least one): a runaway build, or an agent's memory bomb, leaves the
# other half to the host and the other environments.
MEMORY_SHARE = 2  # MemTotal // MEMORY_SHARE
CPU_SHARE = 2  # NCPU // CPU_SHARE, at least 1
# The egress proxy (squid, caching nothing) needs little; a compromised or
# flooded one must not take more.
PROXY_MEMORY = 256 << 20
PROXY_NANO_CPUS = 1_000_000_000
# What a host whose /info says nothing is assumed to have.
FALLBACK_MEMORY = 4 << 30
FALLBACK_CPUS = 2
# What a home of a plain volume grows on (a home made before prov bounded
# homes, --disk none, or an engine that refused the home's file system).
HOME_NOT_BOUNDED = "home: not bounded ({why}), it grows on the engine host's disk"


@dataclass(frozen=True)
class HostSize:
    """What the engine host has, from Docker's /info."""

    memory: int  # bytes (MemTotal)
    cpus: int  # NCPU
    driver: str = "?"  # the storage driver
    backing: str = "?"  # its backing file system

    @classmethod
    def from_info(cls, info: dict[str, object]) -> HostSize:
        status = {
            str(pair[0]): str(pair[1])
            for pair in (info.get("DriverStatus") or [])  # type: ignore[attr-defined]
            if isinstance(pair, list | tuple) and len(pair) == 2
        }
        memory = info.get("MemTotal")
        cpus = info.get("NCPU")
        return cls(
            memory=int(memory) if isinstance(memory, int) and memory > 0 else FALLBACK_MEMORY,
            cpus=int(cpus) if isinstance(cpus, int) and cpus > 0 else FALLBACK_CPUS,
            driver=str(info.get("Driver") or "?"),
            backing=status.get("Backing Filesystem", "?"),
        )


def default_memory(host: HostSize) -> int:
    """Half the engine host's memory, in whole MiB (never below the minimum)."""
    return max(MIN_MEMORY, (host.memory // MEMORY_SHARE) >> 20 << 20)


def default_cpus(host: HostSize) -> float:
    """Half the engine host's CPUs, at least one."""
    return float(max(1, host.cpus // CPU_SHARE))


def resolve(containment: Containment, host: HostSize) -> Containment:
    """The containment with its defaults sized for `host` (0, "none", stays)."""
    memory = default_memory(host) if containment.memory is None else containment.memory
    cpus = default_cpus(host) if containment.cpus is None else containment.cpus
    return replace(containment, memory=memory, cpus=cpus)


def disk_text(home_bound: int, why: str, sudo: bool, scratch_each: int) -> str:
    """What bounds the agent's writes outside the project, in words, as `up` says it."""
    home = (
        f"home: a file system of its own, {size_text(home_bound)}"
        if home_bound
        else HOME_NOT_BOUNDED.format(why=why or "a plain volume")
    )
    outside = (
        "the rest: --sudo's root may write anywhere in the container's layer (not bounded)"
        if sudo
        else f"/tmp, /var/tmp: {size_text(scratch_each)} each, in memory"
    )
    return f"{home}; {outside}"


# Written by the entrypoint at the first start (root's, in the container):
# `UID:GID`, then each path of the container's own layer the image let the
# agent write, now root's and unwritable by others.
LAYER_TAKEN_PATH = "/etc/prov/layer-taken"
LAYER_SHOWN = 3


def layer_taken_text(record: str) -> str:
    """What the entrypoint took back from the container's layer, in words
    ("" when nothing: the image left the agent nothing there to write)."""
    paths = [p for p in record.split("\n")[1:] if p]
    if not paths:
        return ""
    shown = ", ".join(paths[:LAYER_SHOWN]) + (", ..." if len(paths) > LAYER_SHOWN else "")
    return (
        f"container layer: {len(paths)} path{'s' if len(paths) != 1 else ''} the image "
        f"let the agent's UID write there ({shown}), which no size bounds, are root's now"
    )


def size_text(n: int) -> str:
    """Bytes as people read sizes of memory: 512 MiB, 11.7 GiB."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    return f"{n / (1 << 20):.0f} MiB"


def describe(containment: Containment) -> str:
    """A resolved containment's limits in words, as `up` and `status` show them."""
    memory = "memory: none" if not containment.memory else f"memory {size_text(containment.memory)}"
    if not containment.cpus:
        cpus = "CPUs: none"
    else:
        cpus = f"{containment.cpus:g} CPU" + ("" if containment.cpus == 1 else "s")
    return f"{memory}, {cpus}, {containment.pids_limit} processes"


def label_words(label: str) -> str:
    """The limits label (plan: `pids=N,memory=BYTES|none,cpus=N|none`) in
    words; an environment made before prov sized defaults has no memory or
    CPU entry, and so no such limit."""
    fields = dict(part.partition("=")[::2] for part in label.split(",") if "=" in part)
    memory = fields.get("memory", "none")
    cpus = fields.get("cpus", "none")
    try:
        return describe(
            Containment(
                pids_limit=int(fields.get("pids", "0")),
                memory=0 if memory == "none" else int(memory),
                cpus=0.0 if cpus == "none" else float(cpus),
            )
        )
    except (ValueError, ProvError):
        return label or "-"


def label_memory(label: str) -> int:
    """The memory limit in a limits label, in bytes (0: none)."""
    fields = dict(part.partition("=")[::2] for part in label.split(",") if "=" in part)
    memory = fields.get("memory", "")
    return int(memory) if memory.isdigit() else 0


def disk_use_text(home: int | None, layer: int | None, home_bound: int = 0) -> str:
    """What the agent's writes outside the project hold, in words (against the
    home's own size, when it has one)."""
    shown = size_text(home) if home is not None else "unknown"
    said = [
        f"home {shown}" + (f" of {size_text(home_bound)}" if home_bound else " (not bounded)"),
        f"container layer {size_text(layer) if layer is not None else 'unknown'}",
    ]
    return "in use: " + ", ".join(said)


def use_text(used: int, limit: int) -> str:
    """Memory in use against the limit, as `ls` and `status` show it."""
    if not limit:
        return f"{size_text(used)} (no limit)"
    return f"{size_text(used)} of {size_text(limit)}"
