"""How prov's requests reach an Engine API: transports.

- SocketTransport: plain HTTP over a Unix socket with the standard library's
  http.client (a local engine, or a remote one whose socket an SshLink
  forwards to a local path). Importing docker-py costs ~50 ms more than this.
- DockerPyTransport: docker-py's session, for engine addresses prov does not
  reach itself (tcp://, TLS).

One connection per request, so threads (`prov up a b c`) never share one.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from provisioner.engine import targets
from provisioner.errors import DockerUnavailable

if TYPE_CHECKING:
    import docker

API_TIMEOUT = 120.0

START_HINT = (
    "start dockerd (e.g. `sudo scripts/start-dockerd.sh`), check that `docker info` works "
    "for this user, or set DOCKER_HOST."
)


@dataclass(frozen=True)
class Call:
    """One Engine API request; `path` has no version prefix."""

    method: str
    path: str
    params: dict[str, str] | None = None
    body: bytes | None = field(default=None, repr=False)
    content_type: str = "application/json"
    timeout: float = API_TIMEOUT

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type} if self.body is not None else {}


class Transport(Protocol):
    def request(self, call: Call) -> tuple[int, bytes]:
        """Send `call`; (HTTP status, body)."""
        ...


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (the Engine API's own)."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class SocketTransport:
    """The Engine API over a local Unix socket; one connection per request, so
    threads (`prov up a b c`) never share one."""

    def __init__(self, socket_path: str, target: targets.EngineTarget | None = None) -> None:
        self.socket_path = socket_path
        self._prefix = ""
        # Where the socket came from (a context, DOCKER_HOST...), for errors.
        self._origin = (
            f" ({target.source})" if target and target.source != targets.DEFAULT_SOURCE else ""
        )

    def negotiate(self, timeout: float = 10.0) -> None:
        """Ping the engine and speak the API version it reports (as the docker CLI does)."""
        status, _body, headers = self._send(Call("GET", "/_ping", timeout=timeout))
        if status != 200:
            raise DockerUnavailable(
                "The Docker engine does not answer its health check",
                f"GET /_ping on {self.socket_path}{self._origin} returned HTTP {status}.",
                START_HINT,
            )
        version = headers.get("Api-Version", "")
        self._prefix = f"/v{version}" if version else ""

    def request(self, call: Call) -> tuple[int, bytes]:
        status, data, _headers = self._send(call, self._prefix)
        return status, data

    def _send(self, call: Call, prefix: str = "") -> tuple[int, bytes, http.client.HTTPMessage]:
        query = "?" + urllib.parse.urlencode(call.params) if call.params else ""
        conn = UnixHTTPConnection(self.socket_path, call.timeout)
        try:
            conn.request(call.method, prefix + call.path + query, call.body, call.headers)
            response = conn.getresponse()
            return response.status, response.read(), response.headers
        except PermissionError as exc:
            raise DockerUnavailable(
                "Cannot reach the Docker engine: permission denied",
                f"Connecting to {self.socket_path}{self._origin} failed: {exc.strerror}.",
                "run prov as a user in the `docker` group (`sudo usermod -aG docker $USER`, "
                "then log in again), or as root.",
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise DockerUnavailable(
                "Cannot reach the Docker engine",
                f"{call.method} {call.path} on {self.socket_path}{self._origin} failed: "
                f"{getattr(exc, 'strerror', None) or exc or type(exc).__name__}.",
                START_HINT,
            ) from None
        finally:
            conn.close()


class DockerPyTransport:
    """The Engine API through docker-py's session: any DOCKER_HOST it supports."""

    def __init__(self, client: docker.DockerClient) -> None:
        self._api = client.api

    def request(self, call: Call) -> tuple[int, bytes]:
        import requests

        url = f"{self._api.base_url}/v{self._api.api_version}{call.path}"
        try:
            response = self._api.request(
                call.method,
                url,
                params=call.params,
                data=call.body,
                headers=call.headers,
                timeout=call.timeout,
            )
        except requests.RequestException as exc:
            raise DockerUnavailable(
                "Cannot reach the Docker engine",
                f"{call.method} {call.path} at {self._api.base_url} failed: {exc}.",
                START_HINT,
            ) from exc
        return response.status_code, response.content


def import_docker(host: str = "") -> None:
    """Import docker-py without the paramiko it loads for ssh:// targets.

    docker-py treats paramiko as optional (ImportError is its signal), and the
    import costs ~90 ms; prov's engine is local unless it is an ssh:// one.
    """
    if "docker" in sys.modules:
        return
    hide = not (host.startswith("ssh://") or "paramiko" in sys.modules)
    if hide:
        sys.modules["paramiko"] = None  # type: ignore[assignment]
    try:
        import docker  # noqa: F401
    finally:
        if hide:
            del sys.modules["paramiko"]


def docker_client(target: targets.EngineTarget) -> docker.DockerClient:
    """docker-py on the resolved engine (from DOCKER_HOST: with its TLS variables)."""
    import_docker(target.host)
    import docker

    try:
        if target.source == "DOCKER_HOST" and os.environ.get("DOCKER_HOST") == target.host:
            client = docker.from_env(timeout=int(API_TIMEOUT))
        else:
            client = docker.DockerClient(base_url=target.host, timeout=int(API_TIMEOUT))
        client.ping()
    except Exception as exc:  # docker-py, requests, socket and paramiko errors alike
        detail = str(exc) or type(exc).__name__
        raise DockerUnavailable(
            "Cannot reach the Docker engine",
            f"The engine is {target.describe()}; connecting failed: {detail}",
            START_HINT,
        ) from None
    return client
