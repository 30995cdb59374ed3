"""Readiness: running -> SSH banner -> pinned host key -> key login -> `true` exits 0.

Docker's userland proxy accepts TCP connections before sshd listens, so an
open port proves nothing; only a full login that runs a command does, and
`prov up` does it with the system OpenSSH client through the alias, the way
NTM will connect (and leaving its ControlMaster for NTM to reuse). Waits poll
with short capped backoff and jitter (no fixed sleeps) and stop at once when
the container is gone. No paramiko here: its import and its handshake would
cost every `up` ~0.2 s of CPU; `prov ssh-test` uses it as a second client.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provisioner import openssh
from provisioner.engine import Engine
from provisioner.engine.site import Site
from provisioner.errors import NotReady
from provisioner.plan import SshTarget, connect_host
from provisioner.progress import Reporter

# How often to try sshd's port while waiting for its banner (a loopback connect).
BANNER_POLL = 0.005
BANNER_POLL_CROWDED = 0.05


class Fatal(Exception):
    """A readiness failure that waiting will not fix."""


class Transient(Exception):
    """Not ready yet; try again."""


ContainerProbe = Callable[[], str | None]  # None while running, else what went wrong
PROBE_EVERY = 0.2


@dataclass(frozen=True)
class Clock:
    """Time as the waits see it; tests pass a fake one."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


SYSTEM_CLOCK = Clock()


@dataclass(frozen=True)
class Deadline:
    seconds: float
    at: float
    clock: Clock = SYSTEM_CLOCK

    @classmethod
    def after(cls, seconds: float, clock: Clock = SYSTEM_CLOCK) -> Deadline:
        return cls(seconds, clock.now() + seconds, clock)

    def left(self) -> float:
        return max(0.0, self.at - self.clock.now())


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
    max_delay: float = 0.25,
) -> None:
    """Retry `attempt` on Transient until it passes; fail on Fatal, or within
    PROBE_EVERY seconds of the container stopping."""
    clock = deadline.clock
    delay = min(0.02, max_delay)
    last = "nothing tried yet"
    next_probe = float("-inf")
    tried = False
    while True:
        # Asking Docker whether the container still runs costs more than a
        # banner try, so it is asked at most every PROBE_EVERY seconds, and
        # only once a try failed: a first try that passes asks nothing (and
        # does not queue behind other calls on the container, as a read of
        # its files beside the login would make it).
        now = clock.now()
        problem = None
        if tried and now >= next_probe:
            problem = probe()
            next_probe = now + PROBE_EVERY
        if problem is not None:
            raise NotReady(
                "The container stopped while prov waited for SSH",
                problem,
                "read the container's last log lines below; `prov up` again after fixing it.",
                log_tail=logs(),
            )
        tried = True
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
        clock.sleep(min(delay * (1 + random.random() / 2), left))  # noqa: S311 - jitter, not crypto
        delay = min(delay * 1.5, max_delay)


def wait_banner(
    target: SshTarget,
    probe: ContainerProbe,
    deadline: Deadline,
    on_wait: Callable[[str], None],
    logs: Callable[[], str],
    max_delay: float = 0.015,
) -> None:
    """Block until sshd itself (not Docker's proxy) sends its banner; a try
    costs a loopback connect, so poll often: this wait is on every start's
    critical path."""

    def attempt() -> None:
        read_banner(target.host, target.port)

    _poll(attempt, probe, deadline, on_wait, logs, max_delay=max_delay)


# What the OpenSSH client says when waiting longer will not help.
_FATAL_SSH = (
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "Permission denied",
    "Bad configuration option",
    "Too many authentication failures",
    "administratively prohibited",
)


def wait_alias_login(
    config: Path,
    alias: str,
    probe: ContainerProbe,
    deadline: Deadline,
    on_wait: Callable[[str], None],
    logs: Callable[[], str],
    site: Site | None = None,
    project: str | None = None,
) -> None:
    """Block until the system ssh logs in through `alias` (pinned host key, key
    login) and `true` exits 0; `site`: where the engine is (the alias may jump
    through its host, whose log says why a jump failed). With `project`, the
    login's command is the check that the agent may write it (one login, not
    two): NotReady at once if it may not."""
    command = _writable_command(project) if project is not None else "true"

    def attempt() -> None:
        since = site.jump_mark() if site is not None else 0
        code, output = openssh.system_ssh(
            config, alias, command, timeout=max(2.0, min(15.0, deadline.left()))
        )
        if code == 0:
            return
        if code == UNWRITABLE and project is not None:
            raise _unwritable(project, code, output)
        text = " ".join(output.split())[-300:]
        said = site.jump_said(since) if site is not None and code == 255 else ""
        if said:  # the jump's own reason (ssh hides a ProxyCommand's stderr)
            text += f" (the jump through the engine host said: {said})"
        if code == 127:
            raise Fatal(text)
        if "administratively prohibited" in text:
            raise Fatal(
                "the engine host refuses to forward the alias's connection to the "
                "environment (its sshd has AllowTcpForwarding no, or a PermitOpen that "
                f"leaves it out): {text}"
            )
        if code == 255 and any(marker in text for marker in _FATAL_SSH):
            raise Fatal(f"`ssh {alias} true` failed: {text}")
        raise Transient(f"`ssh {alias} true` exited {code}: {text}")

    _poll(attempt, probe, deadline, on_wait, logs)


def container_problem(engine: Engine, container_id: str) -> str | None:
    """None while the container runs, else what Docker says of it."""
    info = engine.state(container_id)
    if info.running:
        return None
    code = f" with code {info.exit_code}" if info.exit_code is not None else ""
    return f"Container status is {info.status!r}{code}."


def recheck_ssh(ssh_config: Path, alias: str, project: str | None = None) -> float:
    """A running, unchanged environment: one login through the alias proves it
    (pinned host key, key login, a command), over the warm connection if any;
    with `project`, that command checks the agent may write it."""
    started = time.monotonic()
    command = _writable_command(project) if project is not None else "true"
    code, output = openssh.system_ssh(ssh_config, alias, command)
    if code == UNWRITABLE and project is not None:
        raise _unwritable(project, code, output)
    if code != 0:
        raise NotReady(
            f"The running environment does not answer through {alias}",
            f"`ssh -F {ssh_config} {alias} true` exited {code}: {output.strip()[-400:]}",
            "run `prov ssh-test NAME` to see which step fails; `prov up --recreate` "
            "replaces the container (keys and host key are kept).",
        )
    return time.monotonic() - started


def await_ssh(
    engine: Engine,
    ssh_config: Path,
    target: SshTarget,
    alias: str,
    container_id: str,
    timeout: float,
    reporter: Reporter,
    poll: float = BANNER_POLL,
    banner: bool = True,
    project: str | None = None,
    after_banner: Callable[[], None] | None = None,
) -> float:
    """Wait until sshd answers (polling its port every `poll` seconds at most)
    and the system ssh logs in through the alias and runs `true` (with
    `project`: the check that the agent may write it); return the seconds it
    took. `banner=False`: the port is not this machine's to poll (a remote
    engine), so only the login through the alias is tried. `after_banner` is
    called once sshd answers (without a banner to poll: before the login),
    for work that may run beside the login."""
    reporter.step("waiting for SSH")
    deadline = Deadline.after(timeout)
    started = time.monotonic()

    def probe() -> str | None:
        return container_problem(engine, container_id)

    def logs() -> str:
        return engine.logs_tail(container_id)

    if banner:
        wait_banner(target, probe, deadline, reporter.detail, logs, poll)
    if after_banner is not None:
        after_banner()
    wait_alias_login(
        ssh_config, alias, probe, deadline, reporter.detail, logs, engine.site, project
    )
    return time.monotonic() - started


def wait_listening(
    host: str,
    port: int,
    timeout: float,
    what: str,
    logs: Callable[[], str],
    clock: Clock = SYSTEM_CLOCK,
    connect: Callable[[str, int], str | None] | None = None,
) -> None:
    """Block until something accepts TCP connections on host:port (a service in
    a container this machine reaches directly, or, with `connect`, one that
    `connect` reaches: it returns None on success, else why not); NotReady
    after `timeout`."""
    deadline = Deadline.after(timeout, clock)
    delay = 0.005
    while True:
        if connect is not None:
            problem = connect(host, port)
            if problem is None:
                return
            last = problem
        else:
            try:
                with socket.create_connection(
                    (host, port), timeout=max(0.5, min(2.0, deadline.left()))
                ):
                    return
            except OSError as exc:
                last = exc.strerror or str(exc)
        if deadline.left() <= 0:
            raise NotReady(
                f"{what} did not start listening within {timeout:g} s",
                f"Connecting to {host}:{port}: {last}.",
                "read its log below; `prov up` again makes it anew.",
                log_tail=logs(),
            )
        clock.sleep(min(delay, deadline.left()))
        delay = min(delay * 2, 0.1)


def wait_published(
    host: str,
    port: int,
    timeout: float,
    logs: Callable[[], str],
    banner: Callable[[str, int], str] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Block until sshd's banner comes through the published port (Docker's
    proxy accepts before anything answers behind it, so a connect proves
    nothing); `banner`: how to read it from elsewhere (the engine host).
    NotReady after `timeout`, with the gate's log."""
    deadline = Deadline.after(timeout, clock)
    delay = 0.005
    while True:
        if banner is not None:
            said = banner(host, port)
            if said.startswith("SSH-"):
                return
            last = " ".join(said.split())[-200:] or "no banner yet"
        else:
            try:
                read_banner(host, port, timeout=max(0.5, min(2.0, deadline.left())))
                return
            except Transient as exc:
                last = str(exc)
        if deadline.left() <= 0:
            raise NotReady(
                f"SSH did not answer on the published port {host}:{port} within {timeout:g} s",
                f"The alias logs in, but the port the environment's gate relays to sshd "
                f"does not: {last}.",
                "read the gate's log below; `prov up --recreate` makes the gate anew.",
                log_tail=logs(),
            )
        clock.sleep(min(delay, deadline.left()))
        delay = min(delay * 2, 0.1)


UNWRITABLE = 86  # what the writable check exits with, when the agent may not write


def _writable_command(project: str) -> str:
    import shlex

    quoted = shlex.quote(project)
    # access(2) as the agent: mode bits, ACLs and a read-only mount all count.
    return (
        f"test -d {quoted} -a -w {quoted} -a -x {quoted} || "
        f"{{ id; stat -c '%A %u:%g %n' {quoted}; exit {UNWRITABLE}; }}"
    )


def _unwritable(project: str, code: int, output: str) -> NotReady:
    return NotReady(
        f"The agent cannot write its project {project}",
        "Logged in as the agent, it is not a directory the agent may write: "
        + (" ".join(output.split())[-400:] or f"exit {code}")
        + ".",
        "give the project to the user the agent runs as (its owner's UID; `chown -R "
        "USER: DIR` on the host), make it writable for its owner, or point --project at a "
        "dir you own.",
    )


def beyond_login(
    engine: Engine,
    timeout: float,
    new_proxy: str | None,
    published: tuple[str, int] | None,
    logs_of: str,
) -> None:
    """Ready is more than a login (for `up` and `prov start` alike; the login
    itself checked that the agent may write its project): a proxy started now
    listens at `new_proxy` (the agent's first request goes out), and a
    published port reaches sshd the way the guide's `ssh -p PORT
    agent@localhost` connects. `logs_of`: the container whose log tail
    explains a failure (the gate's, if any)."""
    from provisioner.injection import PROXY_PORT

    if new_proxy:
        wait_listening(
            new_proxy,
            PROXY_PORT,
            timeout,
            "The egress proxy",
            lambda: engine.logs_tail(logs_of),
            connect=engine.site.reach,
        )
    if published is not None:
        bind, port = published
        wait_published(
            connect_host(bind),
            port,
            timeout,
            lambda: engine.logs_tail(logs_of),
            banner=engine.site.banner,
        )
