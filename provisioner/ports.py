"""Which host port an environment that publishes SSH gets (`--egress open`, or
`--port`/`--bind` under containment, where its gate carries the port).

Pure apart from one thing: whether a port is free is asked of the kernel by
binding a test socket (`port_bindable`), which callers can replace in tests.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable

from provisioner.config import DEFAULT_FIRST_PORT
from provisioner.errors import ConflictError, UsageError

PORT_RANGE = 2000


def port_bindable(bind: str, port: int) -> bool:
    """Whether nothing listens on `bind`:`port` (a test bind, closed at once)."""
    family = socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UsageError(
                    f"--bind {bind} is not an address of this machine",
                    f"Binding a socket to it failed: {exc.strerror}.",
                    "pass one of this machine's addresses (`ip -brief addr`), or leave "
                    "--bind out to publish on 127.0.0.1.",
                ) from None
            raise UsageError(
                f"Cannot check port {port} on {bind}",
                f"Binding a test socket failed: {exc.strerror or exc}.",
                "pick another --bind or --port.",
            ) from None
    return True


def choose_port(
    reserved: set[int],
    asked: int | None,
    bind: str,
    own: Iterable[int] = (),
    recorded: int | None = None,
    bindable: Callable[[str, int], bool] = port_bindable,
) -> int:
    """The port for an environment: `asked` (--port) unless another container
    holds it; else the port it had (`recorded`) if still free; else the first
    free one from DEFAULT_FIRST_PORT. `reserved`: host ports Docker holds for
    containers (and those handed out earlier in this run); `own`: ports this
    environment's own container holds, which it may keep."""
    reserved = set(reserved) - set(own)
    if asked is not None:
        if asked in reserved:
            raise ConflictError(
                f"Port {asked} is already reserved by another Docker container",
                "Docker publishes it for a container prov is not creating now (it may be "
                "stopped, and would clash when started).",
                "pick another --port, or leave --port out to let prov choose a free one.",
            )
        return asked
    if recorded and recorded not in reserved:
        return recorded
    for candidate in range(DEFAULT_FIRST_PORT, DEFAULT_FIRST_PORT + PORT_RANGE):
        if candidate not in reserved and bindable(bind, candidate):
            return candidate
    raise ConflictError(
        "No free port found",
        f"Tried {DEFAULT_FIRST_PORT}-{DEFAULT_FIRST_PORT + PORT_RANGE - 1} on {bind}.",
        "pass --port.",
    )
