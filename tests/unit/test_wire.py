"""The Engine API requests prov sends for what it creates: the exact JSON built
from a spec (engine/wire.py), and the calls Engine.create makes against a
transport that records them and answers as Docker would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner.engine.api import Engine
from provisioner.engine.targets import EngineTarget
from provisioner.engine.transport import Call
from provisioner.engine.wire import (
    bridge_name,
    cgroup_memory_use,
    container_body,
    demux,
    df_used,
    disk_use,
    diskd_body,
    memory_use,
    network_body,
    outside_network_body,
)
from provisioner.errors import ProvError
from provisioner.spec import ContainerSpec, KeyFile, Mount, NetworkSpec, Security


def _env_spec(**changes: object) -> ContainerSpec:
    base: dict[str, object] = {
        "name": "prov-demo",
        "image": "prov-env:abc",
        "hostname": "demo",
        "labels": {"prov.managed": "true", "prov.name": "demo"},
        "environment": {"PROV_UID": "1000", "HTTPS_PROXY": "http://10.9.0.3:3128"},
        "bind": "127.0.0.1",
        "port": 0,
        "mounts": (
            Mount(Path("/work/demo"), "/work/demo"),
            Mount(Path("/work/demo/.git/hooks"), "/work/demo/.git/hooks", read_only=True),
        ),
        "keys_dir": Path("/ph/envs/demo/sshd"),
        "key_files": (KeyFile("authorized_keys", 0o644, b"ssh-ed25519 AAAA"),),
        "files": (),
        "security": Security(cap_add=("CHOWN", "SETUID"), no_new_privileges=True, pids_limit=4096),
        "network": "prov-demo-net",
        "address": "10.9.0.2",
        "volumes": (("prov-demo-home", "/home/agent"),),
        "volume_labels": {"prov.managed": "true"},
    }
    base.update(changes)
    return ContainerSpec(**base)  # type: ignore[arg-type]


def test_an_environment_body_drops_every_capability_but_its_own() -> None:
    body = container_body(_env_spec())
    host = body["HostConfig"]
    assert body["Image"] == "prov-env:abc" and body["Hostname"] == "demo"
    assert body["Env"] == ["PROV_UID=1000", "HTTPS_PROXY=http://10.9.0.3:3128"]
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["CHOWN", "SETUID"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["PidsLimit"] == 4096 and host["ReadonlyRootfs"] is False
    assert host["NetworkMode"] == "prov-demo-net"
    assert host["Mounts"] == [
        {"Type": "bind", "Source": "/work/demo", "Target": "/work/demo", "ReadOnly": False},
        {
            "Type": "bind",
            "Source": "/work/demo/.git/hooks",
            "Target": "/work/demo/.git/hooks",
            "ReadOnly": True,
        },
        {
            "Type": "volume",
            "Source": "prov-demo-home",
            "Target": "/home/agent",
            "VolumeOptions": {"Labels": {"prov.managed": "true"}},
        },
    ]
    assert body["NetworkingConfig"] == {
        "EndpointsConfig": {"prov-demo-net": {"IPAMConfig": {"IPv4Address": "10.9.0.2"}}}
    }
    # Nothing published, no limits asked, no GPUs: none of those keys.
    for key in ("PortBindings", "Memory", "NanoCpus", "DeviceRequests", "Sysctls"):
        assert key not in host
    # Docker's log of it is capped all the same (sshd logs every connection).
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "3"}}
    assert "ExposedPorts" not in body
    # The keys dir's files are mounted, never in the body.
    assert "ssh-ed25519" not in json.dumps(body)


def test_a_gate_body_publishes_on_its_bind_read_only_with_a_capped_log() -> None:
    spec = _env_spec(
        name="prov-demo-egress",
        port=2222,
        container_port="2222/tcp",
        read_only=True,
        tmpfs=("/run", "/tmp"),
        ro_volumes=(("prov-demo-egress", "/etc/prov-egress"),),
        security=Security(
            cap_add=(), no_new_privileges=True, pids_limit=256, memory=64 << 20, nano_cpus=10**9
        ),
        gpus=-1,
    )
    body = container_body(spec)
    host = body["HostConfig"]
    assert host["PortBindings"] == {"2222/tcp": [{"HostIp": "127.0.0.1", "HostPort": "2222"}]}
    assert body["ExposedPorts"] == {"2222/tcp": {}}
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {
        "/run": "rw,nosuid,nodev,noexec,size=16m",
        "/tmp": "rw,nosuid,nodev,noexec,size=16m",
    }
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "3"}}
    assert host["Memory"] == host["MemorySwap"] == 64 << 20  # no swap beyond the limit
    assert host["NanoCpus"] == 10**9
    assert host["DeviceRequests"][0]["Count"] == -1
    assert host["Mounts"][-1] == {
        "Type": "volume",
        "Source": "prov-demo-egress",
        "Target": "/etc/prov-egress",
        "ReadOnly": True,
    }


def test_a_lifted_limit_sends_no_limit() -> None:
    """`--memory none --cpus none` (0 in the spec) ask Docker for no limit at all."""
    sec = Security(cap_add=(), no_new_privileges=True, pids_limit=64, memory=0, nano_cpus=0)
    host = container_body(_env_spec(security=sec))["HostConfig"]
    assert "Memory" not in host and "MemorySwap" not in host and "NanoCpus" not in host


def test_memory_use_as_docker_stats_counts_it() -> None:
    """In use = usage less the inactive page cache (cgroup v1 and v2 names); the limit as sent."""
    v1 = {"memory_stats": {"usage": 300, "limit": 1000, "stats": {"total_inactive_file": 100}}}
    v2 = {"memory_stats": {"usage": 300, "limit": 1000, "stats": {"inactive_file": 50}}}
    assert memory_use(v1) == (200, 1000)
    assert memory_use(v2) == (250, 1000)
    assert memory_use({"memory_stats": {}}) is None  # a stopped container
    assert memory_use(None) is None
    # The same count from the cgroup's own files (this machine's engine).
    assert cgroup_memory_use("300\n", "cache 5\ntotal_inactive_file 100\n") == 200
    assert cgroup_memory_use("300\n", "anon 9\ninactive_file 50\n") == 250
    assert cgroup_memory_use("max\n", "") is None


def test_a_network_body() -> None:
    spec = NetworkSpec("prov-demo-net", "10.9.0.0/24", "10.9.0.1", True, {"prov.name": "demo"})
    assert network_body(spec) == {
        "Name": "prov-demo-net",
        "CheckDuplicate": True,
        "Driver": "bridge",
        "Internal": True,
        "Labels": {"prov.name": "demo"},
        "IPAM": {"Driver": "default", "Config": [{"Subnet": "10.9.0.0/24", "Gateway": "10.9.0.1"}]},
        "Options": {"com.docker.network.bridge.name": bridge_name("prov-demo-net")},
    }
    assert len(bridge_name("prov-a-very-long-environment-name-net")) <= 15


def test_the_outside_network_keeps_its_containers_apart() -> None:
    body = outside_network_body("prov-outside", {"prov.managed": "true"})
    assert body == {
        "Name": "prov-outside",
        "CheckDuplicate": True,
        "Driver": "bridge",
        "Labels": {"prov.managed": "true"},
        "Options": {"com.docker.network.bridge.enable_icc": "false"},
    }


def test_an_outside_network_made_otherwise_is_refused_not_joined() -> None:
    """Made by prov (or another up just now): used. Of that name but with ICC on
    (made by hand): a clear error, and nothing else is asked."""
    exists = (409, {"message": "network with name prov-outside already exists"})
    made = {"Name": "prov-outside", "Options": {"com.docker.network.bridge.enable_icc": "false"}}
    transport = Recording(
        [(201, {"Id": "n1"}), exists, (200, made), exists, (200, {"Options": {}})]
    )
    engine = Engine(transport, EngineTarget("unix:///var/run/docker.sock", "test"))
    engine.ensure_outside_network("prov-outside", {"prov.managed": "true"})
    create = transport.calls[0]
    assert (create.method, create.path) == ("POST", "/networks/create")
    assert json.loads(create.body or b"") == outside_network_body(
        "prov-outside", {"prov.managed": "true"}
    )
    engine.ensure_outside_network("prov-outside", {"prov.managed": "true"})
    with pytest.raises(ProvError, match="lets its containers reach one another") as refused:
        engine.ensure_outside_network("prov-outside", {"prov.managed": "true"})
    assert "docker network rm prov-outside" in refused.value.hint
    assert [c.path for c in transport.calls[3:]] == ["/networks/create", "/networks/prov-outside"]


class Recording:
    """A transport that records each call and answers from a script."""

    def __init__(self, answers: list[tuple[int, object]]) -> None:
        self.calls: list[Call] = []
        self.answers = answers

    def request(self, call: Call) -> tuple[int, bytes]:
        self.calls.append(call)
        status, data = self.answers.pop(0)
        return status, data if isinstance(data, bytes) else json.dumps(data).encode()


def test_create_posts_the_body_then_joins_the_extra_network() -> None:
    spec = _env_spec(extra_network="prov-egress")
    transport = Recording([(201, {"Id": "c0ffee"}), (200, None)])
    engine = Engine(transport, EngineTarget("unix:///var/run/docker.sock", "test"))
    assert engine.create(spec) == "c0ffee"
    create, connect = transport.calls
    assert (create.method, create.path, create.params) == (
        "POST",
        "/containers/create",
        {"name": "prov-demo"},
    )
    assert json.loads(create.body or b"") == container_body(spec)
    assert (connect.method, connect.path) == ("POST", "/networks/prov-egress/connect")
    assert json.loads(connect.body or b"") == {"Container": "c0ffee"}


def test_a_failed_join_removes_the_container_it_made() -> None:
    spec = _env_spec(extra_network="prov-egress")
    transport = Recording(
        [(201, {"Id": "c0ffee"}), (409, {"message": "conflict"}), (204, None), (204, None)]
    )
    engine = Engine(transport, EngineTarget("unix:///var/run/docker.sock", "test"))
    with pytest.raises(ProvError, match="connect the container to prov-egress"):
        engine.create(spec)
    removal = transport.calls[2]
    assert (removal.method, removal.path) == ("DELETE", "/containers/c0ffee")


def test_disk_use_asks_the_layer_size_and_the_volumes_and_reads_them() -> None:
    """`status`'s disk use: the container inspected with size=1 (SizeRw), the
    volumes from /system/df; a size Docker did not compute (-1) is unknown."""
    df = {
        "Volumes": [
            {"Name": "prov-other-home", "UsageData": {"Size": 7}},
            {"Name": "prov-demo-home", "UsageData": {"Size": 5 << 20}},
        ]
    }
    transport = Recording([(200, {"SizeRw": 3 << 20}), (200, df)])
    engine = Engine(transport, EngineTarget("unix:///var/run/docker.sock", "test"))
    assert engine.disk_use("c0ffee", "prov-demo-home") == (3 << 20, 5 << 20)
    inspect, system = transport.calls
    assert (inspect.method, inspect.path, inspect.params) == (
        "GET",
        "/containers/c0ffee/json",
        {"size": "1"},
    )
    assert (system.method, system.path) == ("GET", "/system/df")
    unknown = {"Volumes": [{"Name": "prov-demo-home", "UsageData": {"Size": -1}}]}
    assert disk_use({"SizeRw": -1}, unknown, "prov-demo-home") == (None, None)
    assert disk_use({}, {}, "prov-demo-home") == (None, None)


def _frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_the_disk_keeper_may_mount_and_nothing_more() -> None:
    """The disk keeper: root with SYS_ADMIN and the loop devices, no network,
    Docker's volumes directory bound with shared propagation (so its mounts are
    the engine host's), a capped log, and a command that only waits."""
    body = diskd_body("prov-env:abc", "/var/lib/docker/volumes", {"prov.role": "diskd"})
    host = body["HostConfig"]
    assert (body["Image"], body["User"], body["Labels"]) == (
        "prov-env:abc",
        "0",
        {"prov.role": "diskd"},
    )
    assert "sleep 3600" in body["Entrypoint"][-1] and body["Cmd"] == []
    assert host["Mounts"] == [
        {
            "Type": "bind",
            "Source": "/var/lib/docker/volumes",
            "Target": "/volumes",
            "BindOptions": {"Propagation": "rshared"},
        }
    ]
    assert host["CapDrop"] == ["ALL"]
    assert set(host["CapAdd"]) == {"SYS_ADMIN", "MKNOD", "CHOWN", "FOWNER", "DAC_OVERRIDE"}
    assert host["Devices"] == [
        {
            "PathOnHost": "/dev/loop-control",
            "PathInContainer": "/dev/loop-control",
            "CgroupPermissions": "rwm",
        }
    ]
    assert host["DeviceCgroupRules"] == ["b 7:* rwm"]  # loop devices, nothing else
    assert host["NetworkMode"] == "none" and "Privileged" not in host
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["LogConfig"]["Config"] == {"max-size": "1m", "max-file": "3"}


def test_exec_run_creates_starts_and_reads_the_exit() -> None:
    """A command in a running container through the API: exec created with both
    streams attached, started attached, its exit code read after."""
    transport = Recording(
        [
            (201, {"Id": "e1"}),
            (200, _frame(2, b"mke2fs noise\n") + _frame(1, b"size=1048576\n")),
            (200, {"ExitCode": 0, "Running": False}),
        ]
    )
    engine = Engine(transport, EngineTarget("unix:///var/run/docker.sock", "test"))
    assert engine.exec_run("c0ffee", ["sh", "-c", "x"]) == (0, "mke2fs noise\nsize=1048576\n")
    create, start, inspect = transport.calls
    assert (create.method, create.path) == ("POST", "/containers/c0ffee/exec")
    assert json.loads(create.body or b"") == {
        "Cmd": ["sh", "-c", "x"],
        "User": "0",
        "AttachStdout": True,
        "AttachStderr": True,
    }
    assert (start.method, start.path) == ("POST", "/exec/e1/start")
    assert json.loads(start.body or b"") == {"Detach": False, "Tty": False}
    assert (inspect.method, inspect.path) == ("GET", "/exec/e1/json")


def test_log_frames_and_df_are_read() -> None:
    assert demux(_frame(1, b"a") + _frame(2, b"b") + b"\x01\x00") == "ab"
    df = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/loop0 20 7 13 35% /h\n"
    assert df_used(df) == 7 * 1024
    assert df_used("df: /h: No such file or directory\n") is None
