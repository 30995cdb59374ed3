"""Fixtures for tests against a real Docker engine, sshd, ssh client and tmux.

Every test runs prov as a subprocess with its own HOME and PROV_HOME, so the
user's real ~/.ssh and prov state are never touched. Containers carry prov's
labels and a per-session name prefix; all of them are removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import docker.models.containers
import docker.models.volumes
import docker.types
import pytest

from provisioner.config import ProvPaths
from provisioner.plan import home_id
from tests.integration.outside import OutsideLan, address_of

PROJECT_UID = 1234
PROJECT_GID = 1235


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"integration tests need a Docker engine (run scripts/setup.sh): {exc}")
    return client


@pytest.fixture(scope="session", autouse=True)
def _no_slots_left(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[None]:
    """Slots the tests' PROV_HOMEs made (every one lives under the session's
    base temp dir), removed at the end, with any filler still at work."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    subprocess.run(["pkill", "-f", f"provisioner.slots {base}"], check=False)
    remove_slots(docker_client, base)


def remove_slots(docker_client: docker.DockerClient, under: str) -> None:
    """Slots of PROV_HOMEs under `under` (by their mounted dir): the proxies,
    then the environments made on their networks, then the networks."""
    ids = []
    for container in docker_client.containers.list(
        all=True, filters={"label": ["prov.managed=true", "prov.role=slot"]}
    ):
        if any(str(m.get("Source", "")).startswith(under) for m in container.attrs["Mounts"]):
            ids.append(container.labels["prov.slot"])
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
    # A claimed slot whose proxy was made again (not a slot any more) is known
    # by its files only: its network goes too.
    for marker in Path(under).glob("**/slots/*"):
        ids.append(marker.name.split(".")[0])
    networks = [
        n
        for slot_id in dict.fromkeys(ids)
        for n in docker_client.networks.list(names=[f"prov-slot-{slot_id}-net"])
    ]
    # A slot an environment claimed whose files a sweep has forgotten (its
    # network was that environment's, whose container a test removed by
    # force): known by the PROV_HOME on its label only.
    homes = {home_id(ProvPaths(d.parent)) for d in Path(under).glob("**/slots") if d.is_dir()}
    for network in docker_client.networks.list(
        filters={"label": ["prov.managed=true", "prov.role=slot"]}
    ):
        if (network.attrs.get("Labels") or {}).get("prov.home") in homes:
            networks.append(network)
    for network in {n.id: n for n in networks}.values():
        with contextlib.suppress(docker.errors.NotFound):
            network.reload()
            for attached in network.containers:
                with contextlib.suppress(docker.errors.NotFound):
                    attached.remove(force=True)
            network.remove()


def env_network(docker_client: docker.DockerClient, alias: str) -> str:
    """The network an environment's container is on (prov-NAME-net, or the
    network of the slot it was made on)."""
    return str(docker_client.containers.get(alias).labels["prov.network"].split(" ")[0])


@dataclass
class Prov:
    """Runs the prov CLI with an isolated HOME / PROV_HOME."""

    home: Path
    prov_home: Path
    projects: Path
    prefix: str
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self,
        *args: str,
        check: bool = False,
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "provisioner", *args],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"prov {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def up(self, name: str, *args: str) -> dict[str, object]:
        result = self.run("up", name, "--json", *args, check=True)
        return dict(json.loads(result.stdout))

    def name(self, label: str) -> str:
        return f"{self.prefix}-{label}"

    def project(self, name: str) -> Path:
        path = self.projects / name
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, PROJECT_UID, PROJECT_GID)
        return path

    def guide_ssh(
        self, port: int, identity: str, *command: str, host: str = "localhost"
    ) -> subprocess.CompletedProcess[str]:
        """The guide's `ssh -p PORT -i KEY agent@localhost`, checking the host key
        strictly against this home's known_hosts (ssh would otherwise read the
        passwd entry's home), over a connection of its own."""
        return subprocess.run(
            [
                "ssh",
                "-p",
                str(port),
                "-i",
                identity,
                "-o",
                "BatchMode=yes",
                "-o",
                f"UserKnownHostsFile={self.home / '.ssh' / 'known_hosts'}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "ControlPath=none",
                f"agent@{host}",
                *command,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def ssh(
        self, alias: str, *command: str, timeout: float = 30, options: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """The system ssh client, through the user's config (which Includes prov's)."""
        return subprocess.run(
            [
                "ssh",
                "-F",
                str(self.home / ".ssh" / "config"),
                "-o",
                "BatchMode=yes",
                *options,
                "--",
                alias,
                *command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture(scope="session")
def prov(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Prov]:
    root = tmp_path_factory.mktemp("prov")
    home = root / "home"
    home.mkdir()
    # Agent credentials as a user has them: Codex's dir and Claude's JSON file
    # exist, Gemini's do not (they must not be created by Docker).
    (home / ".codex").mkdir()
    (home / ".codex" / "auth.json").write_text(
        '{"tokens": {"refresh_token": "t0", "account_id": "acc"}, '
        '"last_refresh": "2026-01-01T00:00:00Z"}'
    )
    (home / ".claude.json").write_text("{}")
    for path in (home / ".codex", home / ".codex" / "auth.json", home / ".claude.json"):
        os.chown(path, PROJECT_UID, PROJECT_GID)
    projects = root / "projects"
    projects.mkdir()
    # The tests' 'outside' servers' addresses are private: the proxy refuses them
    # unless the user allows their range, as this user does (the tests of that
    # refusal use a home without it).
    allow_test_servers(home)
    env = {
        **os.environ,
        "HOME": str(home),
        "PROV_HOME": str(root / "ph"),
        "NTM_PROJECTS_BASE": str(projects),
        # Agent CLIs take minutes to install; only tests marked slow ask for them.
        "PROV_AGENTS": "none",
        # Slots as every user has them (the default number): new environments
        # in the default containment claim one, the others make their own gate.
        # NTM's config is this test home's, never the user's.
        "NTM_CONFIG": str(home / ".config" / "ntm" / "config.toml"),
        # The runs are served by prov's resident, as a user's are; the one the
        # tests start leaves two minutes after their last run, not thirty.
        "PROV_RESIDENT_IDLE": "120",
    }
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "XDG_CONFIG_HOME"):
        env.pop(key, None)
    harness = Prov(home, root / "ph", projects, f"t{secrets.token_hex(2)}", env)
    yield harness
    # A background slot filler of this home first, so that it makes no more.
    subprocess.run(["pkill", "-f", f"provisioner.slots {root}"], check=False)
    remove_slots(docker_client, str(root))
    for container in docker_client.containers.list(
        all=True, filters={"label": "prov.managed=true"}
    ):
        if container.labels.get("prov.name", "").startswith(harness.prefix):
            container.remove(force=True)
    for network in docker_client.networks.list(filters={"label": "prov.managed=true"}):
        if network.attrs.get("Labels", {}).get("prov.name", "").startswith(harness.prefix):
            network.remove()
    remove_volumes(docker_client, harness.prefix)
    # prov-egress stays: it is prov's shared network, and stopped environments
    # of the user's own may still refer to it.
    subprocess.run(["pkill", "-f", f"{root}/ph/cm/"], check=False)
    subprocess.run(["pkill", "-f", f"provisioner.keeper {root}"], check=False)


def _unmount_disk(client: docker.DockerClient, volume: docker.models.volumes.Volume) -> None:
    """prov's own release step (homedisk's script), run on that engine in a
    container of its own: its mounts may be in a mount namespace of their own
    (a remote test host's), and the test leaves prov's disk keeper alone."""
    from provisioner import homedisk

    image = (volume.attrs.get("Labels") or {}).get(homedisk.IMAGE_LABEL, "")
    try:
        client.images.get(image)
    except docker.errors.APIError:  # the test removed it (--from, a project layer): any of prov's
        image = next(iter(t for i in client.images.list("prov-env") for t in i.tags), image)
    with contextlib.suppress(docker.errors.APIError):
        client.containers.run(
            image,
            ["release", "/disk"],
            entrypoint=["sh", "-c", homedisk.script(), "prov-disk"],
            user="0",
            remove=True,
            network_mode="none",
            cap_drop=["ALL"],
            cap_add=["SYS_ADMIN"],
            security_opt=["apparmor=unconfined"],
            mounts=[
                docker.types.Mount(
                    "/disk", volume.attrs["Mountpoint"], type="bind", propagation="rshared"
                )
            ],
        )


def remove_volumes(docker_client: docker.DockerClient, prefix: str) -> None:
    """The volumes of environments named `prefix`*: a home's own file system
    (homedisk) unmounted from this machine first, after its home volume."""
    ours = [
        v
        for v in docker_client.volumes.list(filters={"label": "prov.managed=true"})
        if (v.attrs.get("Labels") or {}).get("prov.name", "").startswith(prefix)
    ]
    disks = [v for v in ours if v.name.endswith("-disk")]
    for volume in [v for v in ours if v not in disks] + disks:
        if volume in disks:
            _unmount_disk(docker_client, volume)
            if _mounted(volume):  # removing it now would delete its image and keep the mount
                continue
        with contextlib.suppress(docker.errors.APIError):
            volume.remove(force=True)


def _mounted(volume: docker.models.volumes.Volume) -> bool:
    """Whether a disk volume's file system is mounted, as this machine sees it
    (a remote test host's mounts are not here: False)."""
    point = f"{volume.attrs['Mountpoint']}/{'mnt'}"
    return any(
        line.split()[4] == point for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prov_containers(client: docker.DockerClient, name: str) -> list[str]:
    return [
        c.name
        for c in client.containers.list(all=True, filters={"name": f"prov-{name}"})
        if c.name == f"prov-{name}"
    ]


@pytest.fixture(scope="session")
def base_image() -> str:
    """The base image prov uses here: pulled, or made with debootstrap where no
    registry answers (tests must not assume either)."""
    from provisioner.config import DEFAULT_BASE_IMAGE
    from provisioner.engine import Engine
    from provisioner.image import ensure_base

    ref, _ = ensure_base(Engine.connect(), DEFAULT_BASE_IMAGE, print, lambda _: None)
    return ref


@pytest.fixture(scope="session")
def env_image() -> str:
    """prov's environment image (sshd, python3, ...), built if need be; test servers
    run on it, so they need no registry."""
    from provisioner.config import DEFAULT_BASE_IMAGE
    from provisioner.engine import Engine
    from provisioner.image import ImageRequest, ensure_image

    request = ImageRequest(base_image=DEFAULT_BASE_IMAGE)
    return ensure_image(Engine.connect(), request, print, lambda _: None).tag


EGRESS_NET = "prov-outside"  # prov's outside network (spec.EGRESS_NETWORK)
# Names of this test session's own: two sessions on one engine (CI and a
# developer's run) each reach their own servers.
TEST_DOMAIN = f"prov-test-{secrets.token_hex(3)}"
ALLOWED_DOMAIN, DENIED_DOMAIN = f"allowed.{TEST_DOMAIN}", f"denied.{TEST_DOMAIN}"
SITE, DENIED_SITE = f"www.{ALLOWED_DOMAIN}", f"www.{DENIED_DOMAIN}"

# The tests' 'outside' servers (outside.py): each in a network namespace of
# its own, reached through this machine, at an address of this session's,
# fixed before any server starts so that every test user's egress-allow file
# can name it: its address lines are the tests' resolver.
LAN = OutsideLan()
OUTSIDE_NET = LAN.net
TEST_HOSTS = {  # address -> the names it has
    LAN.address(10): ("allowed.prov-test", "denied.prov-test"),  # test_bounds' own names
    LAN.address(11): (ALLOWED_DOMAIN, DENIED_DOMAIN),
    LAN.address(20): (SITE, DENIED_SITE),
}
server_address = address_of


def resolver_lines() -> str:
    """The tests' resolver, as lines of a user's egress-allow file."""
    return "".join(f"{address} {' '.join(names)}\n" for address, names in TEST_HOSTS.items())


def allow_test_servers(home: Path) -> None:
    """Give `home` the user's egress-allow file: the tests' resolver, and the
    range of their outside servers, whose addresses are private, which the
    proxy refuses unless a user allows their range. Every test home whose
    environments reach those servers needs it."""
    allow_file = home / ".config" / "prov" / "egress-allow"
    allow_file.parent.mkdir(parents=True, exist_ok=True)
    allow_file.write_text(f"# the tests' outside servers\n{OUTSIDE_NET}\n{resolver_lines()}")


def pytest_sessionfinish() -> None:
    LAN.close()


def start_outside_server(
    client: docker.DockerClient,
    image: str,
    command: list[str],
    aliases: list[str],
    label: str,
    binds: dict[str, dict[str, str]] | None = None,
    listening: tuple[int, ...] = (),
) -> docker.models.containers.Container:
    """A started 'outside' server known by `aliases` (one TEST_HOSTS entry's
    names), at that entry's address; with `listening`, once those ports take
    a connection (a server still making its keys would refuse a test's first try)."""
    address = next(a for a, names in TEST_HOSTS.items() if set(aliases) <= set(names))
    container = LAN.start(client, image, command, address, {"prov.test": label}, binds)
    deadline = time.monotonic() + 60
    for port in listening:
        while True:
            try:
                with socket.create_connection((address, port), timeout=1):
                    break
            except OSError:
                container.reload()
                if container.status != "running" or time.monotonic() > deadline:
                    logs = container.logs().decode(errors="replace")
                    container.remove(force=True)
                    raise AssertionError(f"{label} never listened on {port}: {logs}") from None
                threading.Event().wait(0.05)
    return container


@dataclass(frozen=True)
class HttpsSite:
    """The test HTTPS site (see tlssite): its names, the CA that signed it, and
    what it has been asked so far."""

    url: str
    ca: Path
    container: docker.models.containers.Container

    def requests(self) -> str:
        return self.container.logs().decode(errors="replace")

    def get(self, path: str) -> str:
        """GET from this machine (the site's address, its name for TLS), as a
        CLI on the host would ask the real endpoint."""
        import http.client
        import ssl

        address = server_address(self.container)
        context = ssl.create_default_context(cafile=str(self.ca))
        conn = http.client.HTTPSConnection(SITE, 443, context=context, timeout=10)
        conn.sock = context.wrap_socket(
            socket.create_connection((address, 443), timeout=10), server_hostname=SITE
        )
        conn.request("GET", path, headers={"Host": SITE})
        return conn.getresponse().read().decode()


@pytest.fixture(scope="session")
def https_site(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, env_image: str
) -> Iterator[HttpsSite]:
    """An 'outside' HTTPS server (start_outside_server), as SITE (a subdomain of
    the name the egress tests allow) and DENIED_SITE; it runs on prov's own image
    (python3 is in it), so it needs no registry."""
    from tests.integration import tlssite

    root = tmp_path_factory.mktemp("site")
    ca = tlssite.build(root, [SITE, DENIED_SITE])
    container = start_outside_server(
        docker_client,
        env_image,
        ["python3", "/srv/server.py"],
        [SITE, DENIED_SITE],
        "https-site",
        {str(root): {"bind": "/srv", "mode": "ro"}},
    )
    try:
        for _ in range(100):
            if b"READY" in container.logs():
                break
            container.reload()
            assert container.status == "running", container.logs().decode()
            threading.Event().wait(0.1)
        yield HttpsSite(f"https://{SITE}", ca, container)
    finally:
        container.remove(force=True)


def files_holding(container: docker.models.containers.Container, values: tuple[str, ...]) -> str:
    """Every file inside `container` (as root; not /proc, /sys, /dev) that holds
    one of `values`, then grep's exit status ("grep exit 1": none). The values
    come base64-encoded into a file grep skips, so no command line holds one."""
    import base64

    patterns = base64.b64encode("\n".join(values).encode()).decode()
    return container.exec_run(
        [
            "sh",
            "-c",
            f"echo {patterns} | base64 -d > /dev/shm/p && grep -rsIlF -f /dev/shm/p / "
            "--exclude-dir=proc --exclude-dir=sys --exclude-dir=dev; echo grep exit $?",
        ],
        user="root",
    ).output.decode(errors="replace")
