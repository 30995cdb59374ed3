"""Bounds on what one environment can take from the host, and on where its
proxy goes, tried the way a hostile agent would (issue 23): memory, CPU, the
log, plain HTTP to other ports, allowed names at private addresses, and one
proxy reaching another. Every target is a container these tests make.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import docker.errors
import docker.types
import pytest

from provisioner import homedisk
from provisioner.engine import Engine
from tests.integration.conftest import (
    EGRESS_NET,
    OUTSIDE_NET,
    PROJECT_GID,
    PROJECT_UID,
    Prov,
    free_port,
    resolver_lines,
    server_address,
    start_outside_server,
)

ALLOWED, DENIED = "allowed.prov-test", "denied.prov-test"


def _proxy_request(prov: Prov, alias: str, request: str) -> str:
    """One raw request to the environment's proxy (from $HTTP_PROXY), as the agent;
    what came back (status line, headers, and anything a tunnel returned)."""
    script = (
        'p=${HTTP_PROXY#http://}; exec 3<>"/dev/tcp/${p%:*}/${p##*:}" && '
        f"printf {shlex.quote(request)} >&3 && timeout 4 cat <&3"
    )
    return prov.ssh(alias, f"bash -c {shlex.quote(script)}", timeout=30).stdout


def _connect(prov: Prov, alias: str, target: str) -> str:
    return _proxy_request(prov, alias, f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n")


@pytest.fixture(scope="module")
def outside(docker_client: docker.DockerClient, env_image: str) -> Iterator[str]:
    """An 'outside' server known as ALLOWED and DENIED: sshd on port 443 (its
    banner proves a tunnel reached it) and an HTTP server on 2375 (Docker's API
    port, which the proxy must not forward to). Its address."""
    script = (
        "mkdir -p /run/sshd && ssh-keygen -A >/dev/null && /usr/sbin/sshd -p 443 && "
        "exec python3 -m http.server 2375"
    )
    container = start_outside_server(
        docker_client,
        env_image,
        ["sh", "-c", script],
        [ALLOWED, DENIED],
        "bounds-server",
        listening=(443, 2375),
    )
    try:
        yield server_address(container)
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def strict(prov: Prov, tmp_path_factory: pytest.TempPathFactory) -> Prov:
    """The same user without the allowance of the test servers' private range
    (conftest's egress-allow file): what everyone gets. The tests' resolver
    stays: the names are found, their addresses refused."""
    config = tmp_path_factory.mktemp("no-allow-config")
    (config / "prov").mkdir()
    (config / "prov" / "egress-allow").write_text(resolver_lines())
    return replace(prov, env={**prov.env, "XDG_CONFIG_HOME": str(config)})


@pytest.fixture(scope="module")
def bounded(prov: Prov, outside: str) -> str:
    """A default environment, its proxy allowed ALLOWED (and the test servers' range)."""
    name = prov.name("bounded")
    prov.project(name)
    prov.up(name, "--allow", ALLOWED)
    return name


def _engine_info(docker_client: docker.DockerClient) -> dict[str, object]:
    return dict(docker_client.info())


def test_default_limits_are_sized_from_the_engine_host(
    prov: Prov, bounded: str, docker_client: docker.DockerClient
) -> None:
    """With no option: half the host's memory, half its CPUs (at least one), a capped log,
    for the environment and (smaller) its proxy; `up` and `status` say so, and what is
    not bounded (the disk, on this engine) in words."""
    info = _engine_info(docker_client)
    memory = int(info["MemTotal"]) // 2 >> 20 << 20  # type: ignore[call-overload]
    cpus = max(1, int(info["NCPU"]) // 2)  # type: ignore[call-overload]
    env = docker_client.containers.get(f"prov-{bounded}").attrs["HostConfig"]
    assert env["Memory"] == env["MemorySwap"] == memory
    assert env["NanoCpus"] == cpus * 10**9
    proxy = docker_client.containers.get(f"prov-{bounded}-egress").attrs["HostConfig"]
    assert proxy["Memory"] == 256 << 20 and proxy["NanoCpus"] == 10**9
    for host_config in (env, proxy):
        assert host_config["LogConfig"] == {
            "Type": "json-file",
            "Config": {"max-size": "1m", "max-file": "3"},
        }
    shown = prov.run("up", bounded, "--allow", ALLOWED, check=True).stderr
    assert f"limits: memory {memory / (1 << 30):.1f} GiB, {cpus} CPU" in shown
    scratch = memory // 4 >> 20 << 20
    assert "disk: home: a file system of its own, " in shown
    assert f"/tmp, /var/tmp: {scratch / (1 << 30):.1f} GiB each, in memory" in shown
    status = json.loads(prov.run("status", bounded, "--json", check=True).stdout)
    assert status["limits"].startswith(f"memory {memory / (1 << 30):.1f} GiB")
    assert status["memory"].endswith(f"of {memory / (1 << 30):.1f} GiB")
    assert status["disk"].startswith("in use: home ") and " GiB, container layer" in status["disk"]
    tmpfs = docker_client.containers.get(f"prov-{bounded}").attrs["HostConfig"]["Tmpfs"]
    assert tmpfs["/tmp"] == tmpfs["/var/tmp"] == f"rw,exec,nosuid,nodev,size={scratch}"


def test_a_memory_bomb_is_killed_inside_while_another_environment_answers(
    prov: Prov, bounded: str
) -> None:
    """An agent allocating without end in a 256 MiB environment is killed there by the
    kernel; meanwhile an ssh round trip to another environment takes under 1 s, and
    afterwards the bombed environment answers again."""
    name = prov.name("bomb")
    prov.project(name)
    prov.up(name, "--memory", "256m", "--egress", "none")
    # 16 MiB at a time, each page written (b"x" * n fills it; calloc'd zeros would not count).
    bomb = "python3 -c 'b = []\nwhile True: b.append(b\"x\" * (16 << 20))'; echo exit=$?"
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("bomb", prov.ssh(f"prov-{name}", bomb, timeout=120))
    )
    other = f"prov-{bounded}"
    assert prov.ssh(other, "true").returncode == 0  # the master is up before the bomb
    thread.start()
    trips: list[float] = []
    while thread.is_alive() and len(trips) < 200:
        started = time.monotonic()
        assert prov.ssh(other, "true").returncode == 0
        trips.append(time.monotonic() - started)
    thread.join(120)
    out = result["bomb"].stdout
    assert "exit=137" in out, (out, result["bomb"].stderr)  # SIGKILL, from the OOM killer
    assert len(trips) >= 3 and max(trips) < 1.0, trips
    assert prov.ssh(f"prov-{name}", "true").returncode == 0


def test_a_login_flood_leaves_the_log_within_its_cap(
    prov: Prov, bounded: str, docker_client: docker.DockerClient
) -> None:
    """300 refused logins the agent makes to its own sshd are in Docker's log of the
    environment, and that log on the engine host's disk stays within its cap."""
    alias = f"prov-{bounded}"
    flood = (
        "for i in $(seq 300); do ssh -o BatchMode=yes -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 -o PreferredAuthentications=none "
        "nobody@127.0.0.1 true 2>/dev/null & [ $((i % 10)) = 0 ] && wait; done; wait"
    )
    prov.ssh(alias, f"bash -c {shlex.quote(flood)}", timeout=300)
    container = docker_client.containers.get(alias)
    assert container.logs().decode(errors="replace").count("User nobody from") >= 100
    log_path = Path(container.attrs["LogPath"])
    on_disk = sum(p.stat().st_size for p in log_path.parent.glob(log_path.name + "*"))
    assert container.attrs["HostConfig"]["LogConfig"]["Config"] == {
        "max-size": "1m",
        "max-file": "3",
    }
    assert 0 < on_disk <= 3 << 20, on_disk


def test_plain_http_to_an_allowed_name_on_another_port_is_refused_and_logged(
    prov: Prov, bounded: str
) -> None:
    """GET http://ALLOWED:2375/ through the proxy (Docker's API port) is refused, as
    CONNECT to it is; the refusal, and the allowed requests, show in `prov egress`."""
    alias = f"prov-{bounded}"
    plain = _proxy_request(
        prov, alias, f"GET http://{ALLOWED}:2375/ HTTP/1.1\\r\\nHost: {ALLOWED}:2375\\r\\n\\r\\n"
    )
    assert plain.startswith("HTTP/1.1 403") and "Directory listing" not in plain
    assert "SSH-2.0-OpenSSH" in _connect(prov, alias, f"{ALLOWED}:443")  # control
    report = json.loads(prov.run("egress", bounded, "--json", check=True).stdout)
    assert any(
        f"GET http://{ALLOWED}:2375/" in line and "port 2375 is not allowed" in line
        for line in report["denials"]
    ), report["denials"]
    assert report["requests"].get(ALLOWED, 0) >= 1
    assert any(f"allowed CONNECT {ALLOWED}:443" in line for line in report["recent"])


def test_an_allowed_name_at_a_private_address_is_refused(strict: Prov, outside: str) -> None:
    """ALLOWED is allowed, but the tests' resolver (the user file's address lines)
    maps it to a private address: the proxy refuses it and says why; the same server
    answers this machine (control), and --allow-net of its range lets it through."""
    name = strict.name("private")
    strict.project(name)
    strict.up(name, "--allow", ALLOWED)
    alias = f"prov-{name}"
    with socket.create_connection((outside, 443), timeout=3) as sock:
        assert sock.recv(8) == b"SSH-2.0-"  # control: it is there
    refused = _connect(strict, alias, f"{ALLOWED}:443")
    assert "403" in refused and "SSH-2.0" not in refused
    report = json.loads(strict.run("egress", name, "--json", check=True).stdout)
    assert any(
        ALLOWED in line and "private, loopback or link-local" in line for line in report["denials"]
    ), report["denials"]
    strict.up(name, "--allow", ALLOWED, "--allow-net", OUTSIDE_NET, "--recreate")
    assert "SSH-2.0-OpenSSH" in _connect(strict, alias, f"{ALLOWED}:443")


def test_an_allowed_name_at_a_loopback_address_is_refused(strict: Prov, outside: str) -> None:
    """A user file that maps an allowed name to 127.0.0.1 (Docker's DNS cannot
    answer loopback): the proxy refuses lo.ALLOWED and says why, though the
    user allowed another private range, through which ALLOWED, found the same
    way, goes (control)."""
    allow_file = Path(strict.env["XDG_CONFIG_HOME"]) / "prov" / "egress-allow"
    with allow_file.open("a") as handle:
        handle.write(f"127.0.0.1 lo.{ALLOWED}\n")
    name = strict.name("loopback")
    strict.project(name)
    strict.up(name, "--allow", ALLOWED, "--allow-net", OUTSIDE_NET)
    alias = f"prov-{name}"
    assert "SSH-2.0-OpenSSH" in _connect(strict, alias, f"{ALLOWED}:443")
    refused = _connect(strict, alias, f"lo.{ALLOWED}:443")
    assert "403" in refused and "SSH-2.0" not in refused, refused
    report = json.loads(strict.run("egress", name, "--json", check=True).stdout)
    assert any(
        f"lo.{ALLOWED}" in line and "private, loopback or link-local" in line
        for line in report["denials"]
    ), report["denials"]


def test_an_allowed_name_at_a_link_local_address_is_refused(
    strict: Prov, docker_client: docker.DockerClient, env_image: str
) -> None:
    """An allowed name that the tests' resolver (Docker's DNS, on a network these tests
    make in 169.254.0.0/16, the metadata service's range) maps to a link-local address:
    the proxy, though it could reach it (it is joined to that network), refuses it and
    says why; from this machine the server answers (control)."""
    name = strict.name("linklocal")
    strict.project(name)
    strict.up(name, "--allow", ALLOWED)
    subnet = f"169.254.{100 + secrets.randbelow(100)}.0/24"
    network = docker_client.networks.create(
        f"{strict.prefix}-linklocal",
        driver="bridge",
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)]),
        labels={"prov.test": "linklocal"},
    )
    api = docker_client.api
    sshd = "mkdir -p /run/sshd && ssh-keygen -A >/dev/null && exec /usr/sbin/sshd -D -p 443"
    server = None
    proxy = docker_client.containers.get(f"prov-{name}-egress")
    try:
        created = api.create_container(
            env_image,
            ["sh", "-c", sshd],
            entrypoint=[],
            labels={"prov.test": "linklocal-server"},
            host_config=api.create_host_config(network_mode=network.name),
            networking_config=api.create_networking_config(
                {network.name: api.create_endpoint_config(aliases=[f"ll.{ALLOWED}"])}
            ),
        )
        server = docker_client.containers.get(created["Id"])
        server.start()
        server.reload()
        address = server.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        assert address.startswith("169.254.")
        network.connect(proxy)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((address, 443), timeout=3) as sock:
                    assert sock.recv(8) == b"SSH-2.0-"  # control: it is there
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        refused = _connect(strict, f"prov-{name}", f"ll.{ALLOWED}:443")
        assert "403" in refused and "SSH-2.0" not in refused
        report = json.loads(strict.run("egress", name, "--json", check=True).stdout)
        assert any(
            f"ll.{ALLOWED}" in line and "private, loopback or link-local" in line
            for line in report["denials"]
        ), report["denials"]
    finally:
        with contextlib.suppress(docker.errors.APIError):
            network.disconnect(proxy, force=True)
        if server is not None:
            server.remove(force=True)
        network.remove()


def test_one_proxy_cannot_open_a_tcp_connection_to_another(
    prov: Prov, docker_client: docker.DockerClient, env_image: str
) -> None:
    """Another proxy's outside address, from inside one proxy (as its squid user, as a
    compromised squid would be) and from a container on the outside network that has
    no firewall of its own: neither opens a TCP connection to it, on the relayed SSH
    port or on 443 (a listener a compromised proxy could open), even for a user who
    allowed the outside network's range. Controls: this machine reaches the relay,
    and the listener answers inside its own proxy."""
    Engine.connect().ensure_outside_network(EGRESS_NET, {"prov.managed": "true"})
    subnet = docker_client.networks.get(EGRESS_NET).attrs["IPAM"]["Config"][0]["Subnet"]
    names = [prov.name("gate-a"), prov.name("gate-b")]
    for name in names:
        prov.project(name)
        prov.up(name, "--port", str(free_port()), "--allow-net", subnet)
    proxy_a, proxy_b = (docker_client.containers.get(f"prov-{n}-egress") for n in names)
    target = proxy_b.attrs["NetworkSettings"]["Networks"][EGRESS_NET]["IPAddress"]
    proxy_b.exec_run(
        ["socat", f"TCP-LISTEN:443,bind={target},fork,reuseaddr", "SYSTEM:echo here"],
        user="proxy",
        detach=True,
    )
    deadline = time.monotonic() + 10
    while b"here" not in proxy_b.exec_run(["socat", "-u", f"TCP:{target}:443", "-"]).output:
        assert time.monotonic() < deadline, "the listener in B never answered B"
        time.sleep(0.1)
    with socket.create_connection((target, 2222), timeout=3) as sock:
        assert sock.recv(16).startswith(b"SSH-2.0-")  # control: the relay, from the host
    # A dropped SYN (the outside network's ICC off) would wait for TCP's own timeout.
    probe = "; ".join(
        f"timeout 5 bash -c 'exec 3<>/dev/tcp/{target}/{port} && timeout 3 head -c 16 <&3' 2>&1;"
        " echo ' exit' $?"
        for port in (2222, 443)
    )
    attempt = proxy_a.exec_run(["bash", "-c", probe], user="proxy").output.decode(errors="replace")
    peer = docker_client.containers.run(
        env_image,
        ["-c", probe],
        entrypoint=["bash"],
        network=EGRESS_NET,
        labels={"prov.test": "peer"},
        detach=True,
    )
    try:
        peer.wait(timeout=30)
        from_peer = peer.logs().decode(errors="replace")
    finally:
        peer.remove(force=True)
    for seen in (attempt, from_peer):
        assert seen.count(" exit 0") == 0 and "SSH-2.0" not in seen and "here" not in seen, seen
        assert seen.count(" exit ") == 2, seen


def test_two_containers_on_the_outside_network_cannot_reach_each_other(
    prov: Prov, docker_client: docker.DockerClient, env_image: str
) -> None:
    """Neither of them with a firewall of its own: the outside network itself
    (ICC off) drops what one sends the other. Control: the listener answers
    this machine, as a gate's relay does."""
    Engine.connect().ensure_outside_network(EGRESS_NET, {"prov.managed": "true"})
    network = docker_client.networks.get(EGRESS_NET)
    assert network.attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    listener = docker_client.containers.run(
        env_image,
        [
            "-c",
            "import socket\ns = socket.socket()\ns.bind(('', 443))\ns.listen(8)\n"
            "while True:\n    c, _ = s.accept()\n    c.sendall(b'here')\n    c.close()\n",
        ],
        entrypoint=["python3"],
        network=EGRESS_NET,
        labels={"prov.test": "icc-listener"},
        detach=True,
    )
    try:
        listener.reload()
        target = listener.attrs["NetworkSettings"]["Networks"][EGRESS_NET]["IPAddress"]
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((target, 443), timeout=3) as sock:
                    assert sock.recv(8).startswith(b"here")  # control: it is there
                    break
            except OSError:
                assert time.monotonic() < deadline, "the listener never answered this machine"
                time.sleep(0.1)
        probe = f"(exec 3<>/dev/tcp/{target}/443 && timeout 3 head -c 8 <&3) 2>&1; echo ' exit' $?"
        peer = docker_client.containers.run(
            env_image,
            ["-c", f"timeout 10 bash -c {shlex.quote(probe)}; echo ' done' $?"],
            entrypoint=["bash"],
            network=EGRESS_NET,
            labels={"prov.test": "icc-peer"},
            detach=True,
        )
        try:
            peer.wait(timeout=30)
            seen = peer.logs().decode(errors="replace")
        finally:
            peer.remove(force=True)
        assert "here" not in seen and " exit 0" not in seen and " done" in seen, seen
    finally:
        listener.remove(force=True)


def test_status_shows_what_the_agents_writes_outside_the_project_hold(
    prov: Prov, bounded: str
) -> None:
    """The agent writes 24 MiB into its home and 12 MiB into /var/tmp: `prov status`
    and `prov ls` show the home's use against its size, and `status` the
    container's own layer still empty (/var/tmp is memory, not the layer on the
    host's disk)."""
    prov.ssh(
        f"prov-{bounded}",
        "head -c 25165824 /dev/urandom > ~/fill && head -c 12582912 /dev/urandom > /var/tmp/fill",
        timeout=60,
    )
    try:
        disk = json.loads(prov.run("status", bounded, "--json", check=True).stdout)["disk"]
        home, layer = disk.removeprefix("in use: ").split(", ")
        amount, unit, _of, _size, size_unit = home.removeprefix("home ").split(" ")
        assert unit == "MiB" and float(amount) >= 24 and size_unit == "GiB", disk
        assert layer == "container layer 0 MiB", disk
        # `ls` shows the same home use against the same size, in its HOME column.
        listed = {e["name"]: e for e in json.loads(prov.run("ls", "--json", check=True).stdout)}
        ls_amount, ls_unit, _, ls_size, ls_size_unit = listed[bounded]["home_disk"].split(" ")
        assert ls_unit == "MiB" and float(ls_amount) >= 24, listed[bounded]
        assert (ls_size, ls_size_unit) == (_size, size_unit), (listed[bounded], disk)
        table = prov.run("ls", check=True).stdout.splitlines()
        assert "HOME" in table[0].split()
        assert any(line.startswith(bounded + " ") and f"of {_size} GiB" in line for line in table)
        # The way a user who cannot read Docker's root is answered (the disk
        # keeper's df) gives what this machine's own statvfs gave.
        engine = Engine.connect()
        keeper = engine.find(homedisk.DISKD)
        assert keeper is not None and keeper.running
        _, answer = engine.exec_run(keeper.id, ["sh", "-c", homedisk.HOMES_SCRIPT])
        used, size = homedisk.parse_homes(answer)[bounded]
        summaries = [s for s in engine.summaries() if s["Labels"].get("prov.name") == bounded]
        here_used, here_size = homedisk.homes_in_use(engine, summaries)[bounded]
        assert size == here_size and abs(used - here_used) < 1 << 20, (answer, here_used)
    finally:
        prov.ssh(f"prov-{bounded}", "rm -f ~/fill /var/tmp/fill", timeout=30)


def _free_bytes(path: str) -> int:
    result = subprocess.run(["df", "-P", "-k", path], capture_output=True, text=True, check=True)
    return int(result.stdout.splitlines()[1].split()[3]) * 1024


def _loops_of(volume: str) -> list[str]:
    """Loop devices backed by a file in `volume`, and mounts of it, as this machine sees them."""
    found = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    mounts = Path("/proc/self/mountinfo").read_text()
    return [line for line in (*found.stdout.splitlines(), *mounts.splitlines()) if volume in line]


def test_a_home_fill_stops_at_its_size_and_the_host_pays_no_more(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """As the agent: `dd` 1 GiB into a home of --disk 300m fails with ENOSPC; the
    engine host's free space drops by no more than 300 MiB; /tmp's fill stops at
    its own size too (--memory 512m: 128 MiB) and programs still run from it; the
    container's layer takes nothing. `rm` leaves no loop device, mount or volume."""
    name = prov.name("diskfill")
    prov.project(name)
    shown = prov.run("up", name, "--disk", "300m", "--memory", "512m", check=True).stderr
    assert "home: a file system of its own, 300 MiB" in shown
    assert "/tmp, /var/tmp: 128 MiB each, in memory" in shown
    docker_root = str(docker_client.info()["DockerRootDir"])
    assert _loops_of(f"prov-{name}-disk"), "the home is not a loop-mounted file system"
    before = _free_bytes(docker_root)
    home = prov.ssh(
        f"prov-{name}", "dd if=/dev/zero of=~/fill bs=1M count=1024 conv=fsync", timeout=120
    )
    dropped = before - _free_bytes(docker_root)
    assert home.returncode != 0 and "No space left on device" in home.stderr, home
    assert dropped <= 300 << 20, f"host free space dropped by {dropped >> 20} MiB"
    tmp = prov.ssh(
        f"prov-{name}",
        "dd if=/dev/zero of=/tmp/fill bs=1M count=512; rm -f /tmp/fill; "
        "cp /bin/true /tmp/t && /tmp/t && echo ran-from-tmp",
        timeout=120,
    )
    assert "No space left on device" in tmp.stderr and "ran-from-tmp" in tmp.stdout, tmp
    for path in ("/etc/fill", "/usr/fill", "/var/fill", "/opt/fill", "/fill"):
        denied = prov.ssh(f"prov-{name}", f"touch {path}")
        assert denied.returncode != 0, f"the agent wrote {path} on the container's layer"
    disk = json.loads(prov.run("status", name, "--json", check=True).stdout)["disk"]
    assert disk.startswith("in use: home ") and "of 300 MiB" in disk, disk
    assert disk.endswith("container layer 0 MiB"), disk
    prov.run("rm", name, "--yes", check=True)
    assert not _loops_of(f"prov-{name}-disk")
    left = [v.name for v in docker_client.volumes.list() if v.name.startswith(f"prov-{name}-")]
    assert not left, left


def test_what_the_image_gave_the_agents_uid_on_the_layer_is_taken_back(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """An image whose user shares the agent's UID (node:22's "node", a
    devcontainer's "vscode") owns files on the container's layer, which no size
    bounds. As the agent: none of them, nor a directory group-writable by its
    GID or writable by all, can be written or made writable again; each stays
    so after a restart. The image's directory at the project's own path, which
    the project is mounted over, is left alone: the host's project keeps its
    owner. `up` says what was taken."""
    name = prov.name("layer")
    project = prov.project(name)
    (project / ".prov").mkdir()
    owner = f"{PROJECT_UID}:{PROJECT_GID}"
    (project / ".prov" / "Dockerfile").write_text(
        "ARG PROV_IMAGE\nFROM ${PROV_IMAGE}\n"
        f"RUN mkdir -p /home/dev/.cache /opt/shared /opt/team {shlex.quote(str(project))} "
        "'/opt/odd name ' && echo x > /home/dev/.bashrc && "
        f"chown -R {owner} /home/dev '/opt/odd name ' {shlex.quote(str(project))} && "
        f"chmod 1777 /opt/shared && chgrp {PROJECT_GID} /opt/team && chmod 2775 /opt/team\n"
    )
    shown = prov.run("up", name, check=True).stderr
    assert "container layer: 6 paths the image let the agent's UID write there" in shown, shown
    alias = f"prov-{name}"
    attack = (
        "for p in /home/dev/x /home/dev/.cache/x /opt/shared/x /opt/team/x '/opt/odd name /x'; "
        'do touch "$p" 2>/dev/null && echo "wrote $p"; done; '
        "echo more >> /home/dev/.bashrc 2>/dev/null && echo appended; "
        "chmod 0777 /home/dev 2>/dev/null && echo chmodded; "
        "mv /home/dev /tmp/stolen 2>/dev/null && echo moved; "
        f"touch {shlex.quote(str(project))}/made-inside && echo project-writable"
    )
    for _ in ("first start", "after a restart"):
        done = prov.ssh(alias, attack, timeout=30)
        assert done.stdout.split() == ["project-writable"], done
        prov.run("restart", name, check=True)
    assert (project.stat().st_uid, project.stat().st_gid) == (PROJECT_UID, PROJECT_GID)
    assert (project / "made-inside").stat().st_uid == PROJECT_UID
    # Restarts take nothing again: the record is the first start's.
    container = docker_client.containers.get(alias)
    assert "the image let the agent write 6 path(s)" in container.logs().decode()
    assert container.logs().decode().count("prov: layer:") == 1
    prov.run("rm", name, "--yes", check=True)


def test_a_home_whose_file_system_is_gone_never_runs_the_agent_on_the_hosts_disk(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """After a reboot of the engine host the home's mount is gone (here: unmounted
    by hand while stopped). `docker start` behind prov's back then refuses to run
    sshd on the bare directory; `prov start` mounts it again, with what the agent
    had written."""
    name = prov.name("diskgone")
    prov.project(name)
    prov.up(name, "--disk", "256m")
    prov.ssh(f"prov-{name}", "echo kept > ~/note", timeout=30)
    prov.run("stop", name, check=True)
    mountpoint = docker_client.volumes.get(f"prov-{name}-disk").attrs["Mountpoint"]
    subprocess.run(["umount", f"{mountpoint}/mnt"], check=True)
    container = docker_client.containers.get(f"prov-{name}")
    container.start()
    deadline = time.monotonic() + 20
    logs = ""
    while time.monotonic() < deadline and "not mounted" not in logs:
        time.sleep(0.3)
        logs = container.logs().decode(errors="replace")
    container.stop(timeout=2)
    assert "the home's own file system is not mounted" in logs, logs
    # Docker makes the mount points of the credential mounts below the home
    # (empty directories); nothing else may be there.
    written = [p for p in Path(mountpoint, "mnt").rglob("*") if not p.is_dir()]
    assert not written, f"written to the bare directory on the host's disk: {written}"
    prov.run("start", name, check=True)
    assert prov.ssh(f"prov-{name}", "cat ~/note", timeout=30).stdout.strip() == "kept"
    # Its size stays what it was made with, and `up` says so for another --disk.
    kept = prov.run("up", name, "--disk", "512m", check=True).stderr
    assert "--disk 512m is not applied" in kept and "(256m)" in kept, kept
    prov.run("rm", name, "--yes", check=True)
    assert not _loops_of(f"prov-{name}-disk")


def test_a_home_volume_left_without_its_disk_is_made_again_and_said(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """An `up` cut off between making the home's disk and its home volume (or a
    disk volume removed by hand) leaves a home volume that binds a directory no
    longer there: no container can start on it. The next `up` says so, makes a
    new bounded home and comes up, instead of failing in Docker's mount."""
    from provisioner.config import ProvPaths
    from provisioner.plan import LABEL_HOME, LABEL_MANAGED, LABEL_NAME, home_id

    name = prov.name("nodisk")
    prov.project(name)
    root = str(docker_client.info()["DockerRootDir"])
    docker_client.volumes.create(
        f"prov-{name}-home",
        driver="local",
        driver_opts=homedisk.home_volume_options(f"{root}/volumes/prov-{name}-disk/_data"),
        labels={
            homedisk.DISK_LABEL: str(256 << 20),
            LABEL_MANAGED: "true",
            LABEL_NAME: name,
            LABEL_HOME: home_id(ProvPaths(prov.prov_home)),
        },
    )
    said = prov.run("up", name, "--disk", "256m", check=True).stderr
    assert "had lost its file system" in said and "a new, empty home was made" in said, said
    blocks = prov.ssh(f"prov-{name}", "df -P -k ~ | tail -1", timeout=30).stdout.split()
    assert 200 * 1024 < int(blocks[1]) <= 256 * 1024, blocks  # its own file system, 256m
    assert _loops_of(f"prov-{name}-disk")
    prov.run("rm", name, "--yes", check=True)
    assert not _loops_of(f"prov-{name}-disk")


def test_a_stopped_environment_whose_home_disk_was_removed_by_hand_says_what_to_do(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """Its container still holds the home volume, so prov cannot make a new
    home under it: `start` and `up` fail with a paragraph that says so and what
    to do (and it works), not with Docker's mount error."""
    name = prov.name("diskrm")
    prov.project(name)
    prov.up(name, "--disk", "256m")
    prov.run("stop", name, check=True)
    disk = docker_client.volumes.get(f"prov-{name}-disk")
    subprocess.run(["umount", f"{disk.attrs['Mountpoint']}/mnt"], check=True)
    for line in _loops_of(f"prov-{name}-disk"):
        if line.startswith("/dev/loop"):
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=True)
    disk.remove()
    for args in (("start", name), ("up", name)):
        failed = prov.run(*args)
        assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr
        assert "home volume has lost its file system" in failed.stderr, failed.stderr
        assert f"`prov rm {name}` and `prov up {name}`" in failed.stderr, failed.stderr
    prov.run("rm", name, "--yes", check=True)
    prov.up(name, "--disk", "256m")
    assert prov.ssh(f"prov-{name}", "true", timeout=30).returncode == 0
    prov.run("rm", name, "--yes", check=True)
    assert not _loops_of(f"prov-{name}-disk")
