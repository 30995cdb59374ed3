"""Containment rules without a daemon: mounts, subnets, limits, egress names."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

from provisioner import egress, mountpolicy, netplan
from provisioner.config import Containment, UpRequest, parse_disk, parse_domain, parse_memory
from provisioner.errors import ConfigError, ConflictError, UsageError
from provisioner.fsutil import ensure_private_dir


@pytest.fixture
def ctx(tmp_path: Path) -> mountpolicy.HostContext:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / "code" / "proj").mkdir(parents=True)
    (home / ".local" / "share" / "prov").mkdir(parents=True)
    return mountpolicy.HostContext(home=home, prov_home=home / ".local" / "share" / "prov")


@pytest.mark.parametrize(
    "rel",
    ["", ".ssh", ".ssh/keys-dir", ".local"],  # home itself, ~/.ssh, inside it, above PROV_HOME
)
def test_home_ssh_and_prov_home_refused(ctx: mountpolicy.HostContext, rel: str) -> None:
    """The home itself, ~/.ssh (and below) and anything holding PROV_HOME are refused."""
    path = ctx.home / rel
    path.mkdir(parents=True, exist_ok=True)
    with pytest.raises(UsageError) as info:
        mountpolicy.check_source(path, "the project dir", ctx, allow_unsafe=False)
    assert info.value.exit_code == 2
    assert "Refusing to mount" in info.value.paragraph()


def test_symlink_is_resolved_before_the_check(ctx: mountpolicy.HostContext) -> None:
    """A link named like a project that points at /etc is refused as /etc."""
    link = ctx.home / "code" / "innocent"
    link.symlink_to("/etc")
    with pytest.raises(UsageError) as info:
        mountpolicy.check_source(link, "--mount", ctx, allow_unsafe=False)
    assert "resolves to /etc" in info.value.paragraph()
    assert "/etc" in info.value.seen


@pytest.mark.parametrize("path", ["/", "/etc", "/usr/lib", "/var", "/run", "/proc/1", "/home"])
def test_system_dirs_refused(ctx: mountpolicy.HostContext, path: str) -> None:
    """/, system directories, what lies inside them, and what contains them are refused."""
    found = mountpolicy.source_problem(Path(path), ctx)
    assert found is not None


def test_a_socket_is_refused(ctx: mountpolicy.HostContext) -> None:
    """Any socket (the Docker socket above all) is refused, wherever it lives."""
    sock_path = ctx.home / "code" / "d.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(UsageError) as info:
            mountpolicy.check_source(sock_path, "--mount", ctx, allow_unsafe=False)
    assert "socket" in info.value.seen


def test_override_warns_but_never_for_prov_home(ctx: mountpolicy.HostContext) -> None:
    """--allow-unsafe-mount turns a refusal into a warning, except for PROV_HOME."""
    warning = mountpolicy.check_source(ctx.home / ".ssh", "--mount", ctx, allow_unsafe=True)
    assert warning and "--allow-unsafe-mount" in warning
    with pytest.raises(UsageError):  # the home holds PROV_HOME here: never
        mountpolicy.check_source(ctx.home, "the project dir", ctx, allow_unsafe=True)
    with pytest.raises(UsageError) as info:
        mountpolicy.check_source(ctx.prov_home / ".." / "..", "--mount", ctx, allow_unsafe=True)
    assert "PROV_HOME is never mounted" in info.value.paragraph()


def test_a_project_dir_is_fine(ctx: mountpolicy.HostContext) -> None:
    """An ordinary project below the home passes without a word."""
    assert mountpolicy.check_source(ctx.home / "code" / "proj", "p", ctx, False) is None


@pytest.mark.parametrize(
    "target",
    ["/etc/ssh", "/data/../etc", "/", "/home", "/home/agent", "/usr/local", "//etc", "/run/x"],
)
def test_targets_over_system_or_prov_paths_refused(target: str) -> None:
    """Targets inside /etc, /usr, /run... or covering prov's paths, after normalising .."""
    with pytest.raises(UsageError):
        mountpolicy.check_target(target, "--mount x")


def test_ordinary_targets_are_normalised() -> None:
    """/data/./x/../y is accepted as /data/y; a target under the agent's home is fine."""
    assert mountpolicy.check_target("/data/./x/../y", "m") == "/data/y"
    assert mountpolicy.check_target("/home/agent/datasets", "m") == "/home/agent/datasets"


def test_subnets_skip_docker_networks_and_routes() -> None:
    """Each environment gets the first free /28 of the pool, never an overlapping one."""
    pool = ipaddress.IPv4Network("10.213.0.0/16")
    used = [ipaddress.IPv4Network("10.213.0.0/28"), ipaddress.IPv4Network("10.213.0.16/29")]
    chosen = netplan.choose_subnet(used, pool)
    assert chosen == ipaddress.IPv4Network("10.213.0.32/28")
    addrs = netplan.addresses(chosen)
    assert (addrs.gateway, addrs.env, addrs.proxy) == ("10.213.0.33", "10.213.0.34", "10.213.0.35")
    with pytest.raises(ConflictError):
        netplan.choose_subnet([ipaddress.IPv4Network("10.0.0.0/8")], pool)


def test_route_table_parsing() -> None:
    """/proc/net/route's little-endian hex gives networks; the default route is skipped."""
    text = (
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\n"
        "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\n"
    )
    assert netplan.parse_route_table(text) == [ipaddress.IPv4Network("172.17.0.0/16")]


def test_port_or_public_bind_publishes_under_every_egress_mode() -> None:
    """--port (or a --bind beyond loopback) asks for a host port in every egress
    mode; without either, only --egress open publishes one."""
    assert UpRequest(name="x", port=2222).publishes
    assert UpRequest(name="x", port=2222, containment=Containment(egress="none")).publishes
    assert UpRequest(name="x", bind="0.0.0.0").publishes
    assert not UpRequest(name="x").publishes
    assert not UpRequest(name="x", containment=Containment(egress="none")).publishes
    assert UpRequest(name="x", containment=Containment(egress="open")).publishes


@pytest.mark.parametrize("bad", ["http://x.com", "1.2.3.4", "a..b", "x", "*.*.com", "-a.com"])
def test_bad_allow_domains_refused(bad: str) -> None:
    """--allow takes domain names only."""
    with pytest.raises(UsageError):
        parse_domain(bad)


def test_allow_domain_normalised() -> None:
    """Case, a trailing dot and a wildcard prefix are folded to the plain name."""
    assert parse_domain("*.GitHub.com.") == "github.com"


def test_memory_sizes() -> None:
    """--memory takes k/m/g suffixes and refuses nonsense and tiny limits."""
    assert parse_memory("4g") == 4 << 30
    assert parse_memory("512M") == 512 << 20
    for bad in ("lots", "1k", "-4g"):
        with pytest.raises(UsageError):
            parse_memory(bad)


def test_disk_sizes() -> None:
    """--disk takes a size of at least 256m, or none (a plain home volume)."""
    assert parse_disk("20g") == 20 << 30
    assert parse_disk("300M") == 300 << 20
    assert parse_disk("none") == 0
    for bad in ("lots", "100m", "-4g", ""):
        with pytest.raises(UsageError) as caught:
            parse_disk(bad)
        assert caught.value.what == f"Invalid --disk {bad!r}"


def test_containment_validates_its_values() -> None:
    """Unknown egress modes and silly pids limits are usage errors."""
    for kwargs in ({"egress": "sometimes"}, {"pids_limit": 0}):
        with pytest.raises(UsageError):
            Containment(**kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a dir owned by another user")
def test_private_dir_of_another_user_refused(tmp_path: Path) -> None:
    """A ControlPath (or any private) dir someone else made first is refused, not used."""
    foreign = tmp_path / "cm"
    foreign.mkdir(mode=0o777)
    os.chown(foreign, 4321, 4321)
    with pytest.raises(ConflictError) as info:
        ensure_private_dir(foreign)
    assert "belongs to another user" in info.value.paragraph()


def test_loose_private_dir_tightened(tmp_path: Path) -> None:
    """Our own dir with loose permissions becomes 0700."""
    loose = tmp_path / "cm"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    ensure_private_dir(loose)
    assert loose.stat().st_mode & 0o777 == 0o700


def test_ownership_by_home_label_and_legacy_host_key(tmp_path: Path) -> None:
    """A container is ours when it carries this PROV_HOME's identity; one from before
    identities were recorded is ours only if it serves the host key kept here."""
    from provisioner import keys
    from provisioner.config import ProvPaths
    from provisioner.ownership import is_ours
    from provisioner.plan import home_id

    paths = ProvPaths(tmp_path / "ph")
    pair = keys.load_or_create(paths.env_dir("demo"), keys.HOST_KEY_NAME, "h")
    base = {"prov.managed": "true", "prov.name": "demo"}
    assert is_ours({**base, "prov.home": home_id(paths)}, paths)
    assert not is_ours({**base, "prov.home": "0" * 16}, paths)
    legacy = {**base, "prov.host-key-fingerprint": pair.public.fingerprint}
    assert is_ours(legacy, paths)
    assert not is_ours({**legacy, "prov.host-key-fingerprint": "SHA256:other"}, paths)
    assert not is_ours({**legacy, "prov.managed": "false"}, paths)
    assert not is_ours({**legacy, "prov.name": "../demo"}, paths)


def test_default_allowlist_cached_until_its_inputs_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registries are read once (npm costs ~0.5 s of CPU), kept on disk, and
    read again when a variable or file they come from changes."""
    reads: list[int] = []

    def npm_registry(_npm_cache: Path | None) -> str:
        reads.append(1)
        return "registry.example.test"

    monkeypatch.setattr(egress, "_npm_registry", npm_registry)
    monkeypatch.setattr(egress, "_apt_mirror", lambda: None)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    cache = tmp_path / "cache" / "egress-defaults.json"

    def fresh_run() -> tuple[str, ...]:
        monkeypatch.setattr(egress, "_defaults", None)  # a new prov process
        return egress.default_allowlist(cache)

    first = fresh_run()
    assert "registry.example.test" in first and "github.com" in first
    assert fresh_run() == first
    assert len(reads) == 1
    assert cache.stat().st_mode & 0o077 == 0
    monkeypatch.setenv("PIP_INDEX_URL", "https://pip.example.test/simple/")
    again = fresh_run()
    assert len(reads) == 2
    assert "pip.example.test" in again
    cache.write_text("{not json")
    assert fresh_run() == again
    assert len(reads) == 3


def test_user_allow_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """~/.config/prov/egress-allow: one name a line, comments and blanks skipped,
    names normalised; a line that is not a name is an error naming the line."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert egress.user_allowlist() == ()
    path = tmp_path / "prov" / "egress-allow"
    path.parent.mkdir()
    path.write_text("# internal mirrors\nPkgs.Example.TEST\n\n  git.example.test  # gitea\n")
    assert egress.user_allowlist() == ("pkgs.example.test", "git.example.test")
    monkeypatch.setattr(egress, "_defaults", ("github.com",))
    assert egress.allowlist(("extra.example.test",)) == (
        "extra.example.test",
        "git.example.test",
        "github.com",
        "pkgs.example.test",
    )
    path.write_text("ok.example.test\nhttp://bad.example.test/x\n")
    with pytest.raises(ConfigError, match="line 2"):
        egress.user_allowlist()
