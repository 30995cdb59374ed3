"""The Engine API's request bodies for what prov creates, built from its specs
with no I/O (docker-py keeps the same split: `types/` pure, the client calls),
so the exact JSON Docker gets is unit-tested without a daemon."""

from __future__ import annotations

import hashlib
from typing import Any

from provisioner.spec import ContainerSpec, NetworkSpec

# Every container prov makes keeps at most this much of Docker's log of it on
# the engine host's disk (3 files of 1 MB): sshd logs each connection, squid
# each request, and the agent can make either as many as it likes.
LOG_MAX_SIZE, LOG_MAX_FILES = "1m", "3"
LOG_LIMIT = {"Type": "json-file", "Config": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILES}}
LOG_CAP_BYTES = (1 << 20) * int(LOG_MAX_FILES)


def container_body(spec: ContainerSpec) -> dict[str, Any]:
    """POST /containers/create's body (the name goes in the query)."""
    sec = spec.security
    host_config: dict[str, Any] = {
        "Mounts": [
            {
                "Type": "bind",
                "Source": str(m.source),
                "Target": m.target,
                "ReadOnly": m.read_only,
            }
            for m in spec.mounts
        ]
        + [
            {
                "Type": "volume",
                "Source": volume,
                "Target": target,
                # Made with the container if missing (filled from the image's
                # copy of the target); labelled so prov knows it as its own.
                "VolumeOptions": {"Labels": spec.volume_labels},
            }
            for volume, target in spec.volumes
        ]
        + [
            {"Type": "volume", "Source": volume, "Target": target, "ReadOnly": True}
            for volume, target in spec.ro_volumes
        ],
        "RestartPolicy": {"Name": "unless-stopped"},
        "Init": False,  # the image runs tini as PID 1 itself
        "NetworkMode": spec.network,
        "CapDrop": ["ALL"],
        "CapAdd": list(sec.cap_add),
        "SecurityOpt": ["no-new-privileges:true"] if sec.no_new_privileges else [],
        "PidsLimit": sec.pids_limit,
        "ReadonlyRootfs": spec.read_only,
        "LogConfig": LOG_LIMIT,
        "Tmpfs": {
            **{path: "rw,nosuid,nodev,noexec,size=16m" for path in spec.tmpfs},
            **{path: f"rw,exec,nosuid,nodev,size={size}" for path, size in spec.scratch},
        },
    }
    if sec.memory:  # None or 0: no limit
        host_config["Memory"] = sec.memory
        host_config["MemorySwap"] = sec.memory  # no swap beyond the limit
    if sec.nano_cpus:
        host_config["NanoCpus"] = sec.nano_cpus
    if sec.disable_ipv6:
        host_config["Sysctls"] = {
            "net.ipv6.conf.all.disable_ipv6": "1",
            "net.ipv6.conf.default.disable_ipv6": "1",
        }
    if spec.port:
        host_config["PortBindings"] = {
            spec.container_port: [{"HostIp": spec.bind, "HostPort": str(spec.port)}]
        }
    if spec.gpus is not None:
        host_config["DeviceRequests"] = [
            {"Driver": "", "Count": spec.gpus, "Capabilities": [["gpu"]], "Options": {}}
        ]
    body: dict[str, Any] = {
        "Image": spec.image,
        "Hostname": spec.hostname,
        "Labels": spec.labels,
        "Env": [f"{key}={value}" for key, value in spec.environment.items()],
        "HostConfig": host_config,
    }
    if spec.address:
        body["NetworkingConfig"] = {
            "EndpointsConfig": {spec.network: {"IPAMConfig": {"IPv4Address": spec.address}}}
        }
    if spec.port:
        body["ExposedPorts"] = {spec.container_port: {}}
    return body


def memory_use(stats: object) -> tuple[int, int] | None:
    """(bytes in use, limit) from a /containers/ID/stats answer, as `docker
    stats` counts use: less the inactive page cache (cgroup v1's
    total_inactive_file, v2's inactive_file), which the kernel drops before
    it kills anything. None when the answer has no usage (a stopped container)."""
    memory = stats.get("memory_stats") if isinstance(stats, dict) else None
    if not isinstance(memory, dict) or not isinstance(memory.get("usage"), int):
        return None
    details = memory.get("stats") or {}
    cache = details.get("total_inactive_file", details.get("inactive_file", 0))
    used = memory["usage"] - (cache if isinstance(cache, int) and cache < memory["usage"] else 0)
    return used, int(memory.get("limit") or 0)


def disk_use(container: object, df: object, volume: str) -> tuple[int | None, int | None]:
    """(bytes the container's own layer holds, bytes volume `volume` holds) from
    /containers/ID/json?size=1 and /system/df; None where the answer has no
    figure (Docker reports -1 for a size it did not compute)."""
    layer = container.get("SizeRw") if isinstance(container, dict) else None
    held = None
    for entry in (df.get("Volumes") or []) if isinstance(df, dict) else []:
        if isinstance(entry, dict) and entry.get("Name") == volume:
            size = (entry.get("UsageData") or {}).get("Size")
            held = size if isinstance(size, int) and size >= 0 else None
    return (layer if isinstance(layer, int) and layer >= 0 else None), held


def demux(raw: bytes) -> str:
    """A container's log as the API sends it without a TTY: frames of an 8-byte
    header (stream, 3 zero bytes, big-endian length) and their bytes, stdout
    and stderr interleaved as written."""
    out, at = bytearray(), 0
    while at + 8 <= len(raw):
        length = int.from_bytes(raw[at + 4 : at + 8], "big")
        out += raw[at + 8 : at + 8 + length]
        at += 8 + length
    return out.decode(errors="replace")


def df_used(output: str) -> int | None:
    """Bytes used from `df -P -k PATH`'s output (its second line, third field)."""
    lines = output.strip().splitlines()
    fields = lines[1].split() if len(lines) >= 2 else []
    return int(fields[2]) * 1024 if len(fields) >= 6 and fields[2].isdigit() else None


def cgroup_memory_use(usage: str, stat: str) -> int | None:
    """Bytes in use from a memory cgroup's usage file (v1 memory.usage_in_bytes,
    v2 memory.current) and its memory.stat, counted as memory_use counts it."""
    try:
        used = int(usage.strip())
    except ValueError:
        return None
    fields = dict(line.split(" ", 1) for line in stat.splitlines() if " " in line)
    cache = fields.get("total_inactive_file", fields.get("inactive_file", "0")).strip()
    inactive = int(cache) if cache.isdigit() else 0
    return used - inactive if inactive < used else used


def bridge_name(network: str) -> str:
    """A Linux interface name (at most 15 bytes) that says whose bridge it is."""
    return "prov" + hashlib.sha256(network.encode()).hexdigest()[:11]


# Docker's bridge option for container-to-container traffic (ICC): off, the
# bridge drops what one of its containers sends another; each still reaches
# the engine host and, through it, the world.
ICC_OPTION = "com.docker.network.bridge.enable_icc"


def outside_network_body(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """POST /networks/create's body for prov's outside network: a bridge with
    Docker's own addressing (its embedded DNS resolves outside names as well),
    ICC off, so that no gate on it can open a connection to another."""
    return {
        "Name": name,
        "CheckDuplicate": True,
        "Driver": "bridge",
        "Labels": labels,
        "Options": {ICC_OPTION: "false"},
    }


def isolates(network: dict[str, Any]) -> bool:
    """Whether a network's inspect data says ICC is off."""
    return (network.get("Options") or {}).get(ICC_OPTION) == "false"


def network_body(spec: NetworkSpec) -> dict[str, Any]:
    """POST /networks/create's body: a bridge with a fixed subnet, internal
    unless the environment's egress is open."""
    return {
        "Name": spec.name,
        "CheckDuplicate": True,
        "Driver": "bridge",
        "Internal": spec.internal,
        "Labels": spec.labels,
        "IPAM": {
            "Driver": "default",
            "Config": [{"Subnet": spec.subnet, "Gateway": spec.gateway}],
        },
        "Options": {"com.docker.network.bridge.name": bridge_name(spec.name)},
    }


def diskd_body(image: str, volumes_dir: str, labels: dict[str, str]) -> dict[str, Any]:
    """POST /containers/create's body for prov's disk keeper (homedisk): a
    resident container that only waits, into which prov execs its script to
    make, mount or release a home's file system (an exec is ~70 ms, a
    container of its own ~400 ms). Root with SYS_ADMIN (for mount) and the
    loop devices only, no network; Docker's volumes directory bound with
    shared propagation, so its mounts are the engine host's."""
    return {
        "Image": image,
        "Entrypoint": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"],
        "Cmd": [],
        "User": "0",
        "Labels": labels,
        "HostConfig": {
            "Mounts": [
                {
                    "Type": "bind",
                    "Source": volumes_dir,
                    "Target": "/volumes",
                    "BindOptions": {"Propagation": "rshared"},
                }
            ],
            "CapDrop": ["ALL"],
            "CapAdd": ["SYS_ADMIN", "MKNOD", "CHOWN", "FOWNER", "DAC_OVERRIDE"],
            "Devices": [
                {
                    "PathOnHost": "/dev/loop-control",
                    "PathInContainer": "/dev/loop-control",
                    "CgroupPermissions": "rwm",
                }
            ],
            "DeviceCgroupRules": ["b 7:* rwm"],
            # Docker's default AppArmor profile refuses mount even with SYS_ADMIN.
            "SecurityOpt": ["apparmor=unconfined", "no-new-privileges:true"],
            "NetworkMode": "none",
            "RestartPolicy": {"Name": "unless-stopped"},
            "PidsLimit": 64,
            "LogConfig": LOG_LIMIT,
        },
    }
