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

import functools
import os
import subprocess
import urllib.parse
from pathlib import Path

from provisioner import baseimage, host
from provisioner.config import parse_domain
from provisioner.errors import ConfigError, UsageError

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


def _npm_registry() -> str | None:
    configured = host.npm_registry()
    if configured:
        return _host_of(configured)
    try:
        result = subprocess.run(
            ["npm", "config", "get", "registry"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return _host_of(result.stdout) if result.returncode == 0 else None


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


@functools.cache
def default_allowlist() -> tuple[str, ...]:
    """Read once a run: `prov up a b c` asks npm (~0.1 s) only once."""
    registries = [h for h in (_npm_registry(), _apt_mirror(), *_pip_indexes()) if h]
    return tuple(dict.fromkeys([*AGENT_DOMAINS, *GITHUB_DOMAINS, *registries]))


def user_allowlist() -> tuple[str, ...]:
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
            domains.append(parse_domain(line))
        except UsageError as exc:
            raise ConfigError(
                f"{path} line {number} is not a domain name: {line!r}",
                exc.seen,
                "write one domain name per line (subdomains are allowed with it).",
            ) from None
    return tuple(domains)


def allowlist(extra: tuple[str, ...]) -> tuple[str, ...]:
    """Everything an allowlist environment may reach, sorted, without repeats."""
    names = [*default_allowlist(), *user_allowlist(), *(parse_domain(d) for d in extra)]
    return tuple(sorted(set(names)))
