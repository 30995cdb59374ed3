"""An engine on another machine, reached with the user's own OpenSSH.

One ControlMaster per engine host carries everything: a forward of the
remote's Docker socket to a socket in a private dir here (so prov's plain
HTTP transport and docker-py both talk to it as to a local engine), the
channels the environments' aliases jump through, and the few shell
commands prov runs there (the listeners and routes it must avoid, a path
check). Measured when the issue was filed: an Engine API call costs ~0.05 s
through `docker system dial-stdio` with a master up; through a forwarded
socket it costs one channel open on the master, with no process per call.
docker-py's own ssh modes start a process per request or ignore ProxyJump
and Include.

The user's ssh config applies (an ssh:// URL may name an alias), but the
engine host's key is never accepted silently: prov insists on
StrictHostKeyChecking=yes and, for an unknown key, shows its fingerprint and
how to check and trust it.
"""

from __future__ import annotations

import contextlib
import hashlib
import shlex
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import ConfigError, DockerUnavailable, UsageError

REMOTE_SOCKET = "/var/run/docker.sock"
CONNECT_TIMEOUT = 10  # seconds for TCP connect and the SSH banner
# A master whose peer stopped answering gives up after about 3 x 3 s, so calls
# through a dead link fail in seconds instead of hanging until the API timeout.
ALIVE_INTERVAL = 3
ALIVE_COUNT = 3
PERSIST = "15m"  # the master outlives prov's process, for the next command and NTM


@dataclass(frozen=True)
class SshDest:
    """ssh://[USER@]HOST[:PORT] as the ssh command line wants it."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, url: str) -> SshDest:
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme != "ssh" or not parts.hostname or port == -1 or parts.path not in ("", "/"):
            raise UsageError(
                f"{url!r} is not an ssh engine address",
                "It should be ssh://[USER@]HOST[:PORT], where HOST may be an alias from your "
                "ssh config; prov uses the engine host's /var/run/docker.sock.",
                "fix the address.",
            )
        # urlsplit lower-cases the host; ssh config aliases are case-sensitive.
        netloc = parts.netloc.rsplit("@", 1)[-1]
        host = netloc.rsplit(":", 1)[0] if parts.port is not None else netloc
        return cls(host.strip("[]"), parts.username or None, parts.port)

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def argv(self) -> list[str]:
        """The destination arguments, after every option."""
        return [*(["-p", str(self.port)] if self.port else []), "--", self.target]

    def display(self) -> str:
        return self.target + (f":{self.port}" if self.port else "")


def link_dir(base: Path, url: str) -> Path:
    """A short private dir per engine: Unix socket paths are limited to 107 bytes."""
    return base / hashlib.sha256(url.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SshLink:
    """The master connection to one engine host, and the socket it forwards."""

    url: str
    dest: SshDest
    dir: Path

    @classmethod
    def for_url(cls, url: str, base: Path) -> SshLink:
        return cls(url, SshDest.parse(url), link_dir(base, url))

    @property
    def control(self) -> Path:
        return self.dir / "ctl"

    @property
    def socket(self) -> Path:
        return self.dir / "docker.sock"

    @property
    def jump_log(self) -> Path:
        """What the aliases' jumps through this host said last (see proxy_command)."""
        return self.dir / "jump.log"

    def jump_log_size(self) -> int:
        try:
            return self.jump_log.stat().st_size
        except OSError:
            return 0

    def jump_said(self, since: int, limit: int = 600) -> str:
        """What the jump log got after offset `since`, on one line."""
        try:
            with self.jump_log.open("rb") as handle:
                handle.seek(since)
                text = handle.read(64 * 1024).decode(errors="replace")
        except OSError:
            return ""
        return " ".join(text.split())[-limit:]

    def options(self) -> list[str]:
        return [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={CONNECT_TIMEOUT}",
            "-o",
            f"ServerAliveInterval={ALIVE_INTERVAL}",
            "-o",
            f"ServerAliveCountMax={ALIVE_COUNT}",
            "-o",
            f"ControlPath={str(self.control).replace('%', '%%')}",
        ]

    def proxy_command(self) -> str:
        """An ssh_config ProxyCommand that reaches %h:%p from the engine host,
        over prov's master when it is up, else over a connection of its own
        (the user's ssh config for the engine host applies either way)."""
        argv = [
            "ssh",
            "-o",
            "ControlMaster=no",
            "-o",
            f"ControlPath={self.control}",
            "-o",
            f"ConnectTimeout={CONNECT_TIMEOUT}",
            # The engine host's key was checked at `up`; a later change must
            # stop the alias, whatever the user's config says for that host.
            "-o",
            "StrictHostKeyChecking=yes",
            # With ControlPersist, ssh sends a ProxyCommand's stderr to
            # /dev/null: its reasons go to this log (`prov ssh-test` reads it).
            "-E",
            str(self.jump_log),
            "-W",
            "[%h]:%p",
            *self.dest.argv(),
        ]
        # ssh_config expands %-tokens in ProxyCommand: only %h and %p are meant.
        return " ".join(a if a == "[%h]:%p" else shlex.quote(a).replace("%", "%%") for a in argv)

    # --- the master ----------------------------------------------------------

    def open(self) -> Path:
        """The local socket of the remote engine, starting the master if needed."""
        if self.socket.is_socket() and self.alive():
            return self.socket
        from provisioner.fsutil import ensure_private_dir, file_lock

        ensure_private_dir(self.dir.parent)
        ensure_private_dir(self.dir)
        # Two prov processes starting a master at once would leave a second ssh
        # holding a forward forever (only the first can be the master).
        with file_lock(self.dir / "lock"):
            if not (self.socket.is_socket() and self.alive()):
                self.start()
        return self.socket

    def alive(self) -> bool:
        code, _ = self._ssh(["-O", "check"], timeout=5)
        return code == 0

    def start(self) -> None:
        """A new master (any old one ended first); callers hold the link's lock."""
        from provisioner.fsutil import ensure_private_dir

        ensure_private_dir(self.dir.parent)
        ensure_private_dir(self.dir)
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        code, output = self._ssh(
            [
                "-M",
                "-f",
                "-N",
                "-o",
                f"ControlPersist={PERSIST}",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "StreamLocalBindMask=0177",
                "-o",
                "StreamLocalBindUnlink=yes",
                "-L",
                f"{self.socket}:{REMOTE_SOCKET}",
            ],
            timeout=CONNECT_TIMEOUT * 3,
        )
        if code != 0:
            raise self.explain(code, output)

    def close(self) -> None:
        """End the master (and every session it carries)."""
        self._ssh(["-O", "exit"], timeout=5)

    def run(self, command: str, timeout: float = 30) -> tuple[int, str]:
        """A shell command on the engine host, over the master."""
        return self._ssh([], command, timeout=timeout)

    def reach(
        self, host: str, port: int, timeout: float = CONNECT_TIMEOUT, own: bool = False
    ) -> str | None:
        """None if the engine host can open a TCP connection to host:port, else
        what ssh said (a -W channel, closed as soon as it opens). Through the
        master every refusal reads "Session open refused by peer"; `own`: a
        connection of its own, which hears sshd's reason."""
        extra = ["-o", "ControlPath=none"] if own else []
        code, output = self._ssh([*extra, "-W", f"[{host}]:{port}"], timeout=timeout)
        if code == 0:
            return None
        return " ".join(output.split())[-300:] or f"ssh exited {code}"

    def banner(self, host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> str:
        """What host:port, as the engine host reaches it, sends first (an SSH
        server's identification line), or what ssh said instead."""
        _code, output = self._ssh(["-W", f"[{host}]:{port}"], timeout=timeout)
        return output

    def _forwarding_refused(self) -> DockerUnavailable | None:
        """sshd there refuses forwarding (AllowTcpForwarding no also refuses the
        Docker socket's forward, whatever AllowStreamLocalForwarding says)."""
        said = self.reach("127.0.0.1", 9, own=True) or ""
        if "administratively prohibited" not in said:
            return None
        return DockerUnavailable(
            f"The engine host {self.dest.display()} does not forward TCP connections",
            "Its sshd refused a forwarding channel (AllowTcpForwarding no, or a PermitOpen "
            f"that leaves it out): {said}. prov reaches Docker there through a forwarded "
            "socket, and the environment's alias reaches sshd in the container through "
            "such a channel.",
            "set `AllowTcpForwarding yes` (or `local`) for this user in the host's "
            "sshd_config and reload sshd, or use another engine.",
        )

    def _ssh(self, extra: list[str], command: str = "", timeout: float = 30) -> tuple[int, str]:
        # `extra` first: ssh keeps the first value it sees of each option.
        argv = ["ssh", *extra, *self.options(), *self.dest.argv()]
        if command:
            argv.append(command)
        from provisioner.openssh import run_captured

        try:
            return run_captured(argv, timeout)
        except FileNotFoundError:
            raise ConfigError(
                "The OpenSSH client `ssh` is not installed",
                f"prov reaches the engine {self.url} with it.",
                "install it (`apt-get install openssh-client`).",
            ) from None

    # --- what went wrong -----------------------------------------------------

    def explain(self, code: int, output: str) -> DockerUnavailable:
        """One paragraph for a failed connection to the engine host."""
        where = self.dest.display()
        text = output.strip()
        said = " ".join(text.split())[-400:]
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
            offending = [ln.strip() for ln in text.splitlines() if "Offending" in ln]
            return DockerUnavailable(
                f"The engine host {where} presented a different host key than the one you "
                "trusted: prov refuses to connect",
                "OpenSSH said: REMOTE HOST IDENTIFICATION HAS CHANGED. "
                + (" ".join(offending) + " " if offending else "")
                + "Someone may be intercepting the connection, or the host was reinstalled.",
                "check the host's new key with its administrator; if it is right, remove the "
                f"old one (`ssh-keygen -R {self._known_name()}`) and trust the new one.",
            )
        if "Host key verification failed" in text or (
            "No " in text and "host key is known" in text
        ):
            fingerprints = self.scan_fingerprints()
            return DockerUnavailable(
                f"The engine host {where} is not in your known_hosts: prov does not accept "
                "host keys silently",
                "It presents "
                + (", ".join(fingerprints) if fingerprints else "a key prov could not read")
                + ".",
                "compare that with the host's own (`ssh-keygen -lf "
                "/etc/ssh/ssh_host_ed25519_key.pub` there), then trust it by connecting once: "
                f"`ssh {shlex.join([*self.dest.argv()[:-2], self.dest.target])} true` and "
                "answer yes.",
            )
        if code == 124 or "timed out" in text or "Connection timed out" in text:
            return DockerUnavailable(
                f"The engine host {where} did not answer within {CONNECT_TIMEOUT} s",
                f"ssh said: {said or 'nothing'}.",
                "check that the host is up and that this machine can reach it (a firewall "
                "that drops packets looks like this), then try again.",
            )
        if "Connection refused" in text:
            return DockerUnavailable(
                f"The engine host {where} refused the SSH connection",
                f"ssh said: {said}.",
                "start sshd on that host, or fix the port in the engine address.",
            )
        if "Could not resolve hostname" in text:
            return DockerUnavailable(
                f"The engine host {where} has no address",
                f"ssh said: {said}.",
                "fix the host name, or add a Host block for it to your ssh config.",
            )
        if "Permission denied" in text:
            return DockerUnavailable(
                f"The engine host {where} did not accept your SSH key",
                f"ssh said: {said}.",
                "check that `ssh " + self.dest.target + " true` works without a password "
                "(prov runs ssh in batch mode: load the key into ssh-agent, or name it with "
                "IdentityFile in your ssh config).",
            )
        return DockerUnavailable(
            f"Connecting to the engine host {where} failed",
            f"ssh exited {code}: {said or 'no output'}.",
            f"check that `ssh {self.dest.target} true` works from this machine.",
        )

    def diagnose_socket(self) -> DockerUnavailable:
        """The master is up but the Docker socket on the other end did not answer."""
        where = self.dest.display()
        check = (
            f"if [ ! -S {REMOTE_SOCKET} ]; then echo missing; "
            f"elif [ ! -w {REMOTE_SOCKET} ]; then echo denied; else echo present; fi"
        )
        code, output = self.run(check, timeout=CONNECT_TIMEOUT / 2)
        if code == 124:
            return DockerUnavailable(
                f"The engine host {where} stopped answering",
                f"prov's SSH connection to it was up, but neither Docker nor a shell there "
                f"answered within {CONNECT_TIMEOUT} s.",
                "check that the host is up and that this machine can reach it (a firewall "
                "that drops packets looks like this), then try again.",
            )
        if code == 255:  # the connection itself is gone
            return self.explain(code, output)
        seen = output.strip().splitlines()[-1] if output.strip() else ""
        if seen == "missing":
            return DockerUnavailable(
                f"The engine host {where} has no Docker socket at {REMOTE_SOCKET}",
                "SSH works, but nothing there is listening for Docker.",
                "install Docker on that host and start it (e.g. `sudo systemctl start docker`).",
            )
        if seen == "denied":
            return DockerUnavailable(
                f"The SSH user on {where} may not use Docker",
                f"{REMOTE_SOCKET} exists there but is not writable for "
                f"{self.dest.user or 'that user'}.",
                "add the user to the `docker` group on that host (and log in again), or use "
                "an engine address with a user who may.",
            )
        if seen == "present":
            refused = self._forwarding_refused()
            if refused is not None:
                return refused
            return DockerUnavailable(
                f"The Docker engine on {where} does not answer",
                f"SSH works and {REMOTE_SOCKET} exists there, but connecting to it failed: "
                "dockerd is not running.",
                "start it on that host (e.g. `sudo systemctl start docker`), then try again.",
            )
        return DockerUnavailable(
            f"The Docker engine on {where} could not be reached over SSH",
            f"Checking {REMOTE_SOCKET} there failed (exit {code}): "
            + (" ".join(output.split())[-300:] or "no output")
            + ".",
            f"check that `ssh {self.dest.target} docker info` works.",
        )

    def _known_name(self) -> str:
        seen = self._resolved()
        host, port = seen.get("hostname", self.dest.host), seen.get("port", "22")
        return host if port == "22" else f"[{host}]:{port}"

    def _resolved(self) -> dict[str, str]:
        """`ssh -G`: the host name and port the user's config makes of the address."""
        try:
            result = subprocess.run(
                ["ssh", "-G", *self.dest.argv()],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return {}
        return dict(ln.split(" ", 1) for ln in result.stdout.splitlines() if " " in ln)

    def scan_fingerprints(self) -> list[str]:
        """The host's key fingerprints as ssh-keyscan sees them (for the user to
        compare; prov does not trust them)."""
        seen = self._resolved()
        host, port = seen.get("hostname", self.dest.host), seen.get("port", "22")
        try:
            scanned = subprocess.run(
                ["ssh-keyscan", "-T", "5", "-p", port, "-t", "ed25519,ecdsa,rsa", host],
                capture_output=True,
                text=True,
                timeout=15,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            listed = subprocess.run(
                ["ssh-keygen", "-l", "-f", "-"],
                input=scanned.stdout,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return []
        found = []
        for line in listed.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 2:
                kind = fields[-1].strip("()")
                found.append(f"{kind} {fields[1]}")
        return found


def links_base() -> Path:
    """Where prov keeps its engine links (PROV_HOME/links)."""
    from provisioner.config import ProvPaths

    return ProvPaths.from_env().home / "l"
