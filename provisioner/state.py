"""prov's record of each environment, kept in PROV_HOME/envs/NAME/env.json.

Together with the container's labels this is all prov knows between runs; it
never relies on in-memory state.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from provisioner.config import ProvPaths
from provisioner.errors import ConfigError, NotFound
from provisioner.fsutil import atomic_write

RECORD_FILE = "env.json"


@dataclass(frozen=True)
class EnvRecord:
    name: str
    port: int
    bind: str
    project_dir: str
    identity_file: str
    base_image: str
    # Where the alias connects: the published port on loopback, or the
    # environment's own address on its internal network (port 22).
    ssh_host: str = ""
    ssh_port: int = 0
    # The engine it runs on (its address), and on a remote one how the project
    # gets there (rsync / none); "" for records made before engines were kept.
    engine: str = ""
    sync: str = ""
    # The agent's UID, granted access to a root-owned project by ACL (0: none).
    project_acl_uid: int = 0
    # --protect paths, one a line (the defaults are prov's own; see protect).
    protect: str = ""
    # Branch mode: the clone's branch and the commit it started at ("": none).
    branch: str = ""
    branch_base: str = ""


_FIELDS = fields(EnvRecord)


def save(paths: ProvPaths, record: EnvRecord) -> None:
    atomic_write(
        paths.env_dir(record.name) / RECORD_FILE, json.dumps(asdict(record), indent=2) + "\n", 0o600
    )


def load(paths: ProvPaths, name: str) -> EnvRecord | None:
    path = paths.env_dir(name) / RECORD_FILE
    try:
        data = json.loads(path.read_text())
        # A field an earlier prov wrote and no longer keeps is skipped.
        return EnvRecord(**{f.name: data[f.name] for f in _FIELDS if f.name in data})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"prov's record of {name!r} is unreadable",
            f"{path}: {exc}",
            f"remove {path} and run `prov up {name}` again.",
        ) from exc


def engine_of(paths: ProvPaths, name: str) -> str:
    """The engine NAME's record says it was made on ("": no record, none kept,
    or a record the command itself will say is unreadable)."""
    try:
        record = load(paths, name)
    except ConfigError:
        return ""
    return record.engine if record is not None else ""


def require(paths: ProvPaths, name: str) -> EnvRecord:
    record = load(paths, name)
    if record is None:
        raise NotFound(
            f"No environment named {name!r}",
            f"Nothing under {paths.envs}.",
            f"create it with `prov up {name}`.",
        )
    return record
