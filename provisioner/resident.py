"""prov's resident process: a warm copy of prov that serves the next runs.

Python's start and prov's imports take about 0.15 s before a command does
anything, which is the whole of a no-op `up`'s budget. So the first run of
prov leaves a resident behind (one per user and per copy of prov's code): it
has imported prov and built the CLI, and does nothing else. A later `prov`
run (the client, `client()` below: only the standard library's C modules, a
few milliseconds) connects to it over a Unix socket and sends its argv,
environment, working directory and umask, with its own stdin, stdout and
stderr (SCM_RIGHTS). The resident forks; the child takes those as its own and
runs the command exactly as a run in the client's process would, then answers
with the exit code, or with a command to exec (`prov ssh`, `prov exec`,
`up --spawn`), which the client execs itself so that the terminal and the
process are the user's, as before. Ctrl-C (and SIGTERM, SIGHUP) on the client
is sent on to the child's process group, as a terminal sends it to the
foreground group. Nothing is shared between runs: each is a fresh fork of a
process that has only imported prov, and it holds no secret (its own
environment is a few variables; each run brings its own).

Only the user reaches it: the socket lives in a directory that must be the
user's own with mode 0700 (XDG_RUNTIME_DIR, else /tmp, `prov-UID`), and both
ends check the other's UID (SO_PEERCRED). A resident whose code changed is
never used: the socket's name is a digest of prov's files (names, sizes,
mtimes), the Python that runs it and where it lives. It leaves after
PROV_RESIDENT_IDLE seconds without a run (default 1800), as soon as prov's
files change, or as soon as its socket is no longer its own.
PROV_RESIDENT=0 runs every command in its own process and starts no resident.
"""

from __future__ import annotations

import _socket
import _struct
import marshal
import os
import sys
import zlib
from collections.abc import Callable
from typing import Any, NoReturn

PROTOCOL = 1
IDLE_DEFAULT = 1800.0
_SIGNALS = (2, 15, 1)  # SIGINT, SIGTERM, SIGHUP: what a terminal or a kill sends
_FDS = (0, 1, 2)
_MAX_REQUEST = 8 << 20


def enabled(environ: dict[str, str] | os._Environ[str]) -> bool:
    return environ.get("PROV_RESIDENT", "1") != "0"


def run_dir(environ: dict[str, str] | os._Environ[str], uid: int) -> str:
    """Where the user's residents listen: inside XDG_RUNTIME_DIR when it is an
    absolute path, else /tmp."""
    base = environ.get("XDG_RUNTIME_DIR", "")
    if not base.startswith("/"):
        base = "/tmp"  # a directory of the user's own, 0700, checked before use
    return f"{base}/prov-{uid}"


def private_dir(path: str, uid: int) -> bool:
    """`path` is a directory (not a link) of `uid`'s that no one else may enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_mode & 0o170000) == 0o040000 and st.st_uid == uid and not st.st_mode & 0o077


def python_environ(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The variables that change what Python imports and how (PYTHONPATH,
    PYTHONHOME, PYTHONSAFEPATH, ...): a run with others is no run a resident
    started under these may serve."""
    return {k: v for k, v in environ.items() if k.startswith("PYTHON")}


def fingerprint(package: str, executable: str, version: str, python: str = "") -> str:
    """A digest of the code a resident runs: prov's files (by name, size and
    mtime), the Python that runs them, where they live, and the PYTHON*
    variables it runs under (`python`, as `_python_key` writes them)."""
    head = f"{PROTOCOL}\0{executable}\0{version}\0{package}\0{python}"
    digest = zlib.crc32(head.encode())
    found = []
    for top, dirs, files in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found += [f"{top}/{name}" for name in files if name.endswith(".py")]
    for path in sorted(found):
        try:
            st = os.stat(path)
        except OSError:
            continue
        digest = zlib.crc32(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode(), digest)
    return f"{digest:08x}"


def _package() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def _python_key(environ: dict[str, str] | os._Environ[str]) -> str:
    return "\0".join(f"{k}={v}" for k, v in sorted(python_environ(environ).items()))


def socket_path(environ: dict[str, str] | os._Environ[str]) -> str:
    fp = fingerprint(_package(), sys.executable, sys.version, _python_key(environ))
    return f"{run_dir(environ, os.getuid())}/{fp}.sock"


# --- the wire: length-prefixed marshal values (both ends are the same Python)


def encode(value: Any) -> bytes:
    data = marshal.dumps(value)
    return _struct.pack("!I", len(data)) + data


def _read(conn: Any, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(min(size - len(data), 1 << 16))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def read_message(conn: Any) -> Any:
    (size,) = _struct.unpack("!I", _read(conn, 4))
    if size > _MAX_REQUEST:
        raise EOFError
    return marshal.loads(_read(conn, size))  # noqa: S302 - from this user's own prov (UID checked)


def _peer_uid(conn: Any) -> int:
    raw = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int(_struct.unpack("3i", raw)[1])


def exit_code(code: object) -> int:
    """A SystemExit's code as the process's exit status, as Python makes it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return 1


# --- the client


def client(argv: list[str]) -> None:
    """Have the user's resident run `argv`; return only when none can (the
    caller then runs it in this process). Never returns once a resident took it."""
    environ = os.environ
    if not enabled(environ):
        return
    uid = os.getuid()
    if not private_dir(run_dir(environ, uid), uid):
        return
    try:
        for fd in _FDS:
            os.fstat(fd)
        cwd = os.getcwd()
    except OSError:
        return
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.connect(socket_path(environ))
        if _peer_uid(conn) != uid:
            conn.close()
            return
        umask = os.umask(0o077)
        os.umask(umask)
        streams = [(s.encoding, s.errors) if s else ("utf-8", "strict") for s in _stdio()]
        request = encode((PROTOCOL, argv, dict(environ), cwd, umask, streams, _called_as(argv)))
        fds = _struct.pack("3i", *_FDS)
        sent = conn.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        conn.sendall(request[sent:])
    except OSError:
        conn.close()
        return
    _follow(conn)


def _called_as(argv: list[str]) -> str:
    """The program's name as click makes it in a run of its own (its
    _detect_program_name): `prov`, or `python -m provisioner`."""
    package = getattr(sys.modules.get("__main__"), "__package__", None)
    path = argv[0] if argv else "prov"
    if not package:
        return os.path.basename(path)
    name = os.path.splitext(os.path.basename(path))[0]
    module = package if name == "__main__" else f"{package}.{name}"
    return f"python -m {module.lstrip('.')}"


def _stdio() -> list[Any]:
    return [sys.stdin, sys.stdout, sys.stderr]


def _follow(conn: Any) -> None:
    """Wait for the child's answer, passing signals on; exit (or exec) as it says."""
    import _signal  # type: ignore[import-not-found]  # signal.py would import enum

    child: list[int] = []
    caught: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        caught.append(signum)
        if child:
            _kill_group(child[0], signum)

    for signum in _SIGNALS:
        _signal.signal(signum, forward)
    while True:
        try:
            message = read_message(conn)
        except (EOFError, OSError, ValueError):
            break
        if message[0] == "fallback":  # the child ran nothing: run it here
            conn.close()
            for signum in _SIGNALS:
                back = _signal.default_int_handler if signum == 2 else _signal.SIG_DFL
                _signal.signal(signum, back)
            return
        if message[0] == "pid":
            child.append(int(message[1]))
            for signum in caught:
                _kill_group(child[0], signum)
        elif message[0] == "exit":
            os._exit(int(message[1]))
        elif message[0] == "exec":
            _exec_here(list(message[1]), dict(message[2]), str(message[3]))
    if caught:
        os._exit(128 + caught[-1])
    os.write(
        2,
        b"error: prov's resident process ended this run without an exit status (it was "
        b"killed, or crashed). What the command did before that is done; nothing else "
        b"is known. Hint: run it again; PROV_RESIDENT=0 runs prov in its own process.\n",
    )
    os._exit(70)


def _kill_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except OSError:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def _exec_here(argv: list[str], env: dict[str, str], cwd: str) -> NoReturn:
    try:
        os.chdir(cwd)
        os.execvpe(argv[0], argv, env)  # noqa: S606 - the handover the run asked for
    except OSError as exc:
        os.write(
            2,
            f"error: Cannot run {argv[0]}. {exc}. Hint: install {argv[0]} or put it "
            "on PATH.\n".encode(errors="replace"),
        )
        os._exit(127)


# --- inside a run the resident serves

_answer: Any = None  # the connection back to the client, in a served run
prog_name = ""  # in a served run: the name the client was called by, for click


def serving() -> bool:
    return _answer is not None


def hand_over(argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
    """Replace this run by `argv` (ssh, ntm, docker exec): here with exec, or, in a
    served run, by the client's own exec. OSError when `argv[0]` cannot be found."""
    environ = dict(os.environ if env is None else env)
    if _answer is None:
        os.execvpe(argv[0], argv, environ)  # noqa: S606 - replacing prov is the point
    import shutil

    if shutil.which(argv[0], path=environ.get("PATH")) is None:
        raise FileNotFoundError(2, "No such file or directory", argv[0])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    _answer.sendall(encode(("exec", argv, environ, os.getcwd())))
    os._exit(0)


def describe() -> str:
    """What this run knows of the resident, for `prov doctor`."""
    if not enabled(os.environ):
        return "off (PROV_RESIDENT=0): every prov command runs in its own process"
    if _answer is None:
        return (
            "none served this run (it had its own process; it leaves one that serves the "
            "next runs: PROV_RESIDENT=0 turns that off)"
        )
    resident = os.getppid()
    try:
        with open(f"/proc/{resident}/status", encoding="ascii") as status:
            rss = next((ln.split()[1] for ln in status if ln.startswith("VmRSS:")), "?")
    except OSError:
        rss = "?"
    return (
        f"this run was served by prov's resident (pid {resident}, {rss} kB resident); it "
        "leaves after PROV_RESIDENT_IDLE seconds without a run (default 1800); "
        "PROV_RESIDENT=0 turns it off"
    )


# --- the resident itself


def serve(path: str, idle: float, run: Callable[[], None], preload: Callable[[], None]) -> None:
    """Listen at `path` until idle; `preload` imports what runs need, `run`
    runs one command in a child (sys.argv and the standard streams set)."""
    import fcntl
    import gc
    import select
    import signal
    import socket
    import time

    uid = os.getuid()
    folder = os.path.dirname(path)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    if not private_dir(folder, uid):
        return
    lock = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another resident of this code is starting or serving
    preload()
    gc.freeze()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    listener.bind(staging)
    os.chmod(staging, 0o600)  # the directory is 0700 already; the socket too
    os.rename(staging, path)
    own = os.stat(path).st_ino
    code = os.path.basename(path).removesuffix(".sock")
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    last = time.monotonic()
    while True:
        ready, _, _ = select.select([listener], [], [], min(idle, 2.0))
        try:
            if os.stat(path).st_ino != own:
                return
        except OSError:
            return
        if not ready:
            now = fingerprint(_package(), sys.executable, sys.version, _python_key(os.environ))
            stale = now != code
            if stale or time.monotonic() - last >= idle:
                os.unlink(path)  # prov's files changed (the next run starts another), or idle
                return
            continue
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        last = time.monotonic()
        if os.fork() == 0:
            listener.close()
            os.close(lock)
            _child(conn, run)
        conn.close()


def _child(conn: Any, run: Callable[[], None]) -> NoReturn:
    import signal
    import socket
    import struct

    global _answer, prog_name
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        if _peer_uid(conn) != os.getuid():
            os._exit(0)
        conn.settimeout(10)
        head, ancillary, _, _ = conn.recvmsg(4, socket.CMSG_SPACE(_struct.calcsize("3i")))
        fds: list[int] = []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += list(_struct.unpack(f"{len(data) // 4}i", data[: len(data) // 4 * 4]))
        (size,) = _struct.unpack("!I", _read(conn, 4 - len(head)) if len(head) < 4 else head)
        request = marshal.loads(_read(conn, size)) if size <= _MAX_REQUEST else None  # noqa: S302
        conn.settimeout(None)
    except (OSError, EOFError, ValueError, struct.error):
        os._exit(0)
    if not request or request[0] != PROTOCOL or len(fds) != 3:
        conn.sendall(encode(("fallback",)))
        os._exit(0)
    _, argv, environ, cwd, umask, streams, called = request
    try:
        os.chdir(cwd)
    except OSError:
        conn.sendall(encode(("fallback",)))
        os._exit(0)
    for target, fd in zip(_FDS, fds, strict=True):
        os.dup2(fd, target)
        if fd not in _FDS:
            os.close(fd)
    os.umask(umask)
    os.environ.clear()
    os.environ.update(environ)
    sys.argv = list(argv)
    _reopen_stdio(streams)
    os.setpgid(0, 0)  # the client's signals go to this run and what it starts
    _answer, prog_name = conn, called
    conn.sendall(encode(("pid", os.getpid())))
    code = 0
    try:
        run()
    except SystemExit as exc:
        if exc.code is not None and not isinstance(exc.code, int):
            sys.stderr.write(f"{exc.code}\n")
        code = exit_code(exc.code)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # entry.main makes prov's own errors paragraphs; not this
        code = 70
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        conn.sendall(encode(("exit", code)))
    except OSError:
        pass
    os._exit(code)


def _reopen_stdio(streams: list[tuple[str, str]]) -> None:
    """The standard streams on the client's descriptors, buffered as Python
    buffers them at start: stdout by line only on a terminal, stderr by line."""
    (in_enc, in_err), (out_enc, out_err), (err_enc, err_err) = streams
    sys.stdin = open(0, encoding=in_enc, errors=in_err, closefd=False)  # noqa: SIM115
    out_line = os.isatty(1)
    sys.stdout = open(  # noqa: SIM115
        1, "w", encoding=out_enc, errors=out_err, closefd=False, buffering=1 if out_line else -1
    )
    sys.stderr = open(  # noqa: SIM115
        2, "w", encoding=err_enc, errors=err_err, closefd=False, buffering=1
    )


def start(environ: dict[str, str] | os._Environ[str]) -> None:
    """Start the user's resident for this code in the background (it leaves at
    once if one already serves); errors are ignored: prov works without it."""
    import subprocess

    if not enabled(environ):
        return
    keep = {k: environ[k] for k in ("PATH", "LANG", "LC_ALL", "PROV_RESIDENT_IDLE") if k in environ}
    keep["XDG_RUNTIME_DIR"] = environ.get("XDG_RUNTIME_DIR", "")
    keep.update(python_environ(environ))  # it imports what the run that started it did
    package = _package()
    try:
        subprocess.Popen(  # this Python, this package
            [sys.executable, "-m", "provisioner.resident", socket_path(environ)],
            cwd=os.path.dirname(package),
            env=keep,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        pass


def preload() -> None:
    """What runs need, imported once here instead of in every run."""
    import importlib

    from provisioner import cli

    cli.build()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


PRELOAD = (
    "provisioner.cli",
    "typer.main",
    "provisioner.service",
    "provisioner.state",
    "provisioner.lifecycle",
    "provisioner.prepare",
    "provisioner.checks",
    "provisioner.reconcile",
    "provisioner.slots",
    "provisioner.engine.api",
    "provisioner.engine.site",
    "rich.console",
    "rich.text",
    # What an `up` or an `ls` still imported after the above (measured: ~5 ms).
    "provisioner.agents",
    "provisioner.keeper",
    "provisioner.entry",
    "encodings.idna",
    "concurrent.futures.thread",
    "typer._click.decorators",
)


def run_entry() -> None:
    from provisioner import entry

    entry.main()


if __name__ == "__main__":
    # Served runs must see this module's state as prov's code imports it
    # (provisioner.resident), not as this __main__ copy of it.
    from provisioner import resident as _resident

    try:
        _idle = float(os.environ.get("PROV_RESIDENT_IDLE", "") or IDLE_DEFAULT)
    except ValueError:
        _idle = IDLE_DEFAULT
    _resident.serve(sys.argv[1], max(_idle, 1.0), _resident.run_entry, _resident.preload)
