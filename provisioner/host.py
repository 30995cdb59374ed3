"""Facts read from the local machine: NTM's projects_base, the project dir and
its owner, and which agent credential paths exist. No Docker, no SSH here."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

from provisioner.config import AGENT_HOME
from provisioner.errors import ConfigError, ProvError


def ntm_config_path() -> Path:
    if explicit := os.environ.get("NTM_CONFIG"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "ntm" / "config.toml"


def ntm_projects_base() -> Path:
    """Where NTM looks for projects: the same order NTM itself uses."""
    if env := os.environ.get("NTM_PROJECTS_BASE"):
        return Path(env).expanduser().absolute()
    path = ntm_config_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        data = {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"Cannot read NTM's config file {path}",
            str(exc),
            "fix the file, or pass --project DIR so prov does not need NTM's projects_base.",
        ) from exc
    configured = data.get("projects_base")
    if isinstance(configured, str) and configured:
        return Path(configured).expanduser().absolute()
    return Path.home() / "ntm_Dev"


# prov as root, with no sudo caller to run the agent as: an ID from a range no
# login account or systemd dynamic user gets (useradd hands out 1000-60000,
# systemd 61184 up), so no account on this host can ever share the agent's
# access to a project.
ROOT_AGENT_IDS = range(61000, 61184)


def _root_agent_ids() -> tuple[int, int]:
    """The IDs the agent runs as when prov runs as root: the sudo caller's, else
    the first of ROOT_AGENT_IDS that no account or group on this host has."""
    import grp
    import pwd

    uid, gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if uid.isdigit() and gid.isdigit() and int(uid) != 0:
        return int(uid), int(gid)
    for candidate in ROOT_AGENT_IDS:
        try:
            pwd.getpwuid(candidate)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(candidate)
            continue
        except KeyError:
            return candidate, candidate
    raise ConfigError(
        "No free user ID for the agent",
        f"Every ID from {ROOT_AGENT_IDS.start} to {ROOT_AGENT_IDS.stop - 1} has an account or "
        "group on this host.",
        "give the project to a regular user (`chown -R USER: DIR`); the agent then runs as "
        "that user's ID.",
    )


@dataclass(frozen=True)
class ProjectDir:
    path: Path
    uid: int  # the agent's IDs
    gid: int
    # Root owns it and prov runs as root: the agent gets access through ACL
    # entries prov adds (projectacl), and takes away again at `rm`.
    grant: bool = False
    created: Path | None = None  # the topmost directory this run made (--create-dir)


def remove_created(project: ProjectDir) -> None:
    """Undo --create-dir after a failed `up`: remove the dirs this run made, from
    the project up to the topmost, each only while it is still empty."""
    if project.created is None:
        return
    path = project.path
    while True:
        try:
            path.rmdir()
        except OSError:
            return
        if path == project.created or path.parent == path:
            return
        path = path.parent


def resolve_project_dir(
    name: str, explicit: Path | None, create: bool, mounted: bool = True
) -> ProjectDir:
    """The project and the IDs the agent runs as there: its owner's. Never root:
    a root-owned project, with prov running as root, gets an unprivileged
    agent that prov grants access (`grant`); without root it is refused.
    `mounted=False`: the environment gets a copy (a remote engine's rsync),
    which is the agent's whoever owns the original."""
    path = (explicit.expanduser() if explicit else ntm_projects_base() / name).absolute()
    created: Path | None = None
    if not path.exists():
        if not create:
            raise ConfigError(
                f"Project directory {path} does not exist",
                "It is mounted into the container at the same path, where NTM will cd.",
                "create it, pass --create-dir to let prov create it, or point --project at "
                "an existing directory.",
            )
        created = path
        while not created.parent.exists():
            created = created.parent
        path.mkdir(parents=True)
        if os.geteuid() == 0:
            # Made by prov as root: the new, empty dir belongs to the user
            # agents run as, or they could not write to their own project.
            try:
                os.chown(path, *_root_agent_ids())
            except BaseException:
                remove_created(ProjectDir(path, 0, 0, created=created))
                raise
    if not path.is_dir():
        raise ConfigError(
            f"Project path {path} is not a directory", "", "point --project at a directory."
        )
    st = path.stat()
    if st.st_uid != 0:
        return ProjectDir(path, st.st_uid, st.st_gid, created=created)
    if not mounted:
        ids = _root_agent_ids() if os.geteuid() == 0 else (os.geteuid(), os.getegid())
        return ProjectDir(path, *ids, created=created)
    if os.geteuid() != 0:
        raise ConfigError(
            f"Project directory {path} is owned by root, and the agent never runs as root",
            f"prov runs the agent as your user (UID {os.geteuid()}), which could not write "
            "there, and without root prov cannot grant it access.",
            f"give the project to yourself (`sudo chown -R {os.geteuid()}:{os.getegid()} "
            f"{path}`), use a project dir you own, or run prov as root (it then grants the "
            "agent access with an ACL, and takes it away at `prov rm`).",
        )
    uid, gid = _root_agent_ids()
    return ProjectDir(path, uid, gid, grant=True, created=created)


@dataclass(frozen=True)
class CredentialMount:
    source: Path
    target: str


@dataclass(frozen=True)
class Credentials:
    found: tuple[CredentialMount, ...]  # mounted (login files, or whole dirs)
    missing: tuple[Path, ...]
    # Settings files offered as copies (with --credentials tokens, the default).
    settings: tuple[CredentialMount, ...] = ()


def writable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether `uid`/`gid` (the agent inside) may write `path`, by its mode bits."""
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def find_credentials(home: Path | None = None, whole: bool = False) -> Credentials:
    """The agents' logins that exist in `home`: their login files (with the
    settings files to offer as copies), or with `whole` their entire dirs
    (`--credentials mount` and `copy`). A missing source is not mounted:
    Docker would make an empty root-owned directory in its place."""
    from provisioner.agents import AGENTS

    home = home or Path.home()
    found: list[CredentialMount] = []
    missing: list[Path] = []
    settings: list[CredentialMount] = []
    for agent in AGENTS:
        logins = (agent.login.rel,) if agent.login is not None else ()
        for rel in agent.dirs if whole else logins:
            src = home / rel
            if src.exists() and (whole or src.is_file()):
                found.append(CredentialMount(src, f"{AGENT_HOME}/{rel}"))
            else:
                missing.append(src)
        if not whole:
            settings += [
                CredentialMount(home / rel, f"{AGENT_HOME}/{rel}")
                for rel in agent.settings
                if (home / rel).is_file()
            ]
    return Credentials(tuple(found), tuple(missing), tuple(settings))


EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")


def extra_ca_files() -> tuple[Path, ...]:
    """CA certificates this host trusts beyond the distribution's (TLS-inspecting
    proxies put theirs here); images get them so HTTPS works inside too."""
    if not EXTRA_CA_DIR.is_dir():
        return ()
    return tuple(sorted(p for p in EXTRA_CA_DIR.rglob("*.crt") if p.is_file()))


def ca_pem(path: Path, cache: Path | None = None) -> bytes:
    """The X.509 certificate(s) in `path` (PEM, or one DER certificate, as .crt
    files often are) as PEM; anything else is a ConfigError. With `cache` (a
    directory of prov's own), a file read before is not parsed again: the
    PEM made from the same bytes is kept there under their SHA-256, which
    spares every `up` the ~20 ms of loading the X.509 code."""
    from provisioner.fsutil import atomic_write, read_user_bytes

    data = read_user_bytes(path, "--ca-cert")
    kept = cache / f"{hashlib.sha256(data).hexdigest()}.pem" if cache is not None else None
    if kept is not None:
        with contextlib.suppress(OSError):
            pem = kept.read_bytes()
            if pem.startswith(b"-----BEGIN CERTIFICATE-----"):
                return pem
    pem = _parse_ca(path, data)
    if kept is not None:
        with contextlib.suppress(ProvError):  # only a cache: the next run parses again
            atomic_write(kept, pem, 0o600)
    return pem


def _parse_ca(path: Path, data: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    certs: list[x509.Certificate] = []
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        elif data:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(
            f"--ca-cert {path} is not an X.509 certificate",
            "prov bakes the CAs you pass into the image; it read no certificate from that file.",
            "pass a CA certificate in PEM (.pem, .crt) or DER (.crt, .der) form.",
        )
    return b"".join(cert.public_bytes(Encoding.PEM) for cert in certs)


def npm_registry_url(cache: Path | None = None) -> str:
    """The registry the agent layer fetches from: this host's npm setting, else
    npm's own default as this host's npm reports it (asked once, ~0.5 s, and
    kept in `cache` while npm is the same binary); "" when there is no npm here
    (the build then lets its own npm choose)."""
    configured = npm_registry()
    if configured:
        return configured
    npm = shutil.which("npm")
    if npm is None:
        return ""
    try:
        st = Path(os.path.realpath(npm)).stat()
        identity = f"{os.path.realpath(npm)}:{st.st_mtime_ns}:{st.st_size}"
    except OSError:
        return ""
    if cache is not None:
        try:
            data = json.loads(cache.read_text())
            if data.get("npm") == identity and isinstance(data.get("url"), str):
                return str(data["url"])
        except (OSError, ValueError, AttributeError):
            pass
    try:
        result = subprocess.run(
            [npm, "config", "get", "registry"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    url = result.stdout.strip() if result.returncode == 0 else ""
    if not url.startswith(("https://", "http://")):
        return ""
    if cache is not None:
        from provisioner.fsutil import atomic_write

        with contextlib.suppress(OSError, ConfigError):
            atomic_write(cache, json.dumps({"npm": identity, "url": url}))
    return url


def npm_registry() -> str:
    """The npm registry this host's npm uses, if configured; "" means npm's default."""
    for var in ("NPM_CONFIG_REGISTRY", "npm_config_registry"):
        if os.environ.get(var):
            return os.environ[var]
    for rc in (Path.home() / ".npmrc", Path("/etc/npmrc"), Path("/usr/etc/npmrc")):
        try:
            for line in rc.read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip() == "registry":
                    return value.strip()
        except OSError:
            continue
    return ""


def copy_credentials(
    creds: tuple[CredentialMount, ...], dest: Path, uid: int, gid: int
) -> tuple[CredentialMount, ...]:
    """Private per-environment copies of the credential paths (made once), so
    parallel environments do not fight over token refreshes. Never readable by
    others; owned by the agent's UID so it can refresh them."""
    copies = []
    for cred in creds:
        rel = cred.target.removeprefix(AGENT_HOME + "/")
        target = dest / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if cred.source.is_dir():
                shutil.copytree(cred.source, target, symlinks=True)
            else:
                shutil.copy2(cred.source, target)
            for path in [target, *(target.rglob("*") if target.is_dir() else [])]:
                if not path.is_symlink():
                    path.chmod(0o700 if path.is_dir() else 0o600)
                    if os.geteuid() == 0:
                        os.chown(path, uid, gid)
        copies.append(CredentialMount(target, cred.target))
    if os.geteuid() == 0 and dest.exists():
        os.chown(dest, uid, gid)
    return tuple(copies)
