"""'Outside' hosts for the egress tests and the benchmark.

Each lives in a network namespace of its own: a container Docker gives no
network, joined by a veth pair to a bridge of this machine's that is made for
the run. A gate reaches one as it reaches any host out there, through the
engine host, never across prov's outside network, whose containers cannot
reach one another. The addresses are chosen before any server starts, so a
user's egress-allow file can name them: its address lines (egress.user_hosts)
are how the proxy finds them, as it finds an internal mirror. Needs root.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import docker
import docker.models.containers

ADDRESS_LABEL = "prov.test.address"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class OutsideLan:
    """A /24 of this run's own (in 10.220-249.x, clear of prov's 10.213/16), its
    bridge made on first use and removed by close()."""

    def __init__(self) -> None:
        prefix = f"10.{220 + secrets.randbelow(30)}.{secrets.randbelow(256)}"
        self.prefix = prefix
        self.net, self.gateway = f"{prefix}.0/24", f"{prefix}.1"
        self.bridge = f"prvo{secrets.token_hex(5)}"  # an interface name: at most 15 bytes

    def address(self, host: int) -> str:
        return f"{self.prefix}.{host}"

    def _ensure(self) -> None:
        if Path(f"/sys/class/net/{self.bridge}").exists():
            return
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)

    def start(
        self,
        client: docker.DockerClient,
        image: str,
        command: list[str],
        address: str,
        labels: dict[str, str],
        binds: dict[str, dict[str, str]] | None = None,
    ) -> docker.models.containers.Container:
        """A started server at `address` (one of this LAN's), routed through
        this machine. Removing the container removes its namespace and veth."""
        self._ensure()
        api = client.api
        created = api.create_container(
            image,
            command,
            entrypoint=[],
            labels={**labels, ADDRESS_LABEL: address},
            volumes=[b["bind"] for b in (binds or {}).values()],
            host_config=api.create_host_config(network_mode="none", binds=binds or {}),
        )
        container = client.containers.get(created["Id"])
        try:
            container.start()
            container.reload()
            pid = str(container.attrs["State"]["Pid"])
            here, there = f"pvh{secrets.token_hex(5)}", f"pvc{secrets.token_hex(5)}"
            _run("ip", "link", "add", here, "type", "veth", "peer", "name", there)
            _run("ip", "link", "set", there, "netns", pid)
            _run("ip", "link", "set", here, "master", self.bridge, "up")
            inside = ("nsenter", "-t", pid, "-n", "ip")
            _run(*inside, "link", "set", there, "name", "eth0")
            _run(*inside, "addr", "add", f"{address}/24", "dev", "eth0")
            _run(*inside, "link", "set", "eth0", "up")
            _run(*inside, "route", "add", "default", "via", self.gateway)
        except BaseException:
            container.remove(force=True)
            raise
        return container


def address_of(container: docker.models.containers.Container) -> str:
    return str(container.labels[ADDRESS_LABEL])
