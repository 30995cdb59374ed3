"""A throwaway "remote Docker host" built inside this machine, for tests of prov's SSH engine.

`RemoteHost(index, workdir, client_pubkey)` makes a machine-like sandbox that
prov can only reach the way it reaches a real remote: over OpenSSH, as
``ssh://root@10.231.<index>.2``.

Design, and why each piece is there:

* **Network namespace + veth, no default route.** ``provtest-r<index>`` holds
  one end of a veth pair (``prvr<index>n``, 10.231.<index>.2/30); the host keeps
  the other (``prvr<index>h``, .1/30). The namespace has no default route, so
  nothing started in it (dockerd, containers, sshd sessions) can send a packet
  anywhere except to the host's end of the veth. The remote engine's own
  bridge (``--bip 10.232.<index>.1/24``) and address pool
  (10.233.<16*index>.0/20, /24 networks) exist only inside the namespace.
* **A private mount namespace, kept alive by a holder process.** ``ip netns
  exec`` already gives a fresh mount namespace with a sysfs for the network
  namespace on /sys - which hides the host's cgroup mounts, so dockerd there
  could not create containers. The holder (``ip netns exec NS unshare --mount
  --uts --propagation private``) therefore mounts the cgroup hierarchies again
  (mirroring the host's /sys/fs/cgroup layout, v1 or v2), a tmpfs over /run and
  over /var/log, sets the hostname to the namespace name (so the remote engine
  reports its own ``Name``), and then sleeps. Every later process (dockerd,
  sshd, listeners, iptables) joins it with ``nsenter -t HOLDER -m -n -u``, so
  they all see the same mounts even when dockerd or sshd are restarted.
  Propagation is private: no mount made there appears in the host's mount
  namespace, and all of them vanish when the last process in it exits.
* **A private /run.** The remote dockerd and its containerd use the stock
  paths ``/run/docker`` (exec root), ``/run/docker.pid`` and
  ``/run/containerd/s`` (shim sockets) without touching the host's files of
  the same names, and dockerd cannot mistake the host's
  ``/run/containerd/containerd.sock`` for a system containerd. sshd's privsep
  directory ``/run/sshd`` and utmp live there too; the tmpfs over /var/log
  keeps sshd's wtmp/lastlog records off the host.
* **/run/docker.sock.** dockerd listens on ``<workdir>/docker.sock`` (on the
  host filesystem, so tests on the host reach the remote engine directly with
  `docker_env()`), and the private /run holds a *symlink* ``/run/docker.sock ->
  <workdir>/docker.sock``. A bind mount of the socket would also work but has
  to be made after dockerd created the socket and redone every time dockerd
  re-creates it (a bind pins the old inode); a symlink resolves the path on
  every connect, so sshd's ``ssh -L sock:/var/run/docker.sock`` forwarding and
  a remote ``docker`` CLI follow a restarted dockerd with nothing to redo.
* **dockerd's own state.** ``--data-root <workdir>/data`` (overlay2 needs a
  real filesystem below it, not overlayfs or the small /run tmpfs),
  ``--config-file <workdir>/daemon.json`` (the host's /etc/docker/daemon.json
  is not read), a trust key of its own (``deprecated-key-path``; with the
  host's /etc/docker/key.json both engines would report the same ``ID``),
  ``--cgroup-parent /provtest-r<index>`` (its containers' cgroups are told
  apart from the host engine's, and teardown can find and remove them), and
  ``--iptables=true``: iptables run inside the namespace change only its rules.
* **sshd** (``/usr/sbin/sshd -D -e -f <workdir>/sshd_config``) listens on the
  namespace address with a generated ed25519 host key, key-only root login and
  TCP plus stream-local forwarding, so prov can forward the remote socket and
  ``ProxyJump`` to ports that remote containers publish on its 127.0.0.1.
  authorized_keys holds ``client_pubkey`` and the fixture's own admin key
  (``.admin_key``), which `start()` uses to prove that a login works.

Teardown removes the remote containers through the API first (so no shims or
container processes linger), stops sshd and dockerd, kills whatever is still
in the namespace or in the ``/provtest-r<index>`` cgroups, removes those
cgroups, the veth and the namespace, and deletes the workdir. `cleanup_stale()`
does the same for every ``provtest-r*`` left by a crashed run.

Needs root, iproute2, util-linux (unshare, nsenter), iptables, docker.io and
openssh-server. Run by hand::

    python -m tests.integration.remotehost up 1     # until Ctrl-C
    python -m tests.integration.remotehost down     # remove leftovers
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from provisioner.engine.transport import UnixHTTPConnection

BASE_DIR = Path("/var/lib/prov-remotehost")
"""Where tests should put workdirs (``BASE_DIR / f"r{index}"``); `cleanup_stale` empties it."""

NETNS_PREFIX = "provtest-r"
MAX_INDEX = 15
START_TIMEOUT_S = 60.0

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SSHD = "/usr/sbin/sshd"
# sockaddr_un.sun_path is 108 bytes; <workdir>/docker.sock must fit.
_MAX_WORKDIR_LEN = 90


class RemoteHostError(RuntimeError):
    """The remote host could not be set up, or a failure injection did not take effect."""


@dataclass(frozen=True)
class _Mount:
    mount_point: str
    fs_type: str
    super_options: str


def _unescape_mount_path(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _host_mounts() -> list[_Mount]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        mounts.append(_Mount(_unescape_mount_path(fields[4]), fields[sep + 1], fields[sep + 3]))
    return mounts


def _fs_type(path: Path) -> str:
    best = ""
    fs_type = ""
    for mount in _host_mounts():
        mp = mount.mount_point
        inside = str(path) == mp or str(path).startswith(mp.rstrip("/") + "/")
        if inside and len(mp) >= len(best):
            best, fs_type = mp, mount.fs_type
    return fs_type


def _cgroup_mount_points() -> list[str]:
    return [m.mount_point for m in _host_mounts() if m.fs_type in ("cgroup", "cgroup2")]


def _cgroup_mount_script() -> str:
    """Shell lines that re-create the host's /sys/fs/cgroup layout on a fresh sysfs."""
    lines = []
    for m in _host_mounts():
        mp = m.mount_point
        if mp != "/sys/fs/cgroup" and not mp.startswith("/sys/fs/cgroup/"):
            continue
        opts = ",".join(o for o in m.super_options.split(",") if o not in ("rw", "ro"))
        q = shlex.quote(mp)
        if m.fs_type == "tmpfs":
            lines.append(f"mount -t tmpfs -o mode=0755 cgroup_root {q}")
        elif m.fs_type in ("cgroup", "cgroup2"):
            opt_arg = f"-o {shlex.quote(opts)} " if opts else ""
            lines.append(f"mkdir -p {q} && mount -t {m.fs_type} {opt_arg}{m.fs_type} {q}")
    return "\n".join(lines)


def _run(
    argv: list[str], *, check: bool = True, timeout: float = 30.0, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input_text,
        env=_env(),
    )
    if check and result.returncode != 0:
        raise RemoteHostError(
            f"{shlex.join(argv)} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result


def _env() -> dict[str, str]:
    return {"PATH": _PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path.name}: not there)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path.name}: empty)"


def _docker_api(
    socket_path: Path, method: str, path: str, timeout: float = 10.0
) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(str(socket_path), timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _docker_ping(socket_path: Path) -> bool:
    try:
        status, body = _docker_api(socket_path, "GET", "/_ping", timeout=2.0)
    except OSError:
        return False
    return status == 200 and body == b"OK"


# --- processes -----------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """True unless the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _own_lineage() -> set[int]:
    pids = set()
    pid = os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _spawn_logged(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A daemon in a session of its own, its output appended to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=_env(),
            start_new_session=True,
        )


def _await_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    name: str,
    too_late: str,
    deadline: float,
    step: float,
) -> None:
    """Poll `ready` every `step` s until it holds; RemoteHostError if `proc`
    exits first (as "NAME exited CODE") or the deadline passes (`too_late`)."""
    while not ready():
        if proc.poll() is not None:
            raise RemoteHostError(f"{name} exited {proc.returncode}")
        if time.monotonic() > deadline:
            raise RemoteHostError(too_late)
        time.sleep(step)


def _kill_and_wait(pids: Iterable[int], timeout: float = 10.0) -> None:
    spare = _own_lineage()
    targets = {p for p in pids if p not in spare}
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_pid_alive(p) for p in targets):
        if time.monotonic() > deadline:
            alive = sorted(p for p in targets if _pid_alive(p))
            raise RemoteHostError(f"processes {alive} survived SIGKILL for {timeout:.0f}s")
        time.sleep(0.05)


def _netns_pids(netns: str) -> set[int]:
    result = _run(["ip", "netns", "pids", netns], check=False)
    return {int(p) for p in result.stdout.split() if p.isdigit()}


def _cgroup_pids(cgroup_name: str) -> set[int]:
    pids: set[int] = set()
    for mp in _cgroup_mount_points():
        root = Path(mp) / cgroup_name
        if not root.is_dir():
            continue
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _remove_cgroups(cgroup_name: str, timeout: float = 5.0) -> None:
    """rmdir the cgroup trees the remote engine made (EBUSY while the kernel is still
    letting go of just-killed tasks, hence the retries)."""
    deadline = time.monotonic() + timeout
    while True:
        busy: list[str] = []
        for mp in _cgroup_mount_points():
            root = Path(mp) / cgroup_name
            if not root.is_dir():
                continue
            dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for d in [*dirs, root]:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    busy.append(f"{d}: {exc.strerror}")
        if not busy:
            return
        if time.monotonic() > deadline:
            raise RemoteHostError(f"cannot remove cgroups: {'; '.join(busy[:3])}")
        time.sleep(0.1)


def _cmdline_mentions(pid: int, path: str) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(a == path or f"{path}/" in a or a.endswith(path) or f"{path} " in a for a in args)


def _pids_mentioning(path: Path) -> set[int]:
    return {
        int(d.name)
        for d in Path("/proc").iterdir()
        if d.name.isdigit() and _cmdline_mentions(int(d.name), str(path))
    }


def _unmount_under(path: Path) -> None:
    prefix = str(path).rstrip("/") + "/"
    inside = [
        m.mount_point
        for m in _host_mounts()
        if m.mount_point == str(path) or m.mount_point.startswith(prefix)
    ]
    for mp in sorted(inside, key=len, reverse=True):
        _run(["umount", "-l", mp], check=False)


def _destroy_namespace(index: int, workdir: Path | None) -> None:
    """Remove everything `RemoteHost(index, ...)` may have left, whoever made it."""
    netns = f"{NETNS_PREFIX}{index}"
    have_netns = (Path("/run/netns") / netns).exists()
    for _ in range(5):
        pids = _cgroup_pids(netns)
        if have_netns:
            pids |= _netns_pids(netns)
        if workdir is not None:
            pids |= _pids_mentioning(workdir)
        pids -= _own_lineage()
        if not pids:
            break
        _kill_and_wait(pids)
    _run(["ip", "link", "del", f"prvr{index}h"], check=False)
    if have_netns:
        _run(["ip", "netns", "del", netns], check=False)
    if workdir is not None:
        _unmount_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        if workdir.parent == BASE_DIR:
            with contextlib.suppress(OSError):
                BASE_DIR.rmdir()  # only once empty
    _remove_cgroups(netns)


def cleanup_stale(base: Path = BASE_DIR) -> None:
    """Remove leftovers of earlier (crashed) runs: every ``provtest-r*`` namespace with its
    processes and cgroups, stray ``prvr*h`` veths, processes naming ``base``, mounts under
    ``base``, and ``base`` itself. Kills fixtures of a concurrently running session too."""
    indexes: set[int] = set()
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if re.fullmatch(rf"{NETNS_PREFIX}\d+", name):
            indexes.add(int(name.removeprefix(NETNS_PREFIX)))
    for mp in _cgroup_mount_points():
        with contextlib.suppress(OSError):
            for d in Path(mp).iterdir():
                if re.fullmatch(rf"{NETNS_PREFIX}\d+", d.name):
                    indexes.add(int(d.name.removeprefix(NETNS_PREFIX)))
    for line in _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        m = re.match(r"\d+: prvr(\d+)h[@:]", line)
        if m:
            indexes.add(int(m.group(1)))
    for index in sorted(indexes):
        _destroy_namespace(index, None)
    _kill_and_wait(_pids_mentioning(base))
    _unmount_under(base)
    shutil.rmtree(base, ignore_errors=True)


# --- the fixture ---------------------------------------------------------------------


@dataclass
class PortListener:
    """A plain TCP listener on the remote's 127.0.0.1 (see `RemoteHost.occupy_port`)."""

    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


_LISTENER_PY = """
import socket, struct, sys, threading

def serve(c):
    # Greet, let the client close first, and reset rather than FIN: a server-side
    # close (also the kernel's, when the listener is killed) would leave a TIME_WAIT
    # on 127.0.0.1:PORT, and docker-proxy then could not bind the port.
    with c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.settimeout(10)
        try:
            c.sendall(b"provtest-occupied\\r\\n")
            while c.recv(4096):
                pass
        except OSError:
            pass

s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""


class RemoteHost:
    """A Docker engine plus sshd in network namespace ``provtest-r<index>``; see the module doc.

    ``workdir`` must not exist yet or be empty-able (it is deleted by `stop`), must lie on a
    real filesystem (not overlayfs) and should be ``BASE_DIR / f"r{index}"`` so that
    `cleanup_stale` finds it after a crash.
    """

    def __init__(
        self,
        index: int,
        workdir: Path,
        client_pubkey: str,
        *,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        if not 0 <= index <= MAX_INDEX:
            raise ValueError(f"index must be 0..{MAX_INDEX}, not {index}")
        workdir = Path(workdir).absolute()
        if len(str(workdir)) > _MAX_WORKDIR_LEN:
            raise ValueError(f"workdir path too long for unix sockets: {workdir}")
        if not client_pubkey.strip() or "\n" in client_pubkey.strip():
            raise ValueError("client_pubkey must be one authorized_keys line")
        self.index = index
        self.workdir = workdir
        self.client_pubkey = client_pubkey.strip()
        self.start_timeout = start_timeout

        self.netns = f"{NETNS_PREFIX}{index}"
        self.host_if = f"prvr{index}h"
        self.ns_if = f"prvr{index}n"
        self.host_address = f"10.231.{index}.1"
        self.address = f"10.231.{index}.2"
        self.bip = f"10.232.{index}.1/24"
        self.address_pool = f"10.233.{index * 16}.0/20"
        self.cgroup_parent = f"/{self.netns}"
        self.hostname = self.netns

        self.docker_sock = workdir / "docker.sock"
        self.data_root = workdir / "data"
        self.admin_key = workdir / "admin_key"
        self.known_hosts = workdir / "known_hosts"
        self.host_key = workdir / "ssh_host_ed25519_key"
        self.authorized_keys = workdir / "authorized_keys"
        self.sshd_config = workdir / "sshd_config"
        self.sshd_pidfile = workdir / "sshd.pid"
        self.dockerd_log = workdir / "dockerd.log"
        self.sshd_log = workdir / "sshd.log"
        self.holder_log = workdir / "holder.log"

        self._holder: subprocess.Popen[bytes] | None = None
        self._dockerd: subprocess.Popen[bytes] | None = None
        self._sshd: subprocess.Popen[bytes] | None = None
        self._listeners: list[PortListener] = []
        self._started = False
        self._blackholed = False
        self._tcp_forwarding = True
        self._stream_local_forwarding = True
        self.start_seconds: float | None = None

    # --- context manager ---

    def __enter__(self) -> RemoteHost:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- public API ---

    @property
    def ssh_url(self) -> str:
        return f"ssh://root@{self.address}"

    def docker_env(self) -> dict[str, str]:
        """Environment for a host-side docker CLI / docker-py talking to the remote engine."""
        return {"DOCKER_HOST": f"unix://{self.docker_sock}"}

    def ssh_argv(self, *remote_command: str) -> list[str]:
        """``ssh`` as the fixture's admin, isolated from ~/.ssh, to ``root@address``."""
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.admin_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=5",
            f"root@{self.address}",
            *remote_command,
        ]

    def host_key_line(self) -> str:
        """The ``known_hosts`` line for the current host key: ``ADDR ssh-ed25519 AAAA...``."""
        key_type, blob = self._host_pubkey()
        return f"{self.address} {key_type} {blob}"

    def host_key_fingerprint(self) -> str:
        """``SHA256:...`` as ssh and ssh-keygen -l print it."""
        _, blob = self._host_pubkey()
        digest = hashlib.sha256(base64.b64decode(blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def start(self) -> None:
        if self._started:
            raise RemoteHostError(f"{self.netns} is already started")
        if os.geteuid() != 0:
            raise RemoteHostError("RemoteHost needs root (network and mount namespaces)")
        if (Path("/run/netns") / self.netns).exists():
            raise RemoteHostError(
                f"network namespace {self.netns} exists already; a crashed run? "
                "call remotehost.cleanup_stale() (python -m tests.integration.remotehost down)"
            )
        foreign = self.workdir.exists() and any(self.workdir.iterdir())
        if foreign and not (self.workdir / "daemon.json").exists():
            raise RemoteHostError(
                f"{self.workdir} holds files that are not a RemoteHost's; "
                "start() and stop() delete the workdir, so give it one of its own"
            )
        began = time.monotonic()
        deadline = began + self.start_timeout
        self._started = True
        try:
            self._prepare_workdir()
            self._make_network()
            self._start_holder(deadline)
            self._start_dockerd(deadline)
            self._start_sshd(deadline)
            self._wait_login(deadline)
        except BaseException as exc:
            logs = self._log_tails()
            with contextlib.suppress(Exception):
                self.stop()
            if isinstance(exc, RemoteHostError | subprocess.SubprocessError | OSError):
                raise RemoteHostError(f"{self.netns}: start failed: {exc}\n{logs}") from exc
            raise
        self.start_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Tear everything down; idempotent, and safe after a half-finished `start`."""
        if not self._started:
            return
        if self._dockerd is not None and self._dockerd.poll() is None:
            with contextlib.suppress(Exception):
                self._remove_remote_containers()
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                listener.stop()
        self._listeners.clear()
        with contextlib.suppress(Exception):
            self.stop_sshd()
        with contextlib.suppress(Exception):
            self._stop_dockerd(timeout=20.0)
        for proc in (self._holder, self._sshd, self._dockerd):
            if proc is not None and proc.poll() is None:
                proc.kill()
        _destroy_namespace(self.index, self.workdir)
        for proc in (self._holder, self._sshd, self._dockerd):
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self._holder = self._sshd = self._dockerd = None
        self._blackholed = False
        self._started = False

    # --- failure injection ---

    def stop_sshd(self, *, kill_sessions: bool = True) -> None:
        """Stop the listening sshd; with ``kill_sessions`` also every session (and with it
        every ControlMaster connection to this host), as a host going away would."""
        proc, self._sshd = self._sshd, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if kill_sessions and self._holder is not None:
            sessions = {p for p in _netns_pids(self.netns) if _exe(p) == _SSHD}
            _kill_and_wait(sessions)

    def start_sshd(
        self, allow_tcp_forwarding: bool = True, *, allow_stream_local_forwarding: bool = True
    ) -> None:
        """(Re)start sshd, ending all sessions; waits until it listens.

        ``allow_tcp_forwarding=False`` makes ProxyJump/-W/-L to TCP ports fail with
        "administratively prohibited: open failed". Like on any OpenSSH (9.2) server it also
        denies stream-local forwards then ("Received request to connect to path
        /var/run/docker.sock, but the request was denied"), whatever
        ``allow_stream_local_forwarding`` says; that one alone turns off only the latter."""
        self.stop_sshd()
        self._tcp_forwarding = allow_tcp_forwarding
        self._stream_local_forwarding = allow_stream_local_forwarding
        self._start_sshd(time.monotonic() + self.start_timeout)

    def regenerate_host_key(self) -> None:
        """New host key and sshd restarted with it (old sessions killed): a changed jump key.
        The fixture's own known_hosts follows; anyone else's now mismatches."""
        self.host_key.unlink(missing_ok=True)
        self.host_key.with_suffix(".pub").unlink(missing_ok=True)
        self._keygen(self.host_key, "provtest-hostkey")
        self.known_hosts.write_text(self.host_key_line() + "\n")
        self.start_sshd(
            self._tcp_forwarding, allow_stream_local_forwarding=self._stream_local_forwarding
        )

    def blackhole(self) -> None:
        """Drop every packet arriving on the namespace's veth: connects hang (no RST)."""
        if not self._blackholed:
            self.ns_run(["iptables", "-w", "-I", "INPUT", "1", "-i", self.ns_if, "-j", "DROP"])
            self._blackholed = True

    def unblackhole(self) -> None:
        rule = ["-i", self.ns_if, "-j", "DROP"]
        while self.ns_run(["iptables", "-w", "-C", "INPUT", *rule], check=False).returncode == 0:
            self.ns_run(["iptables", "-w", "-D", "INPUT", *rule])
        self._blackholed = False

    def stop_dockerd(self) -> None:
        """Stop the remote engine (its containers stop with it); sshd keeps running, so
        ``/var/run/docker.sock`` forwarding then fails with "connect failed"."""
        self._stop_dockerd(timeout=30.0)

    def start_dockerd(self) -> None:
        if self._dockerd is not None and self._dockerd.poll() is None:
            return
        self._start_dockerd(time.monotonic() + self.start_timeout)

    def occupy_port(self, port: int) -> PortListener:
        """Listen on the remote's 127.0.0.1:port with a non-Docker process (so publishing that
        port fails with "address already in use"). Every connection gets the line
        ``provtest-occupied`` and is closed after the client closes (or 10 s).
        Stopped by `PortListener.stop` or `stop`."""
        script = self.workdir / "listener.py"
        script.write_text(_LISTENER_PY)
        proc = subprocess.Popen(
            [*self._nsenter(), sys.executable, str(script), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            proc.kill()
            _, err = proc.communicate(timeout=5)
            raise RemoteHostError(
                f"{self.netns}: cannot listen on 127.0.0.1:{port}: {err.decode().strip()}"
            )
        listener = PortListener(port, proc)
        self._listeners.append(listener)
        return listener

    def ns_run(
        self, argv: list[str], *, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the remote's namespaces (as root, host filesystem)."""
        return _run([*self._nsenter(), *argv], check=check, timeout=timeout)

    # --- internals ---

    def _nsenter(self) -> list[str]:
        if self._holder is None or self._holder.poll() is not None:
            raise RemoteHostError(f"{self.netns} is not running")
        return ["nsenter", "-t", str(self._holder.pid), "-m", "-n", "-u", "--"]

    def _ns_root(self) -> Path:
        """The private mount namespace's / as seen from the host."""
        if self._holder is None:
            raise RemoteHostError(f"{self.netns} is not running")
        return Path(f"/proc/{self._holder.pid}/root")

    def _host_pubkey(self) -> tuple[str, str]:
        key_type, blob, *_ = self.host_key.with_suffix(".pub").read_text().split()
        return key_type, blob

    def _keygen(self, path: Path, comment: str) -> None:
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])

    def _prepare_workdir(self) -> None:
        if self.workdir.exists():
            _unmount_under(self.workdir)
            shutil.rmtree(self.workdir)
        for _ in range(3):
            try:
                self.workdir.mkdir(parents=True, mode=0o700)
                break
            except FileNotFoundError:  # a parallel stop() just removed the empty BASE_DIR
                continue
        fs_type = _fs_type(self.workdir)
        if fs_type in ("overlay", "fuse.overlayfs"):
            raise RemoteHostError(
                f"{self.workdir} is on {fs_type}; dockerd's overlay2 data root needs a "
                f"real filesystem (use {BASE_DIR})"
            )
        self._keygen(self.admin_key, "provtest-admin")
        self._keygen(self.host_key, "provtest-hostkey")
        admin_pub = self.admin_key.with_suffix(".pub").read_text().strip()
        self.authorized_keys.write_text(f"{self.client_pubkey}\n{admin_pub}\n")
        self.authorized_keys.chmod(0o600)
        self.known_hosts.write_text(self.host_key_line() + "\n")
        (self.workdir / "daemon.json").write_text(
            json.dumps({"deprecated-key-path": str(self.workdir / "key.json")}) + "\n"
        )

    def _make_network(self) -> None:
        _run(["ip", "netns", "add", self.netns])
        veth_peer = ["peer", "name", self.ns_if, "netns", self.netns]
        _run(["ip", "link", "add", self.host_if, "type", "veth", *veth_peer])
        _run(["ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_if])
        _run(["ip", "link", "set", self.host_if, "up"])
        ns = ["ip", "-n", self.netns]
        _run([*ns, "addr", "add", f"{self.address}/30", "dev", self.ns_if])
        _run([*ns, "link", "set", self.ns_if, "up"])
        _run([*ns, "link", "set", "lo", "up"])
        routes = _run([*ns, "route", "show", "default"]).stdout.strip()
        if routes:
            raise RemoteHostError(f"{self.netns} unexpectedly has a default route: {routes}")

    def _start_holder(self, deadline: float) -> None:
        w = shlex.quote(str(self.workdir))
        script = "\n".join(
            [
                "set -eu",
                "mount -t tmpfs -o mode=0755,size=64m provtest-run /run",
                "mount -t tmpfs -o mode=0755,size=16m provtest-log /var/log",
                "mkdir -p -m 0755 /run/sshd /run/lock",
                f"ln -s {shlex.quote(str(self.docker_sock))} /run/docker.sock",
                f"echo {self.hostname} >/proc/sys/kernel/hostname",
                _cgroup_mount_script(),
                ": >/run/.provtest-ready",
                f'exec -a "provtest-holder {w}" sleep infinity',
            ]
        )
        enter_netns = ["ip", "netns", "exec", self.netns]
        unshare = ["unshare", "--mount", "--uts", "--propagation", "private", "--"]
        self._holder = _spawn_logged(
            [*enter_netns, *unshare, "bash", "-c", script], self.holder_log
        )
        ready = self._ns_root() / "run/.provtest-ready"
        _await_ready(
            self._holder,
            ready.exists,
            "namespace holder",
            "namespace holder did not get ready",
            deadline,
            0.02,
        )

    def _start_dockerd(self, deadline: float) -> None:
        argv = [
            "dockerd",
            "--config-file",
            str(self.workdir / "daemon.json"),
            "--data-root",
            str(self.data_root),
            "--exec-root",
            "/run/docker",
            "--pidfile",
            "/run/docker.pid",
            "-H",
            f"unix://{self.docker_sock}",
            "--bip",
            self.bip,
            "--default-address-pool",
            f"base={self.address_pool},size=24",
            "--iptables=true",
            "--cgroup-parent",
            self.cgroup_parent,
            "--storage-driver",
            "overlay2",
        ]
        # Pid files of a dockerd/containerd killed earlier would make the new ones refuse
        # to start if their pids have been reused meanwhile.
        ns_root = self._ns_root()
        (ns_root / "run/docker.pid").unlink(missing_ok=True)
        (ns_root / "run/docker/containerd/containerd.pid").unlink(missing_ok=True)
        self._dockerd = _spawn_logged([*self._nsenter(), *argv], self.dockerd_log)
        _await_ready(
            self._dockerd,
            lambda: _docker_ping(self.docker_sock),
            "dockerd",
            "dockerd did not answer /_ping in time",
            deadline,
            0.05,
        )

    def _stop_dockerd(self, timeout: float) -> None:
        proc, self._dockerd = self._dockerd, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        # dockerd stops its containerd on the way out; make sure nothing of it stays.
        leftovers = {
            p
            for p in _netns_pids(self.netns)
            if Path(_exe(p)).name in ("containerd", "docker-proxy")
        }
        _kill_and_wait(leftovers)

    def _remove_remote_containers(self) -> None:
        status, body = _docker_api(self.docker_sock, "GET", "/containers/json?all=1")
        if status != 200:
            return
        for container in json.loads(body):
            _docker_api(
                self.docker_sock,
                "DELETE",
                f"/containers/{container['Id']}?force=1&v=1",
                timeout=30.0,
            )

    def _write_sshd_config(self) -> None:
        def yes(flag: bool) -> str:
            return "yes" if flag else "no"

        config = f"""\
# provtest remote host {self.netns}
ListenAddress {self.address}:22
HostKey {self.host_key}
PidFile {self.sshd_pidfile}
AuthorizedKeysFile {self.authorized_keys}
StrictModes {yes(self._strict_modes_ok())}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM {yes(_root_password_locked())}
AllowTcpForwarding {yes(self._tcp_forwarding)}
AllowStreamLocalForwarding {yes(self._stream_local_forwarding)}
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
MaxSessions 64
MaxStartups 100:30:200
PrintMotd no
PrintLastLog no
Subsystem sftp internal-sftp
"""
        self.sshd_config.write_text(config)

    def _strict_modes_ok(self) -> bool:
        """StrictModes refuses an authorized_keys file below a group/world-writable or
        non-root-owned directory (e.g. under /tmp); say no only then."""
        for d in [self.workdir, *self.workdir.parents]:
            st = d.stat()
            if st.st_uid != 0 or st.st_mode & 0o022:
                return False
        return True

    def _start_sshd(self, deadline: float) -> None:
        self._write_sshd_config()
        self.sshd_pidfile.unlink(missing_ok=True)
        self.ns_run([_SSHD, "-t", "-f", str(self.sshd_config)])
        sshd = _spawn_logged(
            [*self._nsenter(), _SSHD, "-D", "-e", "-f", str(self.sshd_config)], self.sshd_log
        )
        self._sshd = sshd
        # sshd writes its PidFile once it listens: a readiness signal that needs no
        # connection, so it holds while the host is blackholed too.
        _await_ready(
            sshd,
            lambda: self._sshd_pidfile_is(sshd.pid),
            "sshd",
            f"sshd on {self.address}:22 did not start listening",
            deadline,
            0.02,
        )

    def _sshd_pidfile_is(self, pid: int) -> bool:
        try:
            return self.sshd_pidfile.read_text().strip() == str(pid)
        except OSError:
            return False

    def _wait_login(self, deadline: float) -> None:
        while True:
            result = _run(self.ssh_argv("true"), check=False, timeout=30.0)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RemoteHostError(f"key login to root@{self.address} failed: {result.stderr}")
            time.sleep(0.1)

    def _log_tails(self) -> str:
        return "\n".join(
            f"--- {log.name} (last lines) ---\n{_tail(log)}"
            for log in (self.dockerd_log, self.sshd_log, self.holder_log)
        )


def _root_password_locked() -> bool:
    """sshd without PAM refuses every login to an account whose password is locked ("!...");
    PAM (Debian's default) lets key logins through, so use it only then."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/shadow").read_text().splitlines():
            if line.startswith("root:"):
                return line.split(":")[1].startswith("!")
    return False


def _exe(pid: int) -> str:
    try:
        return str(Path(f"/proc/{pid}/exe").readlink())
    except OSError:
        return ""


# --- command line --------------------------------------------------------------------


def _wait_for_signal() -> None:
    got: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        got.append(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not got:
        signal.pause()


def main(argv: list[str]) -> int:
    usage = "usage: python -m tests.integration.remotehost up INDEX [PUBKEY_FILE] | down"
    if argv[:1] == ["down"] and len(argv) == 1:
        cleanup_stale()
        return 0
    if argv[:1] != ["up"] or len(argv) not in (2, 3) or not argv[1].isdigit():
        print(usage, file=sys.stderr)
        return 2
    index = int(argv[1])
    pubkey_file = Path(argv[2]) if len(argv) == 3 else Path.home() / ".ssh" / "id_ed25519.pub"
    if pubkey_file.exists():
        pubkey = pubkey_file.read_text().strip()
    else:
        pubkey = "# no client key given; use the admin key"
    host = RemoteHost(index, BASE_DIR / f"r{index}", pubkey)
    try:
        host.start()
        print(f"address:     {host.address}  ({host.ssh_url})")
        print(f"host key:    {host.host_key_fingerprint()}")
        print(f"ssh:         {shlex.join(host.ssh_argv())}")
        print(f"DOCKER_HOST: {host.docker_env()['DOCKER_HOST']}")
        print(f"started in {host.start_seconds:.2f}s; Ctrl-C tears it down", flush=True)
        _wait_for_signal()
    finally:
        began = time.monotonic()
        host.stop()
        print(f"torn down in {time.monotonic() - began:.2f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
