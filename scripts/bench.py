#!/usr/bin/env python3
"""Measure prov's speed and print the figures, with the machine they ran on.

- warm `prov up` to ready (image present, container absent), against the
  guide's manual sequence in the same run: `docker run` of an sshd image with
  baked host keys, `docker exec` appending the key, then an ssh retry loop;
- `prov --help` wall time;
- an ssh round trip through the alias, with and without connection reuse.

- no-op `prov up` of a running, unchanged environment; `prov ls` over 35
  environments; `prov up e1 ... e10` (with the 2 slots an `up` leaves, and
  after `prov up --prepare 10`) against one environment's up and ten manual
  sequences in parallel; prov's peak RSS during `up`; the idle slots' memory.

- with --agents: `prov up` with Claude Code, Codex and Gemini CLI in the image,
  first as found (with --cold: the agent layer built afresh, under a context no
  cache matches) and then cached, and the size of each part of the image.

Targets: warm up within 0.9x the manual sequence, ten at once within 0.6x ten
manual sequences run in parallel (and under 3x one), --help under 0.3 s,
no-op up and ls under 0.15 s, an idle slot under 10 MB, peak RSS under 100 MB.
Each figure is taken once prov's background slot filler is done, and printed
beside its floor (the same container work with no prov code running) in a
table at the end.
- with --remote (or --only-remote): environments on two remote engines made
  in network namespaces (warm up, round trip through the jump alias against
  the local one, `prov ls` over both engines, an rsync with nothing to move).

Targets: remote warm up under 1.5 s, its round trip within 1.2x the local
one, ls over two engines under 0.5 s.
- with --secrets (or --only-secrets): what the egress proxy adds to a request
  when it injects a secret (it ends TLS, adds the header, re-encrypts) against
  the same site reached through its plain tunnel, as curl inside measures it,
  with a new connection per request and with one connection reused.

Target: injection adds under 10 ms per request.
- when the devcontainers CLI is installed (unless --no-devcontainer; or only
  this, --only-devcontainer): a project with a devcontainer.json brought up
  by the devcontainers CLI (`devcontainer up` and a first `devcontainer exec`)
  and by `prov up`, side by side.

Target: prov up no slower than the devcontainers CLI.
Everything else runs against the local engine with loopback ports; all
containers, images, hosts and temp files it makes are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker

from provisioner import slots
from provisioner.config import ProvPaths

MANUAL_TAG = "prov-bench-manual:latest"


def prov_exe() -> list[str]:
    script = Path(sys.executable).parent / "prov"
    if script.exists():
        return [str(script)]
    found = shutil.which("prov")
    if found:
        return [found]
    sys.exit("bench: the prov console script is not installed (run scripts/setup.sh)")


def settle(prov_home: Path) -> None:
    """Until prov's background slot filler is done: every figure is taken on a
    machine where nothing of an earlier step still runs."""
    slots.wait_idle(ProvPaths(prov_home))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(cmd: list[str], env: dict[str, str] | None = None, check: bool = True) -> str:
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=env, check=False, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    engine = docker.from_env().version().get("Version", "?")
    return (
        f"{platform.node()}: {platform.machine()}, {os.cpu_count()} cores ({cpu}), "
        f"{mem_gib:.0f} GiB, Linux {platform.release()}, Docker engine {engine}, "
        f"Python {platform.python_version()}"
    )


def build_manual_image(client: docker.DockerClient, prov_image: str) -> None:
    """The guide's image: stock sshd config, host keys baked at build, `agent` user."""
    dockerfile = (
        f"FROM {prov_image}\n"
        "RUN rm -f /etc/ssh/sshd_config.d/00-prov.conf && ssh-keygen -A && "
        "(id agent >/dev/null 2>&1 || useradd -m -s /bin/bash agent) && usermod -p '*' agent && "
        "mkdir -p /home/agent/.ssh /run/sshd && chown agent:agent /home/agent/.ssh\n"
        'ENTRYPOINT []\nCMD ["/usr/sbin/sshd", "-D"]\n'
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=MANUAL_TAG, rm=True, forcerm=True)


def manual_sequence(key: Path, project: Path, port: int | None = None) -> float:
    """docker run + docker exec key append + ssh retry loop, as in the guide."""
    port = port or free_port()
    name = f"prov-bench-manual-{port}"
    start = time.perf_counter()
    run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "-p",
            f"127.0.0.1:{port}:22",
            "-v",
            f"{project}:/home/agent/project",
            MANUAL_TAG,
        ]
    )
    with (key.with_suffix(".pub")).open() as pub:
        subprocess.run(
            [
                "docker",
                "exec",
                "-i",
                name,
                "bash",
                "-c",
                "cat >> /home/agent/.ssh/authorized_keys && "
                "chown agent /home/agent/.ssh/authorized_keys",
            ],
            stdin=pub,
            check=True,
            capture_output=True,
        )
    while True:
        result = subprocess.run(
            [
                "ssh",
                "-i",
                str(key),
                "-p",
                str(port),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
                "agent@127.0.0.1",
                "true",
            ],
            capture_output=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode == 0:
            break
        if time.perf_counter() - start > 60:
            sys.exit("bench: manual sequence never became ready")
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    run(["docker", "rm", "-f", name])
    return elapsed


def manual_parallel(key: Path, project: Path, count: int = 10) -> float:
    """Wall time of `count` manual sequences started together, until the last is ready."""
    from concurrent.futures import ThreadPoolExecutor

    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    with ThreadPoolExecutor(max_workers=count) as pool:
        ready = list(pool.map(lambda p: manual_sequence(key, project, p), sorted(ports)))
    # All start together; each one's time ends when it is ready (before its
    # container is removed), so the slowest is the wall time to all ready.
    return max(ready)


def wait_banner(host: str, port: int, limit: float = 30.0) -> None:
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 1) as sock:
            if sock.recv(4).startswith(b"SSH-"):
                return
        time.sleep(0.002)
    sys.exit(f"bench: no sshd banner on {host}:{port}")


def docker_floor_warm(
    client: docker.DockerClient, up: dict[str, object], config: Path, runs: int
) -> list[float]:
    """What a warm `up` costs Docker and sshd alone, with no prov code running:
    the environment's container (made by prov, then stopped; its proxy is a
    slot, running already) started through the Engine API, until a login
    through the alias (no connection reuse) runs `true`. Creating it is left
    out (~10 ms)."""
    from concurrent.futures import ThreadPoolExecutor

    ids = [str(up["container"])]  # its proxy, a slot, runs already
    login = ["ssh", "-F", str(config), "-o", "ControlPath=none", "-o", "BatchMode=yes"]
    times = []
    for _ in range(runs):
        for cid in ids:
            client.api.stop(cid, timeout=0)
        with ThreadPoolExecutor(len(ids)) as pool:
            start = time.perf_counter()
            list(pool.map(client.api.start, ids))
        wait_banner(str(up["host"]), int(str(up["port"])))
        run([*login, str(up["ssh_alias"]), "true"])
        times.append(time.perf_counter() - start)
    return times


def docker_floor_ten(client: docker.DockerClient, image: str, count: int = 10) -> float:
    """What ten new environments whose proxies are slots cost Docker alone:
    for each, in parallel, an internal network, a container on it, started,
    and a running container (the slot) connected to it; no sshd, no prov code."""
    from concurrent.futures import ThreadPoolExecutor

    api = client.api
    tag = f"provbenchfloor{os.getpid()}"
    side = api.create_network(f"{tag}-out", driver="bridge")["Id"]

    def container(role: str, i: int, network: str) -> str:
        return str(
            api.create_container(
                image,
                entrypoint=["/bin/sleep", "600"],
                name=f"{tag}-{role}{i}",
                labels={"prov-bench": tag},
                host_config=api.create_host_config(network_mode=network),
            )["Id"]
        )

    slots_made = [container("slot", i, side) for i in range(count)]
    for cid in slots_made:
        api.start(cid)

    def one(i: int) -> None:
        net = api.create_network(f"{tag}-n{i}", driver="bridge", internal=True)["Id"]
        api.connect_container_to_network(slots_made[i], net)
        api.start(container("env", i, net))

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(one, range(count)))
        return time.perf_counter() - start
    finally:
        for container in api.containers(all=True, filters={"label": f"prov-bench={tag}"}):
            api.remove_container(container["Id"], force=True)
        for network in api.networks():
            if network["Name"].startswith(tag):
                api.remove_network(network["Id"])


def peak_rss_mib(cmd: list[str], env: dict[str, str]) -> float:
    """Run `cmd` and return its own peak resident set size (MiB), from wait4."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({proc.returncode})")
    return usage.ru_maxrss / 1024


def _fresh_ca(directory: Path) -> Path:
    """A throwaway CA certificate: passed with --ca-cert it changes the agent layer's
    build context, so neither prov's tag nor Docker's build cache can be reused."""
    from provisioner.injection import make_ca

    path = directory / "bench-ca.pem"
    path.write_bytes(make_ca(f"bench {time.time_ns()}").cert_pem)
    return path


def _layer_sizes(client: docker.DockerClient, image_id: str) -> list[tuple[str, int]]:
    """(what, bytes) for the image's layers that hold data, base first."""
    rows = []
    for entry in reversed(client.api.history(image_id)):
        size = int(entry.get("Size") or 0)
        if size < 1_000_000:
            continue
        created_by = str(entry.get("CreatedBy", ""))
        what = "base"
        for marker, label in (
            ("install claude", "Claude Code"),
            ("install codex", "Codex"),
            ("install gemini", "Gemini CLI"),
            ("in /usr/local/ ", "Node and npm"),  # COPY --from=prov-node
            ("apt-get", "sshd layer packages"),
            ("update-ca-certificates", "CA certificates"),
        ):
            if marker in created_by:
                what = label
                break
        else:
            if "prov" in created_by or "useradd" in created_by:
                what = "sshd layer setup"
        rows.append((what, size))
    return rows


def bench_agents(
    prov: list[str],
    client: docker.DockerClient,
    env: dict[str, str],
    project: Path,
    name: str,
    cold: bool,
    tmp: Path,
) -> None:
    full = {**env, "PROV_AGENTS": "claude,codex,gemini"}
    extra = ["--ca-cert", str(_fresh_ca(tmp))] if cold else []
    first = timed(lambda: run([*prov, "up", name, "--project", str(project), *extra], env=full))
    image = client.containers.get(f"prov-{name}").image
    run([*prov, "down", name], env=full)
    cached = timed(lambda: run([*prov, "up", name, "--project", str(project), *extra], env=full))
    run([*prov, "down", name], env=full)
    label = (
        "agent layer cold (a fresh CA in its context, so no cache applies; base and sshd "
        "layer as found)"
        if cold
        else "first run, as found (whatever layers exist are reused)"
    )
    print(f"full image prov up, {label}: {first:.1f} s; cached: {cached:.2f} s")
    print(
        f"full image size: {image.attrs['Size'] / 1e6:.0f} MB "
        f"(agents: {image.labels.get('prov.agents', '?')})"
    )
    for what, size in _layer_sizes(client, image.id):
        print(f"  {what:22} {size / 1e6:7.0f} MB")
    if cold:
        client.images.remove(image.id, force=True)  # only the throwaway CA's layer


def bench_from_nothing(
    prov: list[str], client: docker.DockerClient, env: dict[str, str], project: Path, name: str
) -> None:
    """The first `up` on a machine with nothing: a base made with debootstrap
    (under a tag of its own, so nothing existing is reused), then `up` with the
    agents on that base, which builds every layer above it afresh. Removed after."""
    from provisioner import baseimage
    from provisioner.engine import Engine

    os_release = Path("/etc/os-release").read_text()
    distro = baseimage.host_distro(os_release) or baseimage.Distro("debian", "bookworm")
    mirror = baseimage.host_mirror(distro.codename)
    if mirror is None or os.geteuid() != 0 or shutil.which("debootstrap") is None:
        print("first up from nothing: not measured (needs root, debootstrap and an apt mirror)")
        return
    tag = f"prov-bench-base:{os.getpid()}"
    engine = Engine.connect()
    full = {**env, "PROV_AGENTS": "claude,codex,gemini"}
    try:
        base_s = timed(
            lambda: baseimage.bootstrap(
                distro, mirror, lambda tar: engine.import_rootfs(tar, tag), print_nothing,
                print_nothing,
            )
        )  # fmt: skip
        up_s = timed(
            lambda: run([*prov, "up", name, "--project", str(project), "--base-image", tag], full)
        )
        print(
            f"first up from nothing: {base_s + up_s:.1f} s = base {base_s:.1f} s (debootstrap) "
            f"+ up {up_s:.1f} s (sshd, agent and egress-proxy layers built afresh on it)"
            "   target < 90 s"
        )
    finally:
        subprocess.run([*prov, "rm", name, "--yes"], env=full, capture_output=True, check=False)
        for image in client.images.list(filters={"label": f"prov.base={tag}"}):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(tag, force=True)


def bench_remote(prov: list[str], tmp: Path, runs: int, local_trip: list[str]) -> None:
    """Environments on two remote engines: hosts in network namespaces this
    script makes (tests/integration/remotehost.py), reached over SSH only."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.integration.remotehost import BASE_DIR, RemoteHost, cleanup_stale

    cleanup_stale()
    home = tmp / "rhome"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    known = home / ".ssh" / "known_hosts"
    (home / ".ssh" / "config").write_text(
        f"IdentityFile {key}\nIdentitiesOnly yes\nUserKnownHostsFile {known}\n"
    )
    wrapper = tmp / "rbin"
    wrapper.mkdir()
    # OpenSSH reads the passwd home's config; this HOME's must be named.
    (wrapper / "ssh").write_text('#!/bin/sh\nexec /usr/bin/ssh -F "$HOME/.ssh/config" "$@"\n')
    (wrapper / "ssh").chmod(0o755)
    hosts = [
        RemoteHost(i, BASE_DIR / f"r{i}", key.with_suffix(".pub").read_text()) for i in (11, 12)
    ]
    env = {
        **os.environ,
        "HOME": str(home),
        "PROV_HOME": str(tmp / "rph"),
        "PROV_AGENTS": "none",
        "PATH": f"{wrapper}:{os.environ['PATH']}",
        "NTM_PROJECTS_BASE": str(tmp),
        "XDG_CONFIG_HOME": str(home / ".config"),
    }
    try:
        for host in hosts:
            host.start()
        known.write_text("".join(h.host_key_line() + "\n" for h in hosts))
        r1, r2 = hosts
        name = f"rb{os.getpid()}"
        (tmp / name).mkdir()
        first = timed(lambda: run([*prov, "up", name, "--docker-host", r1.ssh_url], env=env))
        print(f"remote: first up (image copied to the engine, ~600 MB): {first:.2f} s")
        warm = []
        for _ in range(runs):
            run([*prov, "down", name, "--yes"], env=env)
            warm.append(timed(lambda: run([*prov, "up", name], env=env)))
        print(f"remote: warm up (image present, container new): {fmt(warm)}   target < 1.5 s")
        noop = [timed(lambda: run([*prov, "up", name], env=env)) for _ in range(runs)]
        print(f"remote: no-op up (running, unchanged; includes an rsync push): {fmt(noop)}")
        synced = [timed(lambda: run([*prov, "sync", name], env=env)) for _ in range(runs)]
        print(f"remote: prov sync with nothing changed: {fmt(synced)}")
        alias = ["ssh", "-F", str(tmp / "rph" / "ssh_config"), "-o", "BatchMode=yes"]
        run([*alias, f"prov-{name}", "true"], env=env)
        run(local_trip)
        trips, locals_ = [], []
        for _ in range(runs * 10):  # interleaved: both see the same machine load
            trips.append(timed(lambda: run([*alias, f"prov-{name}", "true"], env=env)))
            locals_.append(timed(lambda: run(local_trip)))
        ratio = statistics.median(trips) / statistics.median(locals_)
        print(f"remote: ssh round trip via alias, master up: {fmt(trips)}")
        print(f"        local alias, interleaved with it:    {fmt(locals_)}")
        print(f"        ratio remote/local: {ratio:.2f}x   target <= 1.2x")
        other = f"{name}b"
        (tmp / other).mkdir()
        run([*prov, "up", other, "--docker-host", r2.ssh_url], env=env)
        listed = len(json.loads(run([*prov, "ls", "--json"], env=env)))
        ls_times = [timed(lambda: run([*prov, "ls"], env=env)) for _ in range(runs)]
        print(f"remote: prov ls over two engines ({listed} envs): {fmt(ls_times)}   target < 0.5 s")
        for gone in (name, other):
            run([*prov, "rm", gone, "--yes"], env=env, check=False)
    finally:
        for host in hosts:
            host.stop()


def local_trip(tmp: Path, up: dict[str, str]) -> list[str]:
    """An ssh call through a local environment's alias (its master is kept)."""
    return [
        "ssh",
        "-F",
        str(tmp / "ph" / "ssh_config"),
        "-o",
        "BatchMode=yes",
        up["ssh_alias"],
        "true",
    ]


def print_summary(rows: list[tuple[str, str, str, str]]) -> None:
    """The targets side by side, from this one run."""
    if not rows:
        return
    head = ("figure", "measured", "target", "floor (no prov code)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    print()
    for row in [head, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def print_nothing(_line: str) -> None:
    pass


def fmt_ms(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"median {statistics.median(ms):.1f} ms  (min {min(ms):.1f}, "
        f"max {max(ms):.1f}, n={len(ms)})"
    )


def fmt(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.3f} s  (min {min(values):.3f}, "
        f"max {max(values):.3f}, n={len(values)})"
    )


BENCH_SITE_SERVER = r"""
import http.server, ssl
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the API clients use it
    disable_nagle_algorithm = True  # or each answer waits out a delayed ACK (40 ms)
    def log_message(self, *a):
        pass
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.ThreadingHTTPServer(("", 443), H)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("/srv/cert.pem", "/srv/key.pem")
server.socket = context.wrap_socket(server.socket, server_side=True)
print("READY", flush=True)
server.serve_forever()
"""
INJECTED, TUNNELLED = "api.bench.prov-test", "plain.bench.prov-test"


def _curl_times(ssh: list[str], url: str, cafile: str, count: int, reuse: bool) -> list[float]:
    """Seconds per request, as curl inside the environment measures them
    (through its proxy): `count` new connections, or one connection reused."""
    flags = f"-s --cacert {cafile} -w '%{{time_total}}\\n'"
    if reuse:
        script = f"curl {flags} " + " ".join([f"-o /dev/null {url}"] * (count + 1))
    else:
        script = f"for i in $(seq {count + 1}); do curl {flags} -o /dev/null {url}; done"
    times = [float(x) for x in run([*ssh, script]).split()]
    return times[1:]  # the first one warms the proxy's DNS and certificate cache


def bench_injection(
    prov: list[str], client: docker.DockerClient, env: dict[str, str], tmp: Path, runs: int
) -> None:
    """What the proxy's secret injection adds to a request: one site under two
    names (an outside host, tests/integration/outside.py), one holding a secret (the proxy ends TLS,
    adds the header, re-encrypts) and one plain (a CONNECT tunnel), both asked
    by curl inside the environment, with new connections and a reused one."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.integration.outside import OutsideLan
    from tests.integration.tlssite import make_certs

    site_dir = tmp / "inj-site"
    site_dir.mkdir()
    ca = make_certs(site_dir, [INJECTED, TUNNELLED])
    (site_dir / "server.py").write_text(BENCH_SITE_SERVER)
    name = f"bench{os.getpid()}inj"
    site = None
    lan = OutsideLan()
    address = lan.address(10)
    # The site's names and private range, as a user names an internal mirror.
    config = tmp / "inj-config"
    (config / "prov").mkdir(parents=True)
    (config / "prov" / "egress-allow").write_text(f"{lan.net}\n{address} {INJECTED} {TUNNELLED}\n")
    try:
        bundle = tmp / "inj-bundle.pem"
        system = os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
        bundle.write_bytes(Path(system).read_bytes() + ca.read_bytes())
        up_env = {**env, "SSL_CERT_FILE": str(bundle), "XDG_CONFIG_HOME": str(config)}
        up = json.loads(
            run(
                [*prov, "up", name, "--project", str(tmp / "bench"), "--json",
                 "--allow", "bench.prov-test",
                 "--secret", f"BENCH_TOKEN=bench-{os.getpid()}@{INJECTED}"],
                env=up_env,
            )
        )  # fmt: skip
        site = lan.start(
            client,
            client.containers.get(up["container"]).image.id,  # python3 is in it
            ["python3", "/srv/server.py"],
            address,
            {"prov.test": "bench-site"},
            {str(site_dir): {"bind": "/srv", "mode": "ro"}},
        )
        for _ in range(100):
            if b"READY" in site.logs():
                break
            time.sleep(0.1)
        ssh = ["ssh", "-F", str(tmp / "ph" / "ssh_config"), "-o", "BatchMode=yes", up["ssh_alias"]]
        # curl checks the tunnelled name against the site's CA, the injected one
        # against the proxy's: both get the same two-certificate file, so
        # neither pays more for loading trust than the other.
        run(
            [
                *ssh,
                f"printf '%s' '{ca.read_text()}' | "
                "cat - /usr/local/share/ca-certificates/prov-egress-ca.crt > /tmp/bench-cas.pem",
            ]
        )
        count = max(20, runs * 10)
        rows = []
        for reuse in (False, True):
            tunnel = _curl_times(ssh, f"https://{TUNNELLED}/", "/tmp/bench-cas.pem", count, reuse)
            inject = _curl_times(ssh, f"https://{INJECTED}/", "/tmp/bench-cas.pem", count, reuse)
            rows.append((reuse, tunnel, inject))
        served = run([*prov, "egress", name, "--json"], env=up_env)
        for reuse, tunnel, inject in rows:
            kind = "one connection reused" if reuse else "a new connection each"
            added = (statistics.median(inject) - statistics.median(tunnel)) * 1000
            print(f"request through the tunnel ({kind}): {fmt_ms(tunnel)}")
            print(f"request with the secret injected ({kind}): {fmt_ms(inject)}")
            print(f"injection adds per request ({kind}): {added:.1f} ms   target < 10 ms")
        uses = json.loads(served).get("secrets", [])
        print(f"requests the secret served (prov egress): {[u.get('requests') for u in uses]}")
    finally:
        subprocess.run([*prov, "rm", "--yes", name], env=env, capture_output=True, check=False)
        if site is not None:
            site.remove(force=True)
        lan.close()


def bench_devcontainer(
    prov: list[str], client: docker.DockerClient, env: dict[str, str], tmp: Path, runs: int
) -> tuple[float, float] | None:
    """A project with a devcontainer.json (an image, a variable), brought up by
    `devcontainer up` plus a first `devcontainer exec` against `prov up` to
    ready, in interleaved rounds, each from no container (image present)."""
    cli = shutil.which("devcontainer") or str(Path(sys.executable).parent / "devcontainer")
    if not Path(cli).is_file():
        print("devcontainer CLI not found (scripts/setup.sh installs it): skipped")
        return None
    project = tmp / "dcbench"
    (project / ".devcontainer").mkdir(parents=True)
    base = client.images.list(name="prov-base")
    image = base[0].tags[0] if base else "ubuntu:24.04"
    (project / ".devcontainer" / "devcontainer.json").write_text(
        json.dumps({"image": image, "containerEnv": {"BENCH": "1"}})
    )
    name = f"bench{os.getpid()}dc"
    label = f"devcontainer.local_folder={project}"
    up = [cli, "up", "--workspace-folder", str(project)]
    first_exec = [cli, "exec", "--workspace-folder", str(project), "true"]

    def remove_dc() -> None:
        for container in client.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)

    try:
        run([*prov, "up", name, "--project", str(project)], env=env)  # builds prov's layers
        run([*prov, "down", name], env=env)
        run(up)
        remove_dc()
        prov_times, dc_times = [], []
        for _ in range(runs):
            settle(Path(env["PROV_HOME"]))
            prov_times.append(
                timed(lambda: run([*prov, "up", name, "--project", str(project)], env=env))
            )
            settle(Path(env["PROV_HOME"]))
            run([*prov, "down", name], env=env)
            dc_times.append(timed(lambda: (run(up), run(first_exec))))
            remove_dc()
        print(f"devcontainer up + first exec (devcontainers CLI): {fmt(dc_times)}")
        print(f"prov up to ready on the same devcontainer.json: {fmt(prov_times)}")
        ratio = statistics.median(prov_times) / statistics.median(dc_times)
        print(f"ratio prov / devcontainer CLI: {ratio:.2f}x   target <= 1.0x")
        return statistics.median(prov_times), statistics.median(dc_times)
    finally:
        remove_dc()
        subprocess.run([*prov, "rm", "--yes", name], env=env, capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions per figure")
    parser.add_argument(
        "--agents", action="store_true", help="also time the full image with the three agent CLIs"
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="with --agents: build the agent layer afresh (no cache can apply)",
    )
    parser.add_argument(
        "--from-nothing",
        action="store_true",
        help="also time the first up on a fresh base (debootstrap, then every layer)",
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        help="also time environments on two remote engines (network namespaces; needs root)",
    )
    parser.add_argument(
        "--secrets",
        action="store_true",
        help="also time what injecting a secret adds to a request (against a plain tunnel)",
    )
    parser.add_argument(
        "--no-devcontainer",
        action="store_true",
        help="skip prov up against devcontainer up + exec (timed when that CLI is installed)",
    )
    parser.add_argument(
        "--only-devcontainer", action="store_true", help="time only the devcontainer figures"
    )
    parser.add_argument(
        "--only-secrets", action="store_true", help="time only what injecting a secret adds"
    )
    parser.add_argument(
        "--only-remote",
        action="store_true",
        help="time only the remote figures (and the local round trip they compare to)",
    )
    args = parser.parse_args()
    prov = prov_exe()
    client = docker.from_env()
    tmp = Path(tempfile.mkdtemp(prefix="prov-bench-"))
    # prov as installed runs from compiled bytecode; a shell that turns that
    # off (PYTHONDONTWRITEBYTECODE) would add ~25 ms of compiling to every run.
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        "HOME": str(tmp / "home"),
        "PROV_HOME": str(tmp / "ph"),
        "PROV_AGENTS": "none",
    }
    project = tmp / "bench"
    project.mkdir()
    (tmp / "home").mkdir()
    name = f"bench{os.getpid()}"
    figures: dict[str, object] = {"machine": machine()}
    summary: list[tuple[str, str, str, str]] = []  # figure, measured, target, floor
    try:
        print(f"machine: {figures['machine']}")
        # Warm-up: builds or reuses the image and creates the keys.
        first = json.loads(run([*prov, "up", name, "--project", str(project), "--json"], env=env))
        prov_image = client.containers.get(first["container"]).image.id
        if args.only_devcontainer:
            bench_devcontainer(prov, client, env, tmp, args.runs)
            return
        if args.only_secrets:
            bench_injection(prov, client, env, tmp, args.runs)
            return
        if args.only_remote:
            bench_remote(prov, tmp, args.runs, local_trip(tmp, first))
            return
        run([*prov, "down", name], env=env)

        help_times = [timed(lambda: run([*prov, "--help"], env=env)) for _ in range(args.runs * 2)]
        print(f"prov --help: {fmt(help_times)}   target < 0.3 s")

        build_manual_image(client, prov_image)
        key = tmp / "manual_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        open_name = f"{name}open"
        run([*prov, "up", open_name, "--project", str(project), "--egress", "open"], env=env)
        run([*prov, "down", open_name], env=env)
        up_times, open_times, manual_times = [], [], []
        for _ in range(args.runs):
            # Interleaved so all three see the same machine load.
            up_times.append(
                timed(
                    lambda: run([*prov, "up", name, "--project", str(project), "--json"], env=env)
                )
            )
            settle(tmp / "ph")
            run([*prov, "down", name], env=env)
            open_times.append(
                timed(
                    lambda: run(
                        [*prov, "up", open_name, "--project", str(project), "--egress", "open"],
                        env=env,
                    )
                )
            )
            run([*prov, "down", open_name], env=env)
            settle(tmp / "ph")
            manual_times.append(manual_sequence(key, project))
        ratio = statistics.median(up_times) / statistics.median(manual_times)
        open_ratio = statistics.median(open_times) / statistics.median(manual_times)
        print(f"warm prov up to ready (default: allowlist, its proxy a slot): {fmt(up_times)}")
        print(f"warm prov up to ready, --egress open (no proxy): {fmt(open_times)}")
        print(f"guide's manual sequence: {fmt(manual_times)}")
        print(f"ratio prov/manual: {ratio:.2f}x (open: {open_ratio:.2f}x)   target <= 0.9x")
        floor_up = json.loads(
            run([*prov, "up", name, "--project", str(project), "--json"], env=env)
        )
        settle(tmp / "ph")
        floor = docker_floor_warm(client, floor_up, tmp / "ph" / "ssh_config", args.runs)
        floor_ratio = statistics.median(floor) / statistics.median(manual_times)
        print(
            "Docker and sshd alone (the environment's container started, until a "
            f"login through the alias): {fmt(floor)}; that floor / manual: {floor_ratio:.2f}x"
        )
        summary.append(
            ("warm up / manual sequence", f"{ratio:.2f}x", "<= 0.9x", f"{floor_ratio:.2f}x")
        )
        run([*prov, "down", name], env=env)

        noop = json.loads(run([*prov, "up", name, "--project", str(project), "--json"], env=env))
        settle(tmp / "ph")
        noop_times = [
            timed(lambda: run([*prov, "up", name, "--project", str(project), "--json"], env=env))
            for _ in range(args.runs)
        ]
        print(f"no-op prov up (running, unchanged): {fmt(noop_times)}   target <= 0.15 s")
        help_floor = statistics.median(help_times)
        summary.append(
            (
                "no-op up",
                f"{statistics.median(noop_times):.3f} s",
                "<= 0.15 s",
                f"{help_floor:.3f} s (prov --help)",
            )
        )

        run([*prov, "down", name], env=env)
        settle(tmp / "ph")
        # In a process of its own: a served run's work is in the resident's child.
        rss = peak_rss_mib(
            [*prov, "up", name, "--project", str(project)], {**env, "PROV_RESIDENT": "0"}
        )
        print(f"peak RSS of prov up (its own process): {rss:.0f} MiB   target < 100 MB")
        served = re.search(
            r"resident \(pid \d+, (\d+) kB", run([*prov, "doctor"], env=env, check=False)
        )
        if served:
            print(
                f"prov's resident (it serves the runs above), idle: {int(served[1]) / 1024:.0f} MiB"
            )
        settle(tmp / "ph")

        # Ten new environments in one `prov up`: with the slots an `up` leaves
        # (2 unless set), and after `prov up --prepare 10`; against one new one
        # and ten manual sequences in parallel. Interleaved rounds, fresh names
        # each time (keys are made in both).
        many_env = {**env, "NTM_PROJECTS_BASE": str(tmp)}
        ones, tens, tens_ready, made = [], [], [], []
        for round_ in range(3):
            single = f"{name}s{round_}"
            groups = [[f"{name}r{round_}{kind}{i}" for i in range(10)] for kind in "dp"]
            for new in (single, *groups[0], *groups[1]):
                (tmp / new).mkdir()
            settle(tmp / "ph")
            ones.append(timed(lambda s=single: run([*prov, "up", s], env=many_env)))
            settle(tmp / "ph")
            tens.append(timed(lambda g=groups[0]: run([*prov, "up", *g], env=many_env)))
            settle(tmp / "ph")
            run([*prov, "up", "--prepare", "10"], env=many_env)
            tens_ready.append(timed(lambda g=groups[1]: run([*prov, "up", *g], env=many_env)))
            settle(tmp / "ph")
            run([*prov, "up", "--prepare", "2"], env=many_env)
            made += [single, *groups[0], *groups[1]]
            if round_ < 2:
                for gone in made:
                    run([*prov, "rm", "--yes", gone], env=many_env)
                made = []
        one, ten, ten_ready = (statistics.median(x) for x in (ones, tens, tens_ready))
        settle(tmp / "ph")
        manual_tens = [manual_parallel(key, project) for _ in range(args.runs)]
        manual_ten = statistics.median(manual_tens)
        print(f"prov up of 1 new environment: {fmt(ones)}")
        print(f"prov up of 10 new environments at once (2 slots ready): {fmt(tens)}")
        print(f"prov up of 10 new environments at once (10 slots ready): {fmt(tens_ready)}")
        print(f"ten manual sequences in parallel: {fmt(manual_tens)}")
        print(f"ratio 10 at once / 1: {ten / one:.2f}x   target < 3x")
        floors = [docker_floor_ten(client, prov_image) for _ in range(args.runs)]
        ten_floor = statistics.median(floors) / manual_ten
        print(
            "Docker alone, the container work of 10 new environments whose proxies "
            f"are slots (10 networks, 10 containers, started; no sshd): {fmt(floors)}; "
            f"that floor / ten manual: {ten_floor:.2f}x"
        )
        print(
            f"ratio 10 at once / ten manual in parallel: {ten / manual_ten:.2f}x "
            f"(10 slots ready: {ten_ready / manual_ten:.2f}x)   target <= 0.6x"
        )
        summary.append(
            (
                "10 at once / 10 manual (2 slots)",
                f"{ten / manual_ten:.2f}x",
                "<= 0.6x",
                f"{ten_floor:.2f}x",
            )
        )
        summary.append(
            (
                "10 at once / 10 manual (--prepare 10)",
                f"{ten_ready / manual_ten:.2f}x",
                "<= 0.6x",
                f"{ten_floor:.2f}x",
            )
        )
        # prov ls over at least 35 environments (the last round's, and more).
        listed = len(json.loads(run([*prov, "ls", "--json"], env=many_env)))
        extra = [f"{name}l{i}" for i in range(max(0, 35 - listed))]
        for new in extra:
            (tmp / new).mkdir()
        if extra:
            run([*prov, "up", *extra], env=many_env, check=True)
            made += extra
        settle(tmp / "ph")
        listed = len(json.loads(run([*prov, "ls", "--json"], env=many_env)))
        ls_times = [timed(lambda: run([*prov, "ls"], env=many_env)) for _ in range(args.runs)]
        print(f"prov ls with {listed} environments: {fmt(ls_times)}   target <= 0.15 s")
        summary.append(
            (
                f"ls over {listed} environments",
                f"{statistics.median(ls_times):.3f} s",
                "<= 0.15 s",
                f"{help_floor:.3f} s (prov --help)",
            )
        )
        slot_report = json.loads(run([*prov, "slots", "--json"], env=many_env))
        memory = [int(m) for m in slot_report["memory"]]
        if memory:
            print(
                f"idle slots: {len(memory)}, memory each (docker stats): "
                + ", ".join(f"{m / 1e6:.1f} MB" for m in memory)
                + "   target <= 10 MB"
            )
            summary.append(
                ("idle slot's memory", f"{max(memory) / 1e6:.1f} MB (max)", "<= 10 MB", "-")
            )
        for gone in made:
            run([*prov, "rm", "--yes", gone], env=many_env)

        config = tmp / "ph" / "ssh_config"
        alias = noop["ssh_alias"]
        base = ["ssh", "-F", str(config), "-o", "BatchMode=yes"]
        run([*base, alias, "true"])  # make sure a master runs
        reuse = [timed(lambda: run([*base, alias, "true"])) for _ in range(args.runs * 4)]
        fresh = [
            timed(lambda: run([*base, "-o", "ControlPath=none", alias, "true"]))
            for _ in range(args.runs * 4)
        ]
        print(f"ssh round trip via alias, reused connection: {fmt(reuse)}")
        print(f"ssh round trip via alias, new connection:    {fmt(fresh)}")
        if args.remote:
            bench_remote(prov, tmp, args.runs, [*base, alias, "true"])
        run([*prov, "down", name], env=env)
        if not args.no_devcontainer:  # whenever the devcontainers CLI is installed
            dc = bench_devcontainer(prov, client, env, tmp, args.runs)
            if dc is not None:
                summary.append(
                    ("up / devcontainer up + exec", f"{dc[0] / dc[1]:.2f}x", "<= 1.0x", "-")
                )
        print_summary(summary)
        if args.secrets:
            bench_injection(prov, client, env, tmp, args.runs)
        if args.agents:
            bench_agents(prov, client, env, project, f"{name}full", args.cold, tmp)
        if args.from_nothing:
            bench_from_nothing(prov, client, env, project, f"{name}zero")
    finally:
        # rm, not down: down keeps each environment's network for its next up.
        leftovers = json.loads(
            subprocess.run(
                [*prov, "ls", "--json"],
                env={**env, "NTM_PROJECTS_BASE": str(tmp)},
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            or "[]"
        )
        for env_name in {name, f"{name}open", *(e["name"] for e in leftovers)}:
            subprocess.run(
                [*prov, "rm", "--yes", env_name], env=env, capture_output=True, check=False
            )
        # The slots it kept (the number was set, so the last rm leaves them).
        subprocess.run([*prov, "up", "--prepare", "0"], env=env, capture_output=True, check=False)
        subprocess.run(
            ["ssh", "-F", str(tmp / "ph" / "ssh_config"), "-O", "exit", f"prov-{name}"],
            capture_output=True,
            check=False,
        )
        for container in client.containers.list(all=True, filters={"name": "prov-bench-"}):
            container.remove(force=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(MANUAL_TAG, force=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
