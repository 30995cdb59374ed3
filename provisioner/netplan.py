"""Pure network planning: each environment's own small subnet and its addresses.

Every environment gets a network of its own, so no environment reaches
another's sshd or services. Docker's default address pools hold about thirty
networks (a /16 or /20 each), far fewer than the environments people run, so
prov hands out /28s (gateway .1, environment .2, egress proxy .3) from its own
pool, skipping subnets that overlap a Docker network or a route of this
machine. The pool is 10.213.0.0/16 unless PROV_SUBNET_POOL says otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass

from provisioner.errors import ConfigError, ConflictError

DEFAULT_POOL = "10.213.0.0/16"
SUBNET_PREFIX = 28


@dataclass(frozen=True)
class Addresses:
    subnet: ipaddress.IPv4Network
    gateway: str  # this machine, on the environment's bridge
    env: str
    proxy: str


def addresses(subnet: ipaddress.IPv4Network) -> Addresses:
    hosts = list(subnet.hosts())
    return Addresses(subnet, str(hosts[0]), str(hosts[1]), str(hosts[2]))


def pool() -> ipaddress.IPv4Network:
    text = os.environ.get("PROV_SUBNET_POOL", DEFAULT_POOL)
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(
            f"Invalid PROV_SUBNET_POOL {text!r}",
            str(exc),
            f"set it to an IPv4 network no larger than a /{SUBNET_PREFIX} per environment, "
            f"e.g. {DEFAULT_POOL}, or unset it.",
        ) from None
    if net.prefixlen > SUBNET_PREFIX:
        raise ConfigError(
            f"PROV_SUBNET_POOL {text} is too small",
            f"Each environment needs a /{SUBNET_PREFIX}.",
            f"use a /{SUBNET_PREFIX} or larger, e.g. {DEFAULT_POOL}.",
        )
    return net


def parse_subnets(texts: Iterable[str]) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks among Docker's subnet strings (IPv6 ones and junk left out)."""
    nets = []
    for text in texts:
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(text, strict=False))
    return nets


def choose_subnet(
    used: Iterable[ipaddress.IPv4Network], pool_net: ipaddress.IPv4Network
) -> ipaddress.IPv4Network:
    """The first /28 of `pool_net` that overlaps nothing in `used`."""
    taken = sorted(set(used), key=lambda n: (int(n.network_address), n.prefixlen))
    for candidate in pool_net.subnets(new_prefix=SUBNET_PREFIX):
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise ConflictError(
        f"No free /{SUBNET_PREFIX} left in {pool_net} for another environment's network",
        "Every subnet there overlaps a Docker network or a route of this machine.",
        "remove environments you no longer need (`prov rm`), or set PROV_SUBNET_POOL to a "
        "larger free range.",
    )


def parse_route_table(text: str) -> list[ipaddress.IPv4Network]:
    """The destinations of /proc/net/route (little-endian hex), default route excluded."""
    nets = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest = ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(fields[1]), "little"))
            mask = ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(fields[7]), "little"))
        except ValueError:
            continue
        if int(mask) == 0:
            continue
        nets.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
    return nets


def host_routes() -> list[ipaddress.IPv4Network]:
    try:
        with open("/proc/net/route") as handle:  # noqa: PTH123 - a proc file, read once
            return parse_route_table(handle.read())
    except OSError:
        return []
