"""Readiness: running -> SSH banner -> pinned host key -> key login -> `true` exits 0.

Docker's userland proxy accepts TCP connections before sshd listens, so an
open port proves nothing; only a full login that runs a command does. Waits
poll with short capped backoff and jitter (no fixed sleeps) and stop at once
when the container is gone.
"""

from __future__ import annotations

import base64
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from provisioner.errors import NotReady
from provisioner.keys import PublicKey
from provisioner.plan import SshTarget

# paramiko logs every refused or banner-less attempt with a traceback from its
# transport thread; waiting on purpose makes those expected, not news.
_paramiko_log = logging.getLogger("paramiko")
_paramiko_log.addHandler(logging.NullHandler())
_paramiko_log.propagate = False


class Fatal(Exception):
    """A readiness failure that waiting will not fix."""


class Transient(Exception):
    """Not ready yet; try again."""


def _load_private_key(identity: Path) -> paramiko.PKey | None:
    if identity.suffix == ".pub" or not identity.exists():
        return None
    try:
        return paramiko.PKey.from_path(str(identity))
    except paramiko.PasswordRequiredException:
        return None  # encrypted: the agent is the way in


def _client_for(target: SshTarget) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    key = paramiko.PKey.from_type_string(
        target.host_key.key_type, base64.b64decode(target.host_key.blob_b64)
    )
    client.get_host_keys().add(f"[{target.host}]:{target.port}", target.host_key.key_type, key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def run_command(target: SshTarget, command: str, timeout: float = 10.0) -> tuple[int, str]:
    """Log in with the pinned host key and run `command`; (exit status, output)."""
    client = _client_for(target)
    pkey = _load_private_key(target.identity_file)
    try:
        client.connect(
            target.host,
            target.port,
            username=target.user,
            pkey=pkey,
            allow_agent=pkey is None,
            look_for_keys=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
        _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
        output = stdout.read().decode(errors="replace") + stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), output
    except paramiko.BadHostKeyException as exc:
        raise Fatal(
            f"the server presented host key {_fingerprint(exc.key)}, not the pinned "
            f"{target.host_key.fingerprint}: something else answers on port {target.port}"
        ) from exc
    except paramiko.AuthenticationException as exc:
        raise Fatal(f"key login as {target.user} was refused ({exc})") from exc
    except TimeoutError as exc:
        raise Transient("timed out waiting for the server") from exc
    except ConnectionRefusedError as exc:
        raise Transient("connection refused") from exc
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        raise Transient("connection refused") from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        # Includes "Error reading SSH protocol banner": the proxy accepted
        # the connection but sshd is not listening yet.
        raise Transient(f"no SSH session yet ({exc or type(exc).__name__})") from exc
    finally:
        client.close()


def _fingerprint(key: paramiko.PKey) -> str:
    return PublicKey(key.get_name(), key.get_base64()).fingerprint


ContainerProbe = Callable[[], str | None]  # None while running, else what went wrong


@dataclass(frozen=True)
class Deadline:
    seconds: float
    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(seconds, time.monotonic() + seconds)

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())


def read_banner(host: str, port: int, timeout: float = 5.0) -> str:
    """The server's identification line; Transient until sshd really answers."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 512:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise Transient(f"cannot connect ({exc.strerror or exc})") from exc
    line = data.split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line.startswith("SSH-"):
        # Docker's proxy accepts and closes while nothing listens inside.
        raise Transient("connection accepted but no SSH banner yet")
    return line


def _poll(
    attempt: Callable[[], None],
    probe: ContainerProbe,
    deadline: Deadline,
    on_wait: Callable[[str], None],
    logs: Callable[[], str],
) -> None:
    """Retry `attempt` on Transient until it passes; fail at once on Fatal or a dead container."""
    delay = 0.02
    last = "nothing tried yet"
    while True:
        problem = probe()
        if problem is not None:
            raise NotReady(
                "The container stopped while prov waited for SSH",
                problem,
                "read the container's last log lines below; `prov up` again after fixing it.",
                log_tail=logs(),
            )
        try:
            attempt()
            return
        except Transient as exc:
            last = str(exc)
        except Fatal as exc:
            raise NotReady(
                "SSH into the container failed",
                str(exc).capitalize() + ".",
                "run `prov ssh-test NAME` for details, or `prov down NAME` and `prov up` again.",
                log_tail=logs(),
            ) from exc
        left = deadline.left()
        if left <= 0:
            raise NotReady(
                f"SSH did not become ready within {deadline.seconds:g} s",
                f"Last attempt: {last}.",
                "raise --timeout on a slow machine, or read the container's log below.",
                log_tail=logs(),
            )
        on_wait(f"waiting for SSH: {last}")
        # Short, capped steps: sshd is usually up within a few hundred ms,
        # and a long sleep would be pure added latency.
        time.sleep(min(delay * (1 + random.random() / 2), left))  # noqa: S311 - jitter, not crypto
        delay = min(delay * 1.5, 0.25)


def wait_banner(
    target: SshTarget,
    probe: ContainerProbe,
    deadline: Deadline,
    on_wait: Callable[[str], None],
    logs: Callable[[], str],
) -> None:
    """Block until sshd itself (not Docker's proxy) sends its banner."""

    def attempt() -> None:
        read_banner(target.host, target.port)

    _poll(attempt, probe, deadline, on_wait, logs)


def wait_login(
    target: SshTarget,
    probe: ContainerProbe,
    deadline: Deadline,
    on_wait: Callable[[str], None],
    logs: Callable[[], str],
) -> None:
    """Block until key login with the pinned host key runs `true` with exit 0."""

    def attempt() -> None:
        status, output = run_command(target, "true", timeout=5.0)
        if status != 0:
            raise Transient(f"`true` exited {status}: {output.strip()[:200]}")

    _poll(attempt, probe, deadline, on_wait, logs)
