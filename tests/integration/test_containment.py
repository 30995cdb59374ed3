"""Containment, tried the way a hostile agent with a shell inside would try it.

Each test attempts an escape and asserts it fails; the controls (the same
attempt from the host, or from an `--egress open` environment) show the
target was really there. Test hosts live in a network namespace and in
containers these tests make and remove; no traffic leaves this machine.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import (
    ALLOWED_DOMAIN,
    DENIED_DOMAIN,
    DENIED_SITE,
    EGRESS_NET,
    PROJECT_GID,
    PROJECT_UID,
    SITE,
    HttpsSite,
    Prov,
    env_network,
    free_port,
    start_outside_server,
)
from tests.integration.tlssite import PACKAGE, PACKAGE_VALUE

NETNS = f"provtest{os.getpid() % 10000}"
NS_HOST, NS_PEER = "10.250.77.1", "10.250.77.2"  # this machine's end, the test host's
# Clients in a session trust the test site's CA through their usual variables.
TRUST = "SSL_CERT_FILE={ca} GIT_SSL_CAINFO={ca} PIP_CERT={ca} NODE_EXTRA_CA_CERTS={ca}"
ALLOWED, DENIED = ALLOWED_DOMAIN, DENIED_DOMAIN


def _tcp_from(prov: Prov, alias: str, host: str, port: int) -> subprocess.CompletedProcess[str]:
    """A raw TCP connect from inside, as the agent; prints the first line it reads."""
    script = f"exec 3<>/dev/tcp/{host}/{port} && timeout 3 head -1 <&3"
    return prov.ssh(alias, f"timeout 8 bash -c {shlex.quote(script)}")


def _connect_via_proxy(prov: Prov, alias: str, target: str) -> str:
    """An HTTP CONNECT through the environment's proxy (from $HTTPS_PROXY), as any
    HTTPS client does; returns what came back (status line, then the tunnel's data)."""
    script = (
        'p=${HTTPS_PROXY#http://}; exec 3<>"/dev/tcp/${p%:*}/${p##*:}" && '
        f'printf "CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n" >&3 && '
        "timeout 4 cat <&3"
    )
    return prov.ssh(alias, f"bash -c {shlex.quote(script)}", timeout=30).stdout


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    """A service on this machine bound to 0.0.0.0 (every bridge's gateway address too)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    server.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"host-service\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


@pytest.fixture(scope="module")
def test_host() -> Iterator[int]:
    """A host in a network namespace of its own, routed through this machine
    (a veth pair, no default route), with a TCP service on it."""
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    run("ip", "netns", "add", NETNS)
    server = None
    try:
        run("ip", "link", "add", f"{NETNS}a", "type", "veth", "peer", "name", f"{NETNS}b")
        run("ip", "link", "set", f"{NETNS}b", "netns", NETNS)
        run("ip", "addr", "add", f"{NS_HOST}/30", "dev", f"{NETNS}a")
        run("ip", "link", "set", f"{NETNS}a", "up")
        ns = ("ip", "netns", "exec", NETNS)
        run(*ns, "ip", "addr", "add", f"{NS_PEER}/30", "dev", f"{NETNS}b")
        run(*ns, "ip", "link", "set", f"{NETNS}b", "up")
        run(*ns, "ip", "link", "set", "lo", "up")
        # Replies to environments' subnets go back through this machine.
        run(*ns, "ip", "route", "add", "10.213.0.0/16", "via", NS_HOST)
        port = 18080
        server = subprocess.Popen(
            [
                *ns,
                "python3",
                "-c",
                "import socket\n"
                "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                f"s.bind(('{NS_PEER}', {port})); s.listen(16)\n"
                "while True:\n"
                "    c, _ = s.accept(); c.sendall(b'outside\\n'); c.close()\n",
            ]
        )
        for _ in range(50):
            try:
                with socket.create_connection((NS_PEER, port), timeout=0.5) as sock:
                    assert sock.recv(16) == b"outside\n"
                    break
            except OSError:
                threading.Event().wait(0.1)
        yield port
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", f"{NETNS}a"], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)


@pytest.fixture(scope="module")
def allowed_server(docker_client: docker.DockerClient, env_image: str) -> Iterator[None]:
    """An 'outside' server on prov's egress network, known there as ALLOWED and
    DENIED: an sshd on port 443, whose banner proves a tunnel reached it."""
    sshd = "mkdir -p /run/sshd && ssh-keygen -A >/dev/null && exec /usr/sbin/sshd -D -p 443"
    container = start_outside_server(
        docker_client,
        env_image,
        ["sh", "-c", sshd],
        [ALLOWED, DENIED],
        "egress-server",
        listening=(443,),
    )
    try:
        yield None
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module", params=["alias-only", "guide-port"])
def boxed(prov: Prov, allowed_server: None, request: pytest.FixtureRequest) -> str:
    """An environment as everyone gets it: allowlist egress (plus the test server), no
    sudo; and the same with the guide's `--port`, which every attack is tried on too."""
    port = request.param == "guide-port"
    name = prov.name("boxed-port" if port else "boxed")
    prov.project(name)
    prov.up(
        name,
        "--allow",
        ALLOWED,
        "-e",
        "BOX_SECRET=s3cr3t-value",
        *(("--port", str(free_port())) if port else ()),
    )
    return f"prov-{name}"


@pytest.fixture(scope="module")
def boxed_trust(prov: Prov, boxed: str, https_site: HttpsSite) -> str:
    """The site's CA, copied into the boxed environment's project dir (same path
    inside), as the variables that make curl, git, pip and node trust it."""
    project = prov.projects / boxed.removeprefix("prov-")
    ca = project / "site-ca.pem"
    ca.write_bytes(https_site.ca.read_bytes())
    return TRUST.format(ca=ca)


@pytest.fixture(scope="module")
def rooted(prov: Prov) -> str:
    """An environment made with --sudo: root inside, still behind the allowlist."""
    name = prov.name("rooted")
    prov.project(name)
    prov.up(name, "--sudo")
    return f"prov-{name}"


def test_no_sudo_and_no_capabilities(prov: Prov, boxed: str) -> None:
    """sudo fails with advice, and the agent's processes hold no capability at all."""
    result = prov.ssh(boxed, "sudo id; grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status")
    assert "prov up NAME --sudo" in result.stderr and "pip install --user" in result.stderr
    status = dict(line.split(":\t") for line in result.stdout.splitlines())
    assert status == {"CapPrm": "0000000000000000", "CapEff": "0000000000000000", "NoNewPrivs": "1"}
    # The real sudo, called directly, is refused by the kernel's no-new-privileges.
    direct = prov.ssh(boxed, "/usr/bin/sudo -n true")
    assert direct.returncode != 0


def test_keys_and_session_secrets_out_of_reach(prov: Prov, boxed: str) -> None:
    """Host key, session env file, keys mount and authorized_keys are all refused to the agent,
    while the session still sees its variable."""
    for attempt in (
        "cat /etc/ssh/ssh_host_ed25519_key",
        "cat /etc/prov/environment",
        "ls /etc/prov/keys",
        "echo 'ssh-ed25519 AAAA x' >> /etc/ssh/authorized_keys/agent",
        "sed -i s/AllowUsers/#/ /etc/ssh/sshd_config.d/00-prov.conf",
    ):
        result = prov.ssh(boxed, attempt)
        assert result.returncode != 0, attempt
        assert "Permission denied" in result.stderr, (attempt, result.stderr)
    assert prov.ssh(boxed, "echo $BOX_SECRET").stdout.strip() == "s3cr3t-value"


def test_no_route_out_and_no_host_services(
    prov: Prov, boxed: str, test_host: int, listener: int, docker_client: docker.DockerClient
) -> None:
    """Raw TCP to a host routed through this machine, and to this machine's own services
    on the gateway address, both fail; from the host the same targets answer."""
    with socket.create_connection((NS_PEER, test_host), timeout=3) as sock:
        assert sock.recv(16) == b"outside\n"  # control: it is there
    assert _tcp_from(prov, boxed, NS_PEER, test_host).stdout.strip() == ""
    gateway = docker_client.networks.get(env_network(docker_client, boxed)).attrs["IPAM"]["Config"][
        0
    ]["Gateway"]
    with socket.create_connection((gateway, listener), timeout=3) as sock:
        assert sock.recv(16) == b"host-service\n"  # control
    for host in (gateway, "172.17.0.1", NS_HOST):
        result = _tcp_from(prov, boxed, host, listener)
        assert "host-service" not in result.stdout, host


def test_open_egress_restores_the_network(prov: Prov, test_host: int) -> None:
    """--egress open: the same raw connection out succeeds (so the test above could fail)."""
    name = prov.name("open")
    prov.project(name)
    prov.up(name, "--egress", "open")
    assert _tcp_from(prov, f"prov-{name}", NS_PEER, test_host).stdout.strip() == "outside"


def test_proxy_allows_only_listed_names_and_logs_refusals(
    prov: Prov, boxed: str, docker_client: docker.DockerClient
) -> None:
    """CONNECT to an allowed name reaches the server; to any other name it is refused and
    the refusal shows in `prov egress`."""
    allowed = _connect_via_proxy(prov, boxed, f"{ALLOWED}:443")
    assert "200 Connection established" in allowed and "SSH-2.0-OpenSSH" in allowed
    denied = _connect_via_proxy(prov, boxed, f"{DENIED}:443")
    assert "403" in denied and "SSH-2.0" not in denied
    wrong_port = _connect_via_proxy(prov, boxed, f"{ALLOWED}:22")
    assert "SSH-2.0" not in wrong_port
    report = json.loads(
        prov.run("egress", boxed.removeprefix("prov-"), "--json", check=True).stdout
    )
    assert report["mode"] == "allowlist" and ALLOWED in report["allowed"]
    assert any(DENIED in line for line in report["denials"])
    # A port other than 80/443 is refused and shown as such too.
    assert any("port 22" in line for line in report["denials"]), report["denials"]
    proxy = docker_client.containers.get(f"{boxed}-egress")
    assert proxy.attrs["HostConfig"]["LogConfig"]["Config"] == {"max-size": "1m", "max-file": "3"}


def test_no_dns_for_outside_names(prov: Prov, boxed: str) -> None:
    """Names outside the environment's network do not resolve inside (DNS is a channel out)."""
    for name in (ALLOWED, "github.com", "localhost.localdomain.example"):
        result = prov.ssh(boxed, f"getent hosts {name}")
        assert result.returncode != 0 and result.stdout.strip() == "", name


def test_root_with_sudo_cannot_widen_egress(prov: Prov, rooted: str, test_host: int) -> None:
    """--sudo gives root, but not the network: the rules and routes cannot be changed."""
    assert prov.ssh(rooted, "sudo id -u").stdout.strip() == "0"
    for attempt in (
        "sudo iptables -D OUTPUT -j REJECT",  # the catch-all that refuses the rest
        "sudo iptables -F OUTPUT",
        "sudo ip route add default dev eth0",
    ):
        result = prov.ssh(rooted, attempt)
        assert result.returncode != 0, attempt
    script = f"exec 3<>/dev/tcp/{NS_PEER}/{test_host} && timeout 3 head -1 <&3"
    out = prov.ssh(rooted, f"sudo timeout 8 bash -c {shlex.quote(script)}")
    assert "outside" not in out.stdout


def test_environments_cannot_reach_each_other(
    prov: Prov, boxed: str, rooted: str, docker_client: docker.DockerClient
) -> None:
    """Neither an allowlist nor an open environment reaches another environment's sshd."""
    target = docker_client.containers.get(rooted)
    address = next(iter(target.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    assert "SSH-2.0" not in _tcp_from(prov, boxed, address, 22).stdout
    assert "SSH-2.0" not in _tcp_from(prov, f"prov-{prov.name('open')}", address, 22).stdout


def test_pids_limit_stops_a_fork_loop(prov: Prov) -> None:
    """A bounded fork loop hits --pids-limit instead of the host's process table."""
    name = prov.name("pids")
    prov.project(name)
    prov.up(name, "--pids-limit", "48")
    loop = "i=0; while [ $i -lt 80 ]; do sleep 20 & i=$((i+1)); done; wait"
    result = prov.ssh(f"prov-{name}", f"timeout 15 sh -c {shlex.quote(loop)}; pkill -u agent sleep")
    assert "fork" in result.stderr.lower() or "resource temporarily unavailable" in (
        result.stderr.lower()
    )
    assert prov.ssh(f"prov-{name}", "true").returncode == 0  # and it recovers


@pytest.mark.parametrize(
    "case",
    ["link-to-etc", "home", "docker-socket", "root", "over-etc-ssh", "prov-home", "dotdot-target"],
)
def test_unsafe_mounts_refused(
    prov: Prov, docker_client: docker.DockerClient, tmp_path: Path, case: str
) -> None:
    """Each mount that would hand over the host is refused with exit 2, leaving nothing."""
    name = prov.name(f"m-{case}")
    project = prov.project(name)
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    (prov.prov_home / "envs").mkdir(parents=True, exist_ok=True)
    args = {
        "link-to-etc": ["--project", str(link)],
        "home": ["--project", str(prov.home)],
        "docker-socket": ["--mount", "/var/run/docker.sock:/var/run/docker.sock"],
        "root": ["--mount", "/:/host"],
        "over-etc-ssh": ["--mount", f"{tmp_path}:/etc/ssh"],
        "prov-home": ["--mount", f"{prov.prov_home / 'envs'}:/data"],
        "dotdot-target": ["--mount", f"{tmp_path}:/data/../etc/prov"],
    }[case]
    result = prov.run("up", name, *args)
    assert result.returncode == 2, result.stderr
    assert "Refusing to mount" in result.stderr and "Traceback" not in result.stderr
    assert not docker_client.containers.list(all=True, filters={"name": f"prov-{name}"})
    assert not docker_client.networks.list(names=[f"prov-{name}-net"])
    assert project.is_dir()


def test_another_prov_home_is_foreign(prov: Prov, boxed: str, tmp_path: Path) -> None:
    """A second PROV_HOME does not list, stop, remove or replace the first one's environment."""
    other = {"PROV_HOME": str(tmp_path / "other-home")}
    name = boxed.removeprefix("prov-")
    listed = json.loads(prov.run("ls", "--json", env=other, check=True).stdout)
    assert name not in [e["name"] for e in listed]
    everyone = json.loads(prov.run("ls", "--json", "--all", env=other, check=True).stdout)
    assert any(e["name"] == name and e["home"] == "other" for e in everyone)
    for command in (("down", name), ("stop", name), ("up", name, "--recreate")):
        result = prov.run(*command, env=other)
        assert result.returncode == 4, (command, result.stderr)
        assert "another prov home" in result.stderr
    assert prov.ssh(boxed, "true").returncode == 0  # untouched


def test_root_on_another_users_home_refused(prov: Prov, tmp_path: Path) -> None:
    """`sudo -E prov up` (root, a user's HOME) writes nothing there and says how to run it."""
    home = tmp_path / "alice"
    home.mkdir()
    os.chown(home, PROJECT_UID, PROJECT_GID)
    name = prov.name("sudoe")
    prov.project(name)
    result = prov.run("up", name, env={"HOME": str(home), "PROV_HOME": str(home / ".prov")})
    assert result.returncode == 2 and "run prov as that user" in result.stderr
    assert list(home.iterdir()) == []


def test_allowed_https_works_for_curl_git_and_pip(
    prov: Prov, boxed: str, boxed_trust: str, https_site: HttpsSite
) -> None:
    """The everyday clients, with nothing but the proxy variables prov set: curl, git clone
    and pip install --user reach an allowed name's subdomain over HTTPS, through the proxy."""
    site = https_site.url
    curl = prov.ssh(boxed, f"{boxed_trust} curl -fsS {site}/hello.txt", timeout=60)
    assert curl.stdout.strip() == PACKAGE_VALUE, curl.stderr
    clone = prov.ssh(
        boxed,
        f"cd /tmp && rm -rf r && {boxed_trust} git clone -q {site}/repo.git r && cat r/README",
        timeout=60,
    )
    assert clone.stdout.strip() == PACKAGE_VALUE, clone.stderr
    pip = prov.ssh(
        boxed,
        f"{boxed_trust} pip install -q --user --index-url {site}/simple/ {PACKAGE} && "
        f"python3 -c 'import {PACKAGE}; print({PACKAGE}.VALUE)'",
        timeout=120,
    )
    assert pip.stdout.strip().endswith(PACKAGE_VALUE), pip.stdout + pip.stderr
    log = https_site.requests()
    for path in ("/hello.txt", "/repo.git/info/refs", f"/simple/{PACKAGE}/", "/files/"):
        assert f"REQ GET {path}" in log, (path, log[-2000:])


def test_denied_https_fails_with_the_proxys_refusal(
    prov: Prov, boxed: str, boxed_trust: str, https_site: HttpsSite
) -> None:
    """The same server under a name not on the list: curl gets the proxy's 403, and
    bypassing the proxy (--noproxy) finds no route."""
    before = https_site.requests().count("REQ ")
    refused = prov.ssh(
        boxed, f"{boxed_trust} curl -sS -o /dev/null https://{DENIED_SITE}/hello.txt", timeout=60
    )
    assert refused.returncode != 0 and "403" in refused.stderr, refused.stderr
    direct = prov.ssh(
        boxed,
        f"{boxed_trust} curl -sS --max-time 8 --noproxy '*' https://{SITE}/hello.txt",
        timeout=60,
    )
    assert direct.returncode != 0 and PACKAGE_VALUE not in direct.stdout
    assert https_site.requests().count("REQ ") == before


def test_a_stopped_proxy_is_made_again_on_up(
    prov: Prov, allowed_server: None, docker_client: docker.DockerClient
) -> None:
    """A stopped environment whose proxy lost its way out meanwhile (its network removed
    or pruned while only stopped containers referred to it): `up` makes a new proxy, and
    the allowed name is reachable again."""
    name = prov.name("reproxy")
    prov.project(name)
    prov.up(name, "--allow", ALLOWED)
    alias = f"prov-{name}"
    assert prov.run("stop", name, "--yes").returncode == 0
    old = docker_client.containers.get(f"{alias}-egress")
    docker_client.networks.get(EGRESS_NET).disconnect(old, force=True)
    prov.up(name, "--allow", ALLOWED)
    new = docker_client.containers.get(f"{alias}-egress")
    assert new.id != old.id and new.status == "running"
    assert "SSH-2.0-OpenSSH" in _connect_via_proxy(prov, alias, f"{ALLOWED}:443")


def _gate_addresses(docker_client: docker.DockerClient, alias: str) -> tuple[str, str]:
    """The gate's address on the environment's network, and on the outside one."""
    networks = docker_client.containers.get(f"{alias}-egress").attrs["NetworkSettings"]["Networks"]
    own = networks[env_network(docker_client, alias)]
    return own["IPAddress"], networks[EGRESS_NET]["IPAddress"]


def test_the_published_ports_path_gives_the_agent_nothing(
    prov: Prov, boxed: str, docker_client: docker.DockerClient
) -> None:
    """The guide's `--port` under the default containment: the port reaches sshd
    from this machine (controls), while the agent inside, trying every way along
    that path (the relay on the gate's inner and outer address, the published
    port on every address it can name, and CONNECT through its proxy to each),
    reaches no SSH server and no way out."""
    container = docker_client.containers.get(boxed)
    published = container.labels["prov.port"]
    if published == "0":
        pytest.skip("the alias-only environment publishes nothing")
    port = int(published)
    assert not container.attrs["HostConfig"].get("PortBindings")  # the environment: nothing
    inner, outer = _gate_addresses(docker_client, boxed)
    gate = docker_client.containers.get(f"{boxed}-egress")
    assert gate.attrs["NetworkSettings"]["Ports"]["2222/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": published}
    ]
    for host, at in (("127.0.0.1", port), (outer, 2222)):  # controls, from this machine
        with socket.create_connection((host, at), timeout=3) as sock:
            assert sock.recv(64).startswith(b"SSH-2.0-"), (host, at)
    gateway = container.attrs["NetworkSettings"]["Networks"][env_network(docker_client, boxed)][
        "Gateway"
    ]
    for host, at in (
        (inner, 2222),
        (inner, 22),
        (outer, 2222),
        (gateway, port),
        ("127.0.0.1", port),
        ("172.17.0.1", port),
    ):
        result = _tcp_from(prov, boxed, host, at)
        assert "SSH-2.0" not in result.stdout, (host, at, result.stdout)
    for target in (
        f"{inner}:2222",
        f"{outer}:2222",
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"{boxed}-egress:2222",
        f"{gateway}:{port}",
    ):
        answer = _connect_via_proxy(prov, boxed, target)
        assert "SSH-2.0" not in answer and "200 Connection established" not in answer, target
    # The way out is still the proxy only (its allowed name answers through it).
    assert "SSH-2.0-OpenSSH" in _connect_via_proxy(prov, boxed, f"{ALLOWED}:443")


def test_port_with_no_egress_relays_ssh_and_nothing_else(
    prov: Prov, docker_client: docker.DockerClient, listener: int
) -> None:
    """--egress none --port: the guide's form logs in through the gate's relay, and
    the agent reaches nothing at all: not the gate (which runs no proxy), not the
    relay, not this machine."""
    name = prov.name("noneport")
    prov.project(name)
    port = free_port()
    env = prov.up(name, "--egress", "none", "--port", str(port))
    alias = f"prov-{name}"
    published = dict(env["published"])  # type: ignore[call-overload]
    assert (published["bind"], published["port"]) == ("127.0.0.1", port)
    guide = prov.guide_ssh(port, str(env["identity_file"]), "echo $HTTPS_PROXY; id -un")
    assert guide.returncode == 0, guide.stderr
    assert guide.stdout.split() == ["agent"]  # no proxy variable: there is no proxy
    inner, outer = _gate_addresses(docker_client, alias)
    gateway = docker_client.networks.get(env_network(docker_client, alias)).attrs["IPAM"]["Config"][
        0
    ]["Gateway"]
    for host, at in ((inner, 3128), (inner, 2222), (outer, 2222), (gateway, listener)):
        result = _tcp_from(prov, alias, host, at)
        assert result.stdout.strip() == "", (host, at, result.stdout)
    gate_log = docker_client.containers.get(f"{alias}-egress").logs().decode()
    assert "relaying" in gate_log and "tinyproxy" not in gate_log.lower()
