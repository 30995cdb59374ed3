"""What an engine host has (memory, CPUs, storage driver), which sizes an
environment's default limits (limits.py): Docker's /info, asked once a day per
engine and kept in PROV_HOME's cache, since /info takes ~40 ms and `up` must
not get slower for it."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict

from provisioner import limits
from provisioner.config import ProvPaths
from provisioner.engine import Engine
from provisioner.errors import ProvError
from provisioner.fsutil import atomic_write

ENGINE_SIZE_SECONDS = 24 * 3600  # how long what an engine host has is taken as known


def host_size(engine: Engine, paths: ProvPaths) -> limits.HostSize:
    """What the engine host has (memory, CPUs, storage driver), which sizes
    the default limits: asked with /info once a day per engine and kept in
    PROV_HOME's cache, so that `up` pays nothing for it on the default path."""
    cache, key, now = paths.engine_sizes_cache, engine.target.host, time.time()
    try:
        known = json.loads(cache.read_text())
        entry = known[key]
        if now - float(entry["at"]) < ENGINE_SIZE_SECONDS:
            return limits.HostSize(
                int(entry["memory"]),
                int(entry["cpus"]),
                str(entry["driver"]),
                str(entry["backing"]),
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        known = {}
    size = limits.HostSize.from_info(engine.info())
    if not isinstance(known, dict):
        known = {}
    known[key] = {**asdict(size), "at": now}
    with contextlib.suppress(ProvError):  # only a cache
        atomic_write(cache, json.dumps(known))
    return size
