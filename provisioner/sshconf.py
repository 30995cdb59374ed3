"""The ssh config and known_hosts files prov owns, and the one Include line it
adds to the user's ~/.ssh/config.

NTM passes no options to ssh: port, user, key, host-key pinning and
connection reuse must all come from ssh config, under one alias per
environment. Rendering is pure; the file edits are atomic and only ever touch
prov's own marked blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from provisioner.fsutil import atomic_write, edit_in_place, ensure_private_dir, read_owned

ALIAS_PREFIX = "prov-"


def alias_for(name: str) -> str:
    return ALIAS_PREFIX + name


@dataclass(frozen=True)
class HostEntry:
    alias: str
    hostname: str
    port: int
    user: str
    identity_file: Path
    known_hosts: Path
    control_dir: Path
    forward_agent: bool = False
    # An environment on a remote engine: the command that reaches HostName:Port
    # from the engine host (ssh -W through it).
    proxy_command: str | None = None
    # devcontainer.json's forwardPorts: this machine's loopback port P to the
    # environment's localhost:P, for as long as the alias's master runs.
    local_forwards: tuple[int, ...] = ()


def _quote(path: Path | str, token: str = "") -> str:
    # ssh_config expands %-tokens in these paths, so a literal % is doubled;
    # `token` (e.g. "/%C") is appended unescaped.
    text = str(path).replace("%", "%%") + token
    return f'"{text}"'


def _begin(alias: str) -> str:
    return f"# >>> prov {alias} (managed by prov; edits are overwritten)"


def _end(alias: str) -> str:
    return f"# <<< prov {alias}"


def render_host_block(entry: HostEntry) -> str:
    lines = [
        _begin(entry.alias),
        f"Host {entry.alias}",
        f"    HostName {entry.hostname}",
        f"    Port {entry.port}",
        f"    User {entry.user}",
        f"    IdentityFile {_quote(entry.identity_file)}",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {_quote(entry.known_hosts)}",
        "    StrictHostKeyChecking yes",
        # The pin is keyed by the alias, not host:port, so a port change or
        # another environment on a reused port can never match a stale key.
        f"    HostKeyAlias {entry.alias}",
        "    HostKeyAlgorithms ssh-ed25519",
        # The alias connects to an address of this machine, or through the
        # engine host's own SSH connection (whose key exchange is the user's
        # choice), so the traffic never crosses a network in the clear: the
        # post-quantum hybrid (sntrup761, the client's default) protects
        # nothing more here, yet costs ~0.13 s of CPU per new connection.
        # X25519 under both its names, which every OpenSSH since 7.4 knows.
        "    KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org",
        "    CheckHostIP no",
        "    UpdateHostKeys no",
        "    PasswordAuthentication no",
        "    KbdInteractiveAuthentication no",
        f"    ForwardAgent {'yes' if entry.forward_agent else 'no'}",
        "    ForwardX11 no",
        # NTM opens a new ssh connection for every tmux call; reuse one, kept
        # for the environment's life (prov starts it at up and start, and
        # closes it at stop, down and rm), so no burst of calls races to make it.
        "    ControlMaster auto",
        # %C hashes host, port and user, not the jump: a remote environment at
        # 127.0.0.1:2222 and a local one there would share a master (and skip
        # the host-key check). The alias names exactly one environment.
        f"    ControlPath {_quote(entry.control_dir, '/%n' if entry.proxy_command else '/%C')}",
        "    ControlPersist yes",
        *([f"    ProxyCommand {entry.proxy_command}"] if entry.proxy_command else []),
        *(f"    LocalForward 127.0.0.1:{port} localhost:{port}" for port in entry.local_forwards),
        "    ServerAliveInterval 15",
        "    ServerAliveCountMax 4",
        _end(entry.alias),
    ]
    return "\n".join(lines) + "\n"


def _block_re(alias: str) -> re.Pattern[str]:
    return re.compile(
        re.escape(_begin(alias)) + r"\n.*?" + re.escape(_end(alias)) + r"\n?", re.DOTALL
    )


def upsert_block(text: str, entry: HostEntry) -> str:
    block = render_host_block(entry)
    pattern = _block_re(entry.alias)
    if pattern.search(text):
        return pattern.sub(lambda _m: block, text, count=1)
    if text and not text.endswith("\n"):
        text += "\n"
    return text + block


def has_entry(config_path: Path, alias: str) -> bool:
    return _block_re(alias).search(_read(config_path)) is not None


def remove_block(text: str, alias: str) -> str:
    return _block_re(alias).sub("", text)


def known_hosts_line(alias: str, key_type: str, blob_b64: str) -> str:
    return f"{alias} {key_type} {blob_b64}\n"


def upsert_known_host(text: str, alias: str, key_type: str, blob_b64: str) -> str:
    kept = [ln for ln in text.splitlines(keepends=True) if ln.split(" ", 1)[0] != alias]
    return "".join(kept) + known_hosts_line(alias, key_type, blob_b64)


def remove_known_host(text: str, alias: str) -> str:
    return "".join(ln for ln in text.splitlines(keepends=True) if ln.split(" ", 1)[0] != alias)


def _port_pin_marker(alias: str) -> bytes:
    return f"prov-managed:{alias}".encode()


def with_port_pins(
    known_hosts: bytes, alias: str, hosts: tuple[str, ...], port: int, key_type: str, blob: str
) -> bytes:
    """The user's known_hosts with `alias`'s published-port pins replaced by
    ones for `hosts` at `port` (none when `hosts` is empty). prov's lines are
    the ones whose comment is its marker for `alias`; every other byte stays."""
    marker = _port_pin_marker(alias)
    lines = known_hosts.splitlines(keepends=True)
    kept = [ln for ln in lines if ln.rstrip(b"\r\n").split(b" ")[-1:] != [marker]]
    if not hosts:
        return b"".join(kept)
    newline = b"\r\n" if lines and lines[0].endswith(b"\r\n") else b"\n"
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += newline
    patterns = ",".join(f"[{host}]:{port}" for host in hosts)
    added = f"{patterns} {key_type} {blob} ".encode() + marker + newline
    return b"".join(kept) + added


def pin_published_port(
    user_known_hosts: Path,
    alias: str,
    hosts: tuple[str, ...],
    port: int,
    key_type: str,
    blob: str,
) -> bool:
    """Pin the environment's host key for its published port in the user's own
    known_hosts, so `ssh -p PORT agent@localhost` (the guide's form, and tools
    that take a host and a port) checks it strictly instead of asking to trust
    it; edited in place. `hosts` empty: remove the pins. True if it changed."""
    current = read_owned(user_known_hosts, "Your known_hosts")
    if current is None and not hosts:
        return False
    new = with_port_pins(current or b"", alias, hosts, port, key_type, blob)
    if new == current:
        return False
    ensure_private_dir(user_known_hosts.parent)
    edit_in_place(user_known_hosts, new)
    return True


def include_line(prov_config: Path) -> str:
    return f"Include {_quote(prov_config)}"


def with_include(user_config: bytes, prov_config: Path) -> bytes | None:
    """The user's config with prov's Include added at the top, or None if present.

    It goes first: an Include below a `Host` line would only apply inside that
    host's block. Bytes in, bytes out: every byte of the user's file is kept
    (whatever its encoding), and the new lines use its line ends (CRLF or LF).
    """
    line = include_line(prov_config).encode()
    plain = f"Include {prov_config}".encode()
    for existing in user_config.splitlines():
        if existing.strip() in (line, plain):
            return None
    newline = b"\r\n" if user_config.split(b"\n", 1)[0].endswith(b"\r") else b"\n"
    header = b"# Added by prov: aliases for its agent environments (prov-NAME)."
    return header + newline + line + newline + newline + user_config


def _read(path: Path) -> str:
    """One of prov's own files; bytes that are not UTF-8 survive the round trip."""
    data = read_owned(path, "prov's file")
    return data.decode(errors="surrogateescape") if data else ""


def write_entry(config_path: Path, entry: HostEntry) -> None:
    ensure_private_dir(config_path.parent)
    ensure_private_dir(entry.control_dir)
    atomic_write(config_path, upsert_block(_read(config_path), entry), 0o600)


def delete_entry(config_path: Path, alias: str) -> None:
    if config_path.exists():
        atomic_write(config_path, remove_block(_read(config_path), alias), 0o600)


def pin_host_key(known_hosts: Path, alias: str, key_type: str, blob_b64: str) -> None:
    atomic_write(
        known_hosts, upsert_known_host(_read(known_hosts), alias, key_type, blob_b64), 0o600
    )


def unpin_host_key(known_hosts: Path, alias: str) -> None:
    if known_hosts.exists():
        atomic_write(known_hosts, remove_known_host(_read(known_hosts), alias), 0o600)


def ensure_include(user_config: Path, prov_config: Path) -> bool:
    """Add the Include line once, editing the user's file in place (a symlink
    stays a symlink, mode and owner stay); True when the file was changed."""
    ensure_private_dir(user_config.parent)
    current = read_owned(user_config, "Your ssh config")
    new = with_include(current or b"", prov_config)
    if new is None:
        return False
    edit_in_place(user_config, new)
    return True
