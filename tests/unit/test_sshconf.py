"""The ssh config prov renders, checked with the real OpenSSH parser (`ssh -G`)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from provisioner import sshconf
from provisioner.errors import ConfigError
from provisioner.sshconf import HostEntry


def _entry(tmp_path: Path, alias: str = "prov-demo", port: int = 2222) -> HostEntry:
    return HostEntry(
        alias=alias,
        hostname="127.0.0.1",
        port=port,
        user="agent",
        identity_file=tmp_path / "my keys" / "id_ed25519",
        known_hosts=tmp_path / "known_hosts",
        control_dir=tmp_path / "cm",
    )


def _ssh_g(config: Path, alias: str) -> dict[str, str]:
    out = subprocess.run(
        ["ssh", "-G", "-F", str(config), alias], capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        result.setdefault(key, value)
    return result


def test_alias_resolves_to_pinned_key_only_login(tmp_path: Path) -> None:
    """OpenSSH reads the block as: our port, user, key, strict pinned known_hosts, mux."""
    config = tmp_path / "ssh_config"
    sshconf.write_entry(config, _entry(tmp_path))
    seen = _ssh_g(config, "prov-demo")
    assert seen["hostname"] == "127.0.0.1"
    assert seen["port"] == "2222"
    assert seen["user"] == "agent"
    assert seen["identityfile"] == str(tmp_path / "my keys" / "id_ed25519")
    assert seen["identitiesonly"] == "yes"
    assert seen["stricthostkeychecking"] == "true"
    assert seen["userknownhostsfile"].split()[0] == str(tmp_path / "known_hosts")
    assert seen["hostkeyalias"] == "prov-demo"
    assert seen["controlmaster"] == "auto"
    # %C (a hash of host, port and user) keeps one master socket per environment.
    control = Path(seen["controlpath"])
    assert control.parent == tmp_path / "cm"
    assert re.fullmatch(r"[0-9a-f]{40}", control.name)
    assert seen["passwordauthentication"] == "no"
    # X25519 key exchange only (the alias never leaves this machine).
    assert seen["kexalgorithms"] == "curve25519-sha256,curve25519-sha256@libssh.org"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_other_hosts_are_untouched(tmp_path: Path) -> None:
    """Blocks are keyed by alias: updating one keeps the others and foreign text."""
    config = tmp_path / "ssh_config"
    config.write_text("# my own note\n")
    sshconf.write_entry(config, _entry(tmp_path, "prov-a", 2222))
    sshconf.write_entry(config, _entry(tmp_path, "prov-b", 2223))
    sshconf.write_entry(config, _entry(tmp_path, "prov-a", 2300))
    text = config.read_text()
    assert text.startswith("# my own note\n")
    assert text.count("Host prov-a\n") == 1
    assert _ssh_g(config, "prov-a")["port"] == "2300"
    assert _ssh_g(config, "prov-b")["port"] == "2223"
    sshconf.delete_entry(config, "prov-a")
    assert "prov-a" not in config.read_text()
    assert _ssh_g(config, "prov-b")["port"] == "2223"


def test_percent_in_paths_is_escaped(tmp_path: Path) -> None:
    """A literal % in a path is written as %% so ssh's %-token expansion keeps it."""
    weird = tmp_path / "100%real"
    entry = HostEntry("prov-x", "127.0.0.1", 1, "agent", weird / "id", weird / "kh", weird)
    config = tmp_path / "c"
    config.write_text(sshconf.render_host_block(entry))
    # `ssh -G` shows IdentityFile before token expansion, i.e. as written.
    assert _ssh_g(config, "prov-x")["identityfile"] == str(tmp_path / "100%%real" / "id")


def test_include_added_once_at_top(tmp_path: Path) -> None:
    """The user's config gains one Include line, before any Host block, and keeps its text."""
    user = tmp_path / ".ssh" / "config"
    user.parent.mkdir()
    user.write_text("Host other\n    Port 2200\n")
    prov = tmp_path / "prov" / "ssh_config"
    sshconf.write_entry(prov, _entry(tmp_path))
    assert sshconf.ensure_include(user, prov) is True
    assert sshconf.ensure_include(user, prov) is False
    text = user.read_text()
    assert text.count("Include") == 1
    assert text.index("Include") < text.index("Host other")
    assert _ssh_g(user, "prov-demo")["port"] == "2222"
    assert _ssh_g(user, "other")["port"] == "2200"


def test_include_creates_private_config(tmp_path: Path) -> None:
    """A missing ~/.ssh/config is created 0600 inside a 0700 ~/.ssh."""
    user = tmp_path / "home" / ".ssh" / "config"
    sshconf.ensure_include(user, tmp_path / "prov" / "ssh_config")
    assert stat.S_IMODE(user.stat().st_mode) == 0o600
    assert stat.S_IMODE(user.parent.stat().st_mode) == 0o700


def test_known_hosts_pin_replaced_and_removed(tmp_path: Path) -> None:
    """One line per alias: re-pinning replaces it, unpinning removes only it."""
    kh = tmp_path / "known_hosts"
    sshconf.pin_host_key(kh, "prov-a", "ssh-ed25519", "AAAA1")
    sshconf.pin_host_key(kh, "prov-b", "ssh-ed25519", "BBBB")
    sshconf.pin_host_key(kh, "prov-a", "ssh-ed25519", "AAAA2")
    assert kh.read_text().splitlines() == ["prov-b ssh-ed25519 BBBB", "prov-a ssh-ed25519 AAAA2"]
    sshconf.unpin_host_key(kh, "prov-a")
    assert kh.read_text() == "prov-b ssh-ed25519 BBBB\n"


def test_include_edits_a_symlinked_config_in_place(tmp_path: Path) -> None:
    """A dotfiles-style symlink stays a symlink; its target gains the line and keeps its
    mode, its CRLF line ends and bytes that are not UTF-8."""
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    target = dotfiles / "ssh_config"
    original = b"# caf\xe9 (latin-1)\r\nHost other\r\n    Port 2200\r\n"
    target.write_bytes(original)
    target.chmod(0o640)
    user = tmp_path / ".ssh" / "config"
    user.parent.mkdir(mode=0o700)
    user.symlink_to(target)
    prov = tmp_path / "prov" / "ssh_config"
    assert sshconf.ensure_include(user, prov) is True
    assert user.is_symlink() and user.resolve() == target
    data = target.read_bytes()
    assert data.endswith(original)
    added = data[: -len(original)]
    assert added.count(b"\r\n") == added.count(b"\n") == 3
    assert b"Include" in added
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_include_refuses_a_directory_or_a_file_for_ssh_dir(tmp_path: Path) -> None:
    user = tmp_path / ".ssh" / "config"
    user.mkdir(parents=True)
    with pytest.raises(ConfigError, match="is a directory"):
        sshconf.ensure_include(user, tmp_path / "prov" / "ssh_config")
    home = tmp_path / "home2"
    home.mkdir()
    (home / ".ssh").write_text("oops")
    with pytest.raises(ConfigError, match="is a file"):
        sshconf.ensure_include(home / ".ssh" / "config", tmp_path / "prov" / "ssh_config")


def test_immutable_or_unwritable_prov_file_is_a_clear_error(tmp_path: Path) -> None:
    """A file prov cannot replace (chattr +i, a read-only dir) is a ConfigError naming it."""
    prov_dir = tmp_path / "prov"
    sshconf.write_entry(prov_dir / "ssh_config", _entry(tmp_path))
    prov_dir.chmod(0o500)
    try:
        if os.access(prov_dir, os.W_OK):  # root ignores the mode: use the immutable bit
            result = subprocess.run(
                ["chattr", "+i", str(prov_dir / "ssh_config")], capture_output=True, check=False
            )
            if result.returncode != 0:
                pytest.skip("chattr +i is not available on this filesystem")
        with pytest.raises(ConfigError, match="Cannot write"):
            sshconf.delete_entry(prov_dir / "ssh_config", "prov-demo")
    finally:
        subprocess.run(["chattr", "-i", str(prov_dir / "ssh_config")], capture_output=True)
        prov_dir.chmod(0o700)


def test_include_keeps_the_owner_of_the_users_file(tmp_path: Path) -> None:
    """Run as root on a file another user owns (prov refuses another user's HOME, but
    a dotfiles target may be owned by anyone): the owner stays."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file another owner")
    user = tmp_path / ".ssh" / "config"
    user.parent.mkdir()
    user.write_text("Host a\n")
    os.chown(user, 4321, 4322)
    sshconf.ensure_include(user, tmp_path / "prov" / "ssh_config")
    st = user.stat()
    assert (st.st_uid, st.st_gid) == (4321, 4322)


def test_remote_alias_jumps_through_the_engine_host_with_its_own_master(tmp_path: Path) -> None:
    """A remote environment's alias has a ProxyCommand through the engine host, and
    a ControlPath built from the alias: with %C alone (host, port, user) it would
    share the master of a local environment on the same port and skip its host
    key check."""
    from dataclasses import replace

    from provisioner.engine.sshlink import SshLink

    link = SshLink.for_url("ssh://ops@builder:2200", tmp_path / "l 100%")
    remote = replace(_entry(tmp_path, "prov-far"), proxy_command=link.proxy_command())
    local = _entry(tmp_path, "prov-near")
    config = tmp_path / "config"
    config.write_text(sshconf.render_host_block(remote) + sshconf.render_host_block(local))
    far, near = _ssh_g(config, "prov-far"), _ssh_g(config, "prov-near")
    assert (far["hostname"], far["port"]) == (near["hostname"], near["port"])
    assert far["controlpath"] != near["controlpath"]
    assert far["controlpath"].endswith("/prov-far")
    command = far["proxycommand"]
    assert "-W [%h]:%p" in command  # ssh fills in HostName and Port when it runs it
    assert "-o StrictHostKeyChecking=yes" in command  # the jump's key: never accepted silently
    assert command.endswith("-p 2200 -- ops@builder")
    # ssh expands %-tokens in ProxyCommand: a % of the path is doubled.
    assert f"ControlPath={str(link.control).replace('%', '%%')}'" in command
    assert "proxycommand" not in near or near["proxycommand"] == "none"


def test_port_pins_added_replaced_and_removed_keeping_every_other_byte() -> None:
    """The published port's pins go into the user's known_hosts as one marked
    line; a new port replaces it, removal takes only that line, and the user's
    own lines (CRLF, hashed, no final newline) stay byte for byte."""
    user = b"|1|abc=|def= ssh-ed25519 AAAAuser\r\nother.host ssh-rsa AAAArsa"
    pinned = sshconf.with_port_pins(
        user, "prov-a", ("127.0.0.1", "localhost"), 2222, "ssh-ed25519", "AAAAkey"
    )
    assert pinned.startswith(user + b"\r\n")
    added = pinned[len(user) + 2 :]
    assert added == b"[127.0.0.1]:2222,[localhost]:2222 ssh-ed25519 AAAAkey prov-managed:prov-a\r\n"
    moved = sshconf.with_port_pins(pinned, "prov-a", ("127.0.0.1",), 2300, "ssh-ed25519", "AAAAk2")
    assert b":2222" not in moved and b"[127.0.0.1]:2300 ssh-ed25519 AAAAk2" in moved
    other = sshconf.with_port_pins(moved, "prov-b", ("localhost",), 2400, "ssh-ed25519", "B")
    assert sshconf.with_port_pins(other, "prov-a", (), 0, "", "").count(b"prov-managed") == 1
    assert sshconf.with_port_pins(pinned, "prov-a", (), 0, "", "") == user + b"\r\n"


PIN_KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIMdGh7PTlyeEU1oR2sm76mSi9H4OHPcvlOJx4cm7JIG6"


def test_port_pin_lets_the_guides_ssh_form_check_the_key(tmp_path: Path) -> None:
    """OpenSSH finds the pin for `ssh -p PORT agent@localhost`: ssh-keygen -F
    (the lookup ssh does) matches both names at that port, not other ports."""
    known = tmp_path / "known_hosts"
    assert sshconf.pin_published_port(
        known,
        "prov-a",
        ("127.0.0.1", "localhost"),
        2299,
        "ssh-ed25519",
        PIN_KEY,
    )
    for name in ("[localhost]:2299", "[127.0.0.1]:2299"):
        found = subprocess.run(
            ["ssh-keygen", "-F", name, "-f", str(known)], capture_output=True, text=True
        )
        assert found.returncode == 0, name
    assert subprocess.run(["ssh-keygen", "-F", "[localhost]:2300", "-f", str(known)]).returncode
    assert not sshconf.pin_published_port(
        known,
        "prov-a",
        ("127.0.0.1", "localhost"),
        2299,
        "ssh-ed25519",
        PIN_KEY,
    )  # unchanged: not written again
    assert known.stat().st_mode & 0o777 == 0o600
