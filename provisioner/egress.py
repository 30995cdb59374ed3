"""The egress allowlist: which domain names an environment may reach through
its proxy in `--egress allowlist` mode.

The default list covers the agents' API and login endpoints, GitHub over
HTTPS, and the package registries this machine's own tools are configured to
use (npm, pip, apt), read from their configuration at run time so no registry
is written into prov. `--allow` and the user's file
($XDG_CONFIG_HOME/prov/egress-allow, one name a line) add to it; a project's
own files never can (a cloned repository must not open the network).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import baseimage, host
from provisioner.config import parse_domain, parse_net
from provisioner.errors import ConfigError, UsageError
from provisioner.fsutil import atomic_write

AGENT_DOMAINS = (
    # Claude Code: API, login, its feature flags and error reports.
    "anthropic.com",
    "claude.ai",
    "claude.com",
    # Codex: API and ChatGPT login.
    "openai.com",
    "chatgpt.com",
    # Gemini CLI: API, Google login, Code Assist.
    "generativelanguage.googleapis.com",
    "cloudcode-pa.googleapis.com",
    "oauth2.googleapis.com",
    "www.googleapis.com",
    "accounts.google.com",
)
GITHUB_DOMAINS = (
    "github.com",
    "githubusercontent.com",
    "codeload.github.com",
)


def user_file() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "prov" / "egress-allow"


def _host_of(url: str) -> str | None:
    host_name = urllib.parse.urlsplit(url.strip()).hostname
    return host_name.lower() if host_name else None


def _npm_registry(npm_cache: Path | None) -> str | None:
    """The host name of the registry this host's npm uses, asked the way (and
    through the cache) the image build asks it."""
    return _host_of(host.npm_registry_url(npm_cache)) or None


def _pip_indexes() -> list[str]:
    urls = [os.environ.get(v, "") for v in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")]
    hosts = [h for url in " ".join(urls).split() if (h := _host_of(url))]
    if not os.environ.get("PIP_INDEX_URL"):
        try:
            # pip's own default index and the host its files come from.
            from pip._internal.models.index import PyPI

            hosts += [h for h in (_host_of(PyPI.url), PyPI.file_storage_domain) if h]
        except ImportError:
            pass
    return hosts


def _apt_mirror() -> str | None:
    try:
        fields = baseimage.parse_os_release(Path("/etc/os-release").read_text())
    except OSError:
        return None
    mirror = baseimage.host_mirror(fields.get("VERSION_CODENAME", ""))
    return _host_of(mirror) if mirror else None


_DEFAULTS_LOCK = threading.Lock()
_defaults: tuple[str, ...] | None = None
NPMRC_FILES = ("/etc/npmrc", "/usr/etc/npmrc")
ENV_INPUTS = ("NPM_CONFIG_REGISTRY", "npm_config_registry", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")


def _inputs_fingerprint() -> str:
    """What the registries are read from: a change in any of these files (or
    in npm itself) or variables gives another fingerprint."""
    files = [Path.home() / ".npmrc", *map(Path, NPMRC_FILES), Path("/etc/os-release")]
    files += [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    npm = shutil.which("npm")
    if npm:
        files.append(Path(os.path.realpath(npm)))
    stats = []
    for path in files:
        try:
            st = path.stat()
            stats.append(f"{path}:{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            stats.append(f"{path}:-")
    env = [f"{v}={os.environ.get(v, '')}" for v in ENV_INPUTS]
    digest = hashlib.sha256("\n".join([*stats, *env, sys.version]).encode())
    return digest.hexdigest()


def default_allowlist(cache: Path | None = None, npm_cache: Path | None = None) -> tuple[str, ...]:
    """The default names; read once a run (`prov up a b c` asks npm, ~0.5 s of
    CPU, once) and kept in `cache` until the configuration it came from changes.
    `npm_cache`: where npm's answer is kept (shared with the image build)."""
    global _defaults
    with _DEFAULTS_LOCK:
        if _defaults is None:
            _defaults = _cached_defaults(cache, npm_cache)
        return _defaults


def _cached_defaults(cache: Path | None, npm_cache: Path | None) -> tuple[str, ...]:
    fingerprint = _inputs_fingerprint() if cache is not None else ""
    if cache is not None:
        try:
            data = json.loads(cache.read_text())
            if data.get("inputs") == fingerprint and all(isinstance(d, str) for d in data["names"]):
                return tuple(data["names"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # missing or unreadable: read the configuration again
    registries = [h for h in (_npm_registry(npm_cache), _apt_mirror(), *_pip_indexes()) if h]
    names = tuple(dict.fromkeys([*AGENT_DOMAINS, *GITHUB_DOMAINS, *registries]))
    if cache is not None:
        with contextlib.suppress(OSError):  # only a cache
            atomic_write(cache, json.dumps({"inputs": fingerprint, "names": names}))
    return names


def user_allowlist() -> tuple[str, ...]:
    """The user file's domain names."""
    return tuple(e for e in _user_entries() if "/" not in e and " " not in e)


def user_allow_nets() -> tuple[str, ...]:
    """The user file's address ranges (lines such as 10.20.0.0/16)."""
    return tuple(e for e in _user_entries() if "/" in e and " " not in e)


def user_hosts() -> tuple[str, ...]:
    """The user file's address lines ("10.20.0.5 mirror.corp.example", as in
    /etc/hosts): where the proxy finds those names before it asks DNS, for
    names no DNS it can ask knows (an internal mirror). They allow nothing:
    each name must be allowed, and a private address's range named, as for
    any other."""
    return tuple(e for e in _user_entries() if " " in e)


def _user_entries() -> tuple[str, ...]:
    """The user file's lines: domain names, address ranges (normalised, so
    with a "/") for addresses the proxy otherwise refuses, and an address
    with the names it has ("ADDRESS NAME...", normalised)."""
    path = user_file()
    try:
        data = path.read_bytes()[: 1 << 20]
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}", str(exc), "fix or remove the file.") from exc
    domains = []
    for number, raw in enumerate(data.decode(errors="replace").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            domains.append(_user_entry(line))
        except UsageError as exc:
            raise ConfigError(
                f"{path} line {number} is neither a domain name, an address range nor an "
                f"address with its names: {line!r}",
                exc.seen,
                "write one domain name (subdomains are allowed with it), one address "
                "range such as 10.20.0.0/16, or an address and its names such as "
                "10.20.0.5 mirror.corp.example per line.",
            ) from None
    return tuple(domains)


def _user_entry(line: str) -> str:
    address, *names = line.split()
    if not names:
        return parse_net(line) if _looks_like_address(line) else parse_domain(line)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise UsageError(
            f"Invalid address {address!r}",
            "A line with a space names one address (no range) and then its names.",
            "e.g. 10.20.0.5 mirror.corp.example.",
        ) from None
    return " ".join((str(ip), *(parse_domain(n) for n in names)))


def _looks_like_address(text: str) -> bool:
    return "/" in text or ":" in text or text.replace(".", "").isdigit()


def allowed_nets(extra: tuple[str, ...]) -> tuple[str, ...]:
    """The private, loopback or link-local ranges the proxy may reach after all
    (--allow-net and the user file's ranges), sorted, without repeats."""
    return tuple(sorted({*user_allow_nets(), *(parse_net(n) for n in extra)}))


def allowlist(
    extra: tuple[str, ...], cache: Path | None = None, npm_cache: Path | None = None
) -> tuple[str, ...]:
    """Everything an allowlist environment may reach, sorted, without repeats."""
    defaults = default_allowlist(cache, npm_cache)
    names = [*defaults, *user_allowlist(), *(parse_domain(d) for d in extra)]
    return tuple(sorted(set(names)))


# --- what the proxy logged -------------------------------------------------------
# squid's access log as prov configures it (injection.squid_conf), a line per
# request: "prov TIME CLIENT STATUS/CODE METHOD URL SERVER BYTES REASON"
# (REASON: why it was refused, "-" if prov's rules did not say; older proxies
# wrote no REASON).
REASONS = {
    "private-address": "its address is private, loopback or link-local; "
    "--allow-net RANGE allows it",
    "port": "port {port} is not allowed",
}


@dataclass(frozen=True)
class ProxyLog:
    denials: tuple[str, ...]  # the refusals, oldest first, in words
    opened: dict[str, int]  # host -> requests the proxy opened (a secret's host)
    allowed: dict[str, int] = field(default_factory=dict)  # host -> requests let through
    recent: tuple[str, ...] = ()  # every request, allowed or refused, oldest first


def read_proxy_log(text: str) -> ProxyLog:
    """The refusals, the requests let through per host, every request in
    words and, per host, the requests seen inside TLS (pure)."""
    denials: list[str] = []
    recent: list[str] = []
    opened: dict[str, int] = {}
    allowed: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[0] != "prov":
            continue  # squid's own messages
        stamp, status, method, url = fields[1], fields[3], fields[4], fields[5]
        reason = fields[8] if len(fields) > 8 else "-"
        try:
            when = datetime.datetime.fromtimestamp(float(stamp), datetime.UTC)
        except (ValueError, OverflowError):
            continue
        port = _port_of(method, url)
        host_name = _request_host(method, url)
        if status.startswith("TCP_DENIED"):
            text_ = f"{when:%Y-%m-%d %H:%M:%S} refused {method} {url}"
            if reason in REASONS:
                text_ += f" ({REASONS[reason].format(port=port)})"
            elif port not in (None, 80, 443):
                text_ += f" (port {port} is not allowed)"
            denials.append(text_)
            recent.append(text_)
            continue
        code = status.partition("/")[2]
        recent.append(f"{when:%Y-%m-%d %H:%M:%S} allowed {method} {url} ({code})")
        if host_name:
            allowed[host_name] = allowed.get(host_name, 0) + 1
        if method != "CONNECT" and url.startswith("https://"):
            opened[host_name] = opened.get(host_name, 0) + 1
    return ProxyLog(tuple(denials), opened, allowed, tuple(recent))


def _request_host(method: str, url: str) -> str:
    if method == "CONNECT":
        return url.rpartition(":")[0].strip("[]").lower()
    return (urllib.parse.urlsplit(url).hostname or "").lower()


def _port_of(method: str, url: str) -> int | None:
    try:
        if method == "CONNECT":
            return int(url.rpartition(":")[2])
        return urllib.parse.urlsplit(url).port
    except ValueError:
        return None
