#!/usr/bin/env python3
"""Trace where one `prov up` spends its time: a timeline of its Engine API
calls, its ssh commands and its readiness waits, from the process's start.

    .venv/bin/python scripts/trace.py NAME [prov up options...]

It runs `prov up NAME ...` in this process with each of those wrapped by a
stopwatch (nothing else changes), then prints one line per call: when it
started (ms after the process started, Python's own start-up included), how
long it took, and what it was. Calls in threads (the proxy's start, ten
environments at once) are marked with their thread. Imports are the time
before the first line.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

T0 = time.monotonic()
_started = T0
try:  # the process's own start, as the kernel counts it
    with open("/proc/self/stat", "rb") as stat:  # noqa: PTH123 - a proc file
        ticks = int(stat.read().rsplit(b")", 1)[1].split()[19])
    with open("/proc/uptime", "rb") as uptime:  # noqa: PTH123
        since_boot = float(uptime.read().split()[0])
    import os

    _started = T0 - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))
except (OSError, ValueError, IndexError):
    pass

EVENTS: list[tuple[float, float, str, str]] = []  # start, seconds, thread, what
_lock = threading.Lock()


def _wrap(owner: Any, attr: str, describe: Callable[..., str]) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        begin = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            took = time.monotonic() - begin
            with _lock:
                EVENTS.append(
                    (begin, took, threading.current_thread().name, describe(*args, **kwargs))
                )

    setattr(owner, attr, timed)


def main() -> None:
    from provisioner import openssh, ready
    from provisioner.engine import api

    imported = time.monotonic()
    _wrap(
        api.Engine,
        "_call",
        lambda _self, action, method, path, *a, **k: f"API {method} {path} ({action})",
    )
    _wrap(
        openssh,
        "system_ssh",
        lambda _config, alias, command="", *a, **k: f"ssh {alias} {command[:50]!r}",
    )
    for name in ("wait_banner", "wait_alias_login", "wait_listening"):
        _wrap(ready, name, lambda *a, _n=name, **k: f"ready.{_n}")
    from provisioner import cli

    sys.argv = ["prov", "up", *sys.argv[1:]]
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    end = time.monotonic()
    print(f"\n{'at ms':>7} {'took ms':>8}  what", file=sys.stderr)
    print(f"{0:7.0f} {(T0 - _started) * 1000:8.0f}  Python start-up", file=sys.stderr)
    print(
        f"{(T0 - _started) * 1000:7.0f} {(imported - T0) * 1000:8.0f}  imports (engine, ssh)",
        file=sys.stderr,
    )
    for begin, took, thread, what in sorted(EVENTS):
        mark = "" if thread == "MainThread" else f" [{thread}]"
        print(f"{(begin - _started) * 1000:7.0f} {took * 1000:8.1f}  {what}{mark}", file=sys.stderr)
    print(f"{(end - _started) * 1000:7.0f} {'':>8}  exit {code}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
