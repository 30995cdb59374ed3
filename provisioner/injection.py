"""Secrets the agent uses but cannot read: injected by the egress proxy.

A secret is a value prov holds for an environment (an API key, a token) and
the one host it is for. Inside, its variable holds a placeholder; the
environment's proxy, for that host only, terminates TLS with a CA of the
environment's own (which the environment trusts, and whose key never enters
it), replaces the named header with the real value, and re-encrypts to the
real host, checking its certificate against this machine's trust. Every
other host stays a plain CONNECT tunnel. The proxy is squid (Debian's
squid-openssl): its ssl-bump, header rules, access log and ACLs, configured
here as a pure function of what was asked.

The CA is not name-constrained: squid's certificates copy the real host's
names (a cert for api.example.com often names *.example.com too), which a
constraint to the secrets' hosts would make invalid. Its key stays in the
proxy and in the env dir here (0700); the proxy opens TLS for the secrets'
hosts only.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.errors import ConfigError, UsageError

# The agents' own API keys, when set on this machine: which host and header.
BUILTIN: dict[str, tuple[str, str]] = {
    "ANTHROPIC_API_KEY": ("api.anthropic.com", "x-api-key"),
    "OPENAI_API_KEY": ("api.openai.com", "authorization"),
    "GEMINI_API_KEY": ("generativelanguage.googleapis.com", "x-goog-api-key"),
}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_HOST_RE = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$"
)
_HEADER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
# What a header value may hold, so that squid's config takes it literally:
# printable ASCII without quotes, backslash or the % that starts its codes.
_VALUE_RE = re.compile(r"^[!#-$&-\[\]-~]{1,4096}$")


@dataclass(frozen=True)
class Secret:
    name: str  # the variable inside, which holds the placeholder
    value: str = field(repr=False)
    host: str  # exactly this host (no subdomains)
    header: str  # lower case; "authorization" sends "Bearer VALUE"

    @property
    def placeholder(self) -> str:
        """What the variable holds inside: accepted by the CLIs, worth nothing."""
        return f"prov-placeholder-{self.name.lower().replace('_', '-')}"

    @property
    def sent(self) -> str:
        return f"Bearer {self.value}" if self.header == "authorization" else self.value

    def public(self) -> str:
        return f"{self.name}@{self.host}:{self.header}"


def parse_secret(text: str, source: str = "--secret") -> Secret:
    """NAME=VALUE@HOST[:HEADER] (HEADER: x-api-key, authorization (Bearer), ...)."""
    name, sep, rest = text.partition("=")
    value, at, target = rest.rpartition("@")
    host_name, _, header = target.partition(":")
    header = (header or "authorization").strip().lower()
    host_name = host_name.strip().lower().rstrip(".")
    problem = ""
    if not sep or not at:
        problem = "it takes NAME=VALUE@HOST, or NAME=VALUE@HOST:HEADER"
    elif not _NAME_RE.match(name):
        problem = "what is before = is not a variable name"
    elif not _HOST_RE.match(host_name):
        problem = f"{host_name!r} is not a host name (no scheme, port or path)"
    elif not _HEADER_RE.match(header):
        problem = f"{header!r} is not a header name"
    elif not _VALUE_RE.match(value):
        problem = (
            "its value is empty, too long, or holds a space, a quote, a backslash or %, "
            "which no API key or token does"
        )
    if problem:
        raise UsageError(
            f"Invalid {source} for " + (name if sep and _NAME_RE.match(name) else "a secret"),
            f"{problem.capitalize()}. (The value is not shown.)",
            "e.g. --secret GITHUB_TOKEN=ghp_...@api.github.com (sent as Authorization: "
            "Bearer ...) or --secret MY_KEY=...@api.example.com:x-api-key.",
        )
    return Secret(name, value, host_name, header)


def parse_secret_file(text: str, source: str) -> list[Secret]:
    return [
        parse_secret(line.strip(), source)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def builtins(environ: dict[str, str]) -> list[Secret]:
    """The agents' API keys set here, each for its API host."""
    return [
        Secret(var, environ[var], host_name, header)
        for var, (host_name, header) in BUILTIN.items()
        if environ.get(var) and _VALUE_RE.match(environ[var])
    ]


def load_secrets(path: Path) -> tuple[Secret, ...]:
    """The secrets kept for an environment (see save_secrets); none if absent.
    A damaged file is a ConfigError, never a guess."""
    import json

    try:
        raw = path.read_text()
    except FileNotFoundError:
        return ()
    except NotADirectoryError:
        from provisioner.fsutil import ensure_private_dir

        ensure_private_dir(path.parent)  # says what is in the way (a file), and what to do
        raise
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}", str(exc), "check its permissions.") from None
    try:
        items = json.loads(raw)
        return tuple(
            Secret(str(i["name"]), str(i["value"]), str(i["host"]), str(i["header"])) for i in items
        )
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{path} is damaged",
            "It holds the secrets prov injects for this environment and is not the JSON "
            "prov writes. (Its contents are not shown.)",
            "remove it and pass the secrets again with --secret.",
        ) from None


def save_secrets(path: Path, secrets: tuple[Secret, ...]) -> None:
    """Kept 0600 in the env dir, for the next `up` of the environment."""
    import json

    from provisioner.fsutil import atomic_write

    atomic_write(
        path,
        json.dumps(
            [
                {"name": s.name, "value": s.value, "host": s.host, "header": s.header}
                for s in secrets
            ],
            indent=1,
        )
        + "\n",
        0o600,
    )


def merge(builtin: list[Secret], asked: list[Secret]) -> tuple[Secret, ...]:
    """One secret per variable, --secret winning over a built-in of the same name."""
    found = {s.name: s for s in builtin}
    found.update({s.name: s for s in asked})
    return tuple(found.values())


# --- the proxy's configuration -------------------------------------------------

CONF_DIR = "/etc/prov-egress"  # mounted read-only into the proxy
HOSTS_FILE = "hosts"  # in CONF_DIR: names the proxy finds before DNS (egress.user_hosts)
PROXY_PORT = 3128


# Addresses the proxy never opens a connection to, whatever name resolves to
# them (a record under an allowed domain that an attacker controls, or an
# internal mirror): this host and its services, Docker's networks (its pools
# are private ranges), other environments' proxies, the cloud metadata service
# (169.254.169.254), the LAN. --allow-net lets a range through by name.
PRIVATE_NETS = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",  # carrier-grade NAT; also Alibaba's metadata address
    "127.0.0.0/8",
    "169.254.0.0/16",  # link-local: the metadata service
    "172.16.0.0/12",  # Docker's default pools
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b::/96",  # NAT64 likewise
    "fc00::/7",  # unique local, AWS's IPv6 metadata address among them
    "fe80::/10",
)


def squid_conf(
    listen: str,
    client: str,
    allow: tuple[str, ...],
    secrets: tuple[Secret, ...],
    upstream: bool = False,
    allow_nets: tuple[str, ...] = (),
    hosts_file: bool = False,
) -> str:
    """squid's whole configuration (pure). Holds the secrets' values: it lives
    in the env dir here (0700) and in the proxy only. `upstream`: CONF_DIR has
    upstream-cas.pem, the CAs to trust for the real hosts (and only those).
    `allow_nets`: private ranges it may reach after all (--allow-net).
    `hosts_file`: CONF_DIR has HOSTS_FILE, the user's names for addresses,
    which squid reads instead of the container's /etc/hosts."""
    lines = [
        "# Made by prov for one environment's egress proxy; not for editing.",
        f"acl client src {client}/32",
        "acl SSL_ports port 443",
        "acl Safe_ports port 80 443",
        "acl CONNECT method CONNECT",
        # The agent may reach named domains (and their subdomains) only; -n: an
        # address is never looked up backwards into a name that would match.
        "acl allowed dstdomain -n "
        + (" ".join(f".{d}" for d in _outermost(allow)) or "prov.invalid"),
        # Every address the name resolves to is checked (any private one refuses).
        "acl private_dst dst " + " ".join(PRIVATE_NETS),
        *([f"acl allowed_nets dst {' '.join(allow_nets)}"] if allow_nets else []),
        # Matches always; names the reason in the log line (%{reason}note).
        "acl said_private annotate_transaction reason=private-address",
        "acl said_port annotate_transaction reason=port",
    ]
    if secrets:
        lines += _injecting(listen, secrets, upstream)
    else:
        lines.append(f"http_port {listen}:{PROXY_PORT}")
    lines += [
        "http_access deny manager",  # its cache manager would show this file
        "http_access deny !client",
        # Plain HTTP and CONNECT alike: 80 and 443 only.
        "http_access deny !Safe_ports said_port",
        "http_access deny CONNECT !SSL_ports said_port",
        # A name not allowed is refused before it is looked up: a lookup of
        # any name the agent makes up would be a way out through DNS.
        "http_access deny !allowed" + (" !secret_dst" if secrets else ""),
        "http_access deny private_dst " + ("!allowed_nets " if allow_nets else "") + "said_private",
        "http_access allow client",
        "http_access deny all",
        *([f"hosts_file {CONF_DIR}/{HOSTS_FILE}"] if hosts_file else []),
        *_SETTINGS,
    ]
    return "\n".join(lines) + "\n"


def _injecting(listen: str, secrets: tuple[Secret, ...], upstream: bool) -> list[str]:
    """The part of squid's configuration that ends TLS for the secrets' hosts
    (only those, and only when both the CONNECT and the TLS name are one) and
    puts each real value into its header."""
    hosts = " ".join(sorted({s.host for s in secrets}))
    lines = [
        f"http_port {listen}:{PROXY_PORT} ssl-bump tls-cert={CONF_DIR}/ca.pem "
        f"tls-key={CONF_DIR}/ca.key generate-host-certificates=on "
        "dynamic_cert_mem_cache_size=1MB",
        "sslcrtd_program /usr/lib/squid/security_file_certgen -s /run/prov-egress/ssl_db -M 1MB",
        "sslcrtd_children 1 startup=1 idle=1",
        # The real host's certificate is checked against this machine's
        # trust store (upstream-cas.pem: its bundle and the CAs prov adds to
        # images), or the proxy's own system store if none was found.
        *(
            [f"tls_outgoing_options cafile={CONF_DIR}/upstream-cas.pem default-ca=off"]
            if upstream
            else []
        ),
        "acl step1 at_step SslBump1",
        f"acl secret_sni ssl::server_name {hosts}",
        f"acl secret_dst dstdomain -n {hosts}",
        "acl https proto HTTPS",
        "ssl_bump peek step1",
        # Opened only when both the CONNECT and the TLS name are the
        # secret's host; everything else is a plain tunnel.
        "ssl_bump bump secret_dst secret_sni",
        "ssl_bump splice all",
        # A secret never goes over plain HTTP.
        "http_access deny !https !CONNECT secret_dst",
    ]
    for index, secret in enumerate(secrets):
        acl = f"secret_{index}"
        lines += [
            f"acl {acl} dstdomain -n {secret.host}",
            f"request_header_access {secret.header} deny {acl}",
            f'request_header_add {secret.header} "{secret.sent}" {acl} https',
        ]
    return lines


def slot_conf() -> str:
    """A slot's proxy before any environment claims it (pure): it listens on
    its own loopback only and allows nothing. The claim writes the
    environment's squid_conf over it and sends SIGHUP (see slots)."""
    lines = [
        "# Made by prov for an unclaimed slot: it allows nothing.",
        f"http_port 127.0.0.1:{PROXY_PORT}",
        "http_access deny all",
        *_SETTINGS,
    ]
    return "\n".join(lines) + "\n"


# What every proxy's configuration ends with: no cache, no manager, nothing
# about the client sent on, and a line per request in Docker's log.
_SETTINGS = (
    "cachemgr_passwd disable all",
    "cache deny all",
    "cache_mem 0 MB",
    "memory_pools off",
    "pinger_enable off",
    "via off",
    "email_err_data off",
    "forwarded_for delete",
    "httpd_suppress_version_string on",
    "client_persistent_connections on",
    "server_persistent_connections on",
    # One line per request, allowed and refused (never a header).
    "logformat prov prov %ts %>a %Ss/%>Hs %rm %ru %<A %<st %{reason}note",
    "access_log stdio:/dev/stdout prov",
    "cache_log stdio:/dev/stderr",
    "logfile_rotate 0",
    "pid_filename none",
    "shutdown_lifetime 1 seconds",
    # squid sizes its tables by this (its default 20000 cost ~2.5 MB of an
    # idle proxy's ~12); one environment's connections need far fewer.
    "max_filedescriptors 4096",
)


def _outermost(domains: tuple[str, ...]) -> list[str]:
    """The domains less those under another one listed (squid refuses a list in
    which .a.example.com sits beside .example.com; the latter covers it)."""
    found = set(domains)
    return sorted(
        d for d in found if not any(d.endswith("." + other) for other in found if other != d)
    )


# --- the environment's CA ------------------------------------------------------


@dataclass(frozen=True)
class CA:
    cert_pem: bytes
    key_pem: bytes = field(repr=False)


def make_ca(env: str) -> CA:
    """A CA of one environment's own, for its proxy."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"prov {env} egress")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return CA(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def host_trust(extra_pems: bytes) -> bytes:
    """What this machine trusts for TLS, as PEM: the bundle its OpenSSL reads
    (SSL_CERT_FILE, else the system's), plus `extra_pems` (the CAs prov adds to
    images); b"" when no bundle is found (the proxy then keeps its own store)."""
    import ssl

    defaults = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("SSL_CERT_FILE"), defaults.cafile, defaults.openssl_cafile):
        if candidate and Path(candidate).is_file():
            try:
                bundle = Path(candidate).read_bytes()
            except OSError:
                continue
            if b"-----BEGIN CERTIFICATE-----" in bundle:
                return bundle.rstrip(b"\n") + b"\n" + extra_pems
    return b""


def write_conf_dir(folder: Path, files: dict[str, bytes]) -> bool:
    """Put the proxy's files in `folder` (mounted read-only into the proxy, whose
    root has no right to override modes): readable by anyone there, inside prov's
    0700 env dir, so that no one else on this machine can. Whether any changed."""
    from provisioner.fsutil import atomic_write, ensure_private_dir

    ensure_private_dir(folder.parent)
    folder.mkdir(mode=0o755, exist_ok=True)
    folder.chmod(0o755)
    changed = False
    for name, data in files.items():
        path = folder / name
        try:
            same = path.read_bytes() == data
        except OSError:
            same = False
        if not same:
            atomic_write(path, data, 0o644)
            changed = True
    return changed
