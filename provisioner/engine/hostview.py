"""The engine host's view of the network: which TCP ports something listens
on, and which IPv4 routes it has (a new environment's subnet must overlap
none). On this machine the kernel is asked directly; on a remote engine host
prov reads its /proc files over the SSH link, once per `up`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from provisioner import netplan, ports

ROUTES_MARK = "--- prov routes ---"
# One round trip over the link: every TCP listener, then the routing table.
REMOTE_COMMAND = (
    f"cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; echo '{ROUTES_MARK}'; cat /proc/net/route"
)
# /proc/net/tcp's `st` column: a listener, and a socket bound but not yet
# listening (TCP_CLOSE); either keeps Docker from binding the port.
TAKEN = ("0A", "07")


@dataclass(frozen=True)
class HostView:
    routes: tuple[ipaddress.IPv4Network, ...]
    listening: frozenset[int] | None = None  # None: this machine (asked by binding)
    _bindable: Callable[[str, int], bool] = field(default=ports.port_bindable, repr=False)

    def bindable(self, bind: str, port: int) -> bool:
        """Whether nothing listens on `port` there (on any address, for a remote host:
        a listener on 0.0.0.0 takes the port on every address)."""
        if self.listening is None:
            return self._bindable(bind, port)
        return port not in self.listening


def local() -> HostView:
    return HostView(tuple(netplan.host_routes()))


def parse_listening(text: str) -> frozenset[int]:
    """Local ports listened on or bound in /proc/net/tcp{,6} text (hex ADDR:PORT)."""
    found = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] not in TAKEN or ":" not in fields[1]:
            continue
        try:
            found.add(int(fields[1].rsplit(":", 1)[1], 16))
        except ValueError:
            continue
    return frozenset(found)


def parse_remote(text: str) -> HostView:
    """REMOTE_COMMAND's output."""
    tcp, _, route = text.partition(ROUTES_MARK)
    return HostView(tuple(netplan.parse_route_table(route.strip("\n"))), parse_listening(tcp))
