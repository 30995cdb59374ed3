"""Facts from the local machine: NTM's projects_base, project dir, credentials."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner import host
from provisioner.baseimage import host_distro, mirror_from_sources
from provisioner.errors import ConfigError


def test_projects_base_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """NTM_PROJECTS_BASE beats the config file, which beats ~/ntm_Dev."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NTM_PROJECTS_BASE", raising=False)
    monkeypatch.delenv("NTM_CONFIG", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert host.ntm_projects_base() == tmp_path / "ntm_Dev"
    cfg = tmp_path / ".config" / "ntm" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('projects_base = "~/code"\n[agents]\nclaude = "x"\n')
    assert host.ntm_projects_base() == tmp_path / "code"
    monkeypatch.setenv("NTM_PROJECTS_BASE", str(tmp_path / "env"))
    assert host.ntm_projects_base() == tmp_path / "env"


def test_broken_ntm_config_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A malformed NTM config is reported with its path, not a TOML traceback."""
    monkeypatch.delenv("NTM_PROJECTS_BASE", raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text("projects_base = \n")
    monkeypatch.setenv("NTM_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="NTM's config"):
        host.ntm_projects_base()


def test_missing_project_dir(tmp_path: Path) -> None:
    """A missing project dir is an error unless --create-dir."""
    with pytest.raises(ConfigError, match="does not exist"):
        host.resolve_project_dir("x", tmp_path / "nope", create=False)
    made = host.resolve_project_dir("x", tmp_path / "nope", create=True)
    assert made.path.is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a dir to another user")
def test_created_dir_given_to_unprivileged_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dir prov creates as root belongs to the sudo caller, else to an ID no
    account on this host has (never UID 1000, which may be someone's)."""
    monkeypatch.setenv("SUDO_UID", "4444")
    monkeypatch.setenv("SUDO_GID", "4445")
    made = host.resolve_project_dir("x", tmp_path / "a", create=True)
    assert (made.uid, made.gid, made.grant) == (4444, 4445, False)
    monkeypatch.delenv("SUDO_UID")
    made = host.resolve_project_dir("x", tmp_path / "b", create=True)
    assert made.uid in host.ROOT_AGENT_IDS and made.uid == made.gid
    assert made.path.stat().st_uid == made.uid and not made.grant
    with pytest.raises(KeyError):
        pwd.getpwuid(made.uid)


def test_project_owner_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent gets the project owner's IDs; a root-owned one, with prov as
    root, an unprivileged ID that prov grants access (never root itself)."""
    monkeypatch.delenv("SUDO_UID", raising=False)
    project = tmp_path / "p"
    project.mkdir()
    os.chown(project, 4321, 4322)
    found = host.resolve_project_dir("p", project, create=False)
    assert (found.uid, found.gid, found.grant) == (4321, 4322, False)
    os.chown(project, 0, 0)
    found = host.resolve_project_dir("p", project, create=False)
    assert found.uid in host.ROOT_AGENT_IDS and found.grant
    # A copy (a remote engine's rsync) is the agent's: nothing to grant.
    copied = host.resolve_project_dir("p", project, create=False, mounted=False)
    assert copied.uid in host.ROOT_AGENT_IDS and not copied.grant


def test_root_owned_project_refused_without_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prov without root cannot grant access to root's project: a clear refusal
    that names the fix, not an environment whose agent cannot write."""
    project = tmp_path / "p"
    project.mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: 1500)
    if project.stat().st_uid != 0:
        pytest.skip("needs a root-owned dir")
    with pytest.raises(ConfigError, match="owned by root") as caught:
        host.resolve_project_dir("p", project, create=False)
    assert "chown" in caught.value.paragraph()


def test_credentials_only_existing_ones(tmp_path: Path) -> None:
    """--credentials mount/copy: only the agents' dirs that exist are carried; the
    rest are reported missing."""
    (tmp_path / ".claude").mkdir()
    (tmp_path / ".claude.json").write_text("{}")
    (tmp_path / ".config" / "gemini").mkdir(parents=True)
    creds = host.find_credentials(tmp_path, whole=True)
    assert [(str(c.source.relative_to(tmp_path)), c.target) for c in creds.found] == [
        (".claude", "/home/agent/.claude"),
        (".claude.json", "/home/agent/.claude.json"),
        (".config/gemini", "/home/agent/.config/gemini"),
    ]
    assert {p.name for p in creds.missing} == {".codex", ".gemini"}
    assert creds.settings == ()


def test_default_credentials_are_login_files_and_settings_copies(tmp_path: Path) -> None:
    """The default: each agent's login file itself (shared, refreshed in place),
    never its config dir; the settings that exist are offered as copies."""
    (tmp_path / ".claude").mkdir()
    (tmp_path / ".claude" / ".credentials.json").write_text("{}")
    (tmp_path / ".claude" / "settings.json").write_text('{"hooks": {}}')
    (tmp_path / ".claude.json").write_text("{}")
    (tmp_path / ".codex").mkdir()
    (tmp_path / ".codex" / "auth.json").write_text("{}")
    (tmp_path / ".codex" / "config.toml").write_text("notify = ['x']\n")
    creds = host.find_credentials(tmp_path)
    assert [c.target for c in creds.found] == [
        "/home/agent/.claude/.credentials.json",
        "/home/agent/.codex/auth.json",
    ]
    assert all(c.source.is_file() for c in creds.found)
    assert [c.target for c in creds.settings] == [
        "/home/agent/.claude/settings.json",
        "/home/agent/.claude.json",
        "/home/agent/.codex/config.toml",
    ]


def test_claudes_state_copy_leaves_the_users_other_projects_out() -> None:
    """The environment's copy of ~/.claude.json keeps the login's account and
    onboarding state, not the user's other projects or MCP servers."""
    import json

    from provisioner.agents import offered_copy

    state = {
        "oauthAccount": {"emailAddress": "u@x"},
        "hasCompletedOnboarding": True,
        "projects": {"/home/u/secret": {}},
        "mcpServers": {"s": {"command": "x"}},
    }
    copied = json.loads(offered_copy(".claude.json", json.dumps(state).encode()))
    assert copied == {"oauthAccount": {"emailAddress": "u@x"}, "hasCompletedOnboarding": True}
    assert offered_copy(".claude.json", b"not json") == b"{}\n"
    assert offered_copy(".codex/config.toml", b"x = 1\n") == b"x = 1\n"


def test_mirror_from_deb822_and_one_line_sources() -> None:
    """The mirror for the host's codename is read from either apt sources format."""
    deb822 = (
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\n"
    )
    assert mirror_from_sources([deb822], "bookworm") == "http://mirror.example/debian"
    one_line = "# c\ndeb [arch=amd64] http://m.example/ubuntu noble main universe\n"
    assert mirror_from_sources([one_line], "noble") == "http://m.example/ubuntu"
    assert mirror_from_sources([one_line], "bookworm") is None


def test_host_distro() -> None:
    """The local base follows the host: Debian bookworm, Ubuntu noble, else unknown."""
    assert host_distro("ID=debian\nVERSION_CODENAME=bookworm\n").tag == "prov-base:debian-bookworm"
    assert host_distro('ID="ubuntu"\nVERSION_CODENAME=noble\n').components == "main,universe"
    assert host_distro("ID=fedora\n") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to other users needs root")
def test_writable_by_follows_owner_group_other(tmp_path: Path) -> None:
    """The agent's write access to a mounted credential path is judged like the kernel does."""
    path = tmp_path / "cred"
    path.mkdir()
    os.chown(path, 4000, 4001)
    path.chmod(0o755)
    assert host.writable_by(path, 4000, 9) is True
    assert host.writable_by(path, 5000, 4001) is False
    path.chmod(0o775)
    assert host.writable_by(path, 5000, 4001) is True
    assert host.writable_by(path, 5000, 5001) is False


def test_ca_certs_checked_and_normalised(tmp_path: Path) -> None:
    """--ca-cert takes PEM (any suffix) or one DER certificate, and gives PEM back (installed
    as *.crt); anything that is not a certificate is refused."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.integration.tlssite import make_certs

    pem_path = make_certs(tmp_path, ["ca.example.test"])
    pem = pem_path.read_bytes()
    assert host.ca_pem(pem_path) == pem
    der = tmp_path / "ca.crt"
    der.write_bytes(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER))
    assert host.ca_pem(der) == pem
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    for bad in (junk, tmp_path / "key.pem", tmp_path, Path("/dev/zero")):
        with pytest.raises(ConfigError):
            host.ca_pem(bad)


def test_ca_cache_spares_the_parse_and_never_hides_a_bad_file(tmp_path: Path) -> None:
    """With a cache, a CA read once is not parsed again (the X.509 code stays
    unloaded); a new or changed file is parsed, and junk is still refused."""
    import subprocess
    import sys

    from tests.integration.tlssite import make_certs

    cache = tmp_path / "cache"
    pem_path = make_certs(tmp_path, ["ca.example.test"])
    pem = pem_path.read_bytes()
    assert host.ca_pem(pem_path, cache) == pem
    (kept,) = cache.iterdir()
    assert kept.read_bytes() == pem and kept.stat().st_mode & 0o077 == 0
    # A fresh interpreter reads it back without importing cryptography.x509.
    probe = (
        "import sys; from pathlib import Path; from provisioner import host; "
        f"out = host.ca_pem(Path({str(pem_path)!r}), Path({str(cache)!r})); "
        "print(out == Path(sys.argv[1]).read_bytes(), 'cryptography.x509' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(pem_path)], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["True", "False"]
    # A damaged cache entry is not trusted: the file is parsed again.
    kept.write_bytes(b"garbage")
    assert host.ca_pem(pem_path, cache) == pem
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError):
        host.ca_pem(junk, cache)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setfacl") is None, reason="needs root and setfacl"
)
def test_acl_grant_and_revoke_leave_the_tree_as_it_was(tmp_path: Path) -> None:
    """The grant lets the agent's UID write everywhere (new files included);
    the revoke leaves every pre-existing file's mode, owner and ACL (a user's
    own entry included) byte for byte as before, never follows a symlink,
    and gives what the agent made to the project's owner."""
    from provisioner import projectacl

    project = tmp_path / "proj"
    (project / "s u b").mkdir(parents=True)
    (project / "s u b" / "f").write_text("x")
    (project / "s u b" / "f").chmod(0o640)
    outside = tmp_path / "outside"
    outside.write_text("y")
    (project / "link").symlink_to(outside)
    subprocess.run(["setfacl", "-m", "u:4242:r", str(project / "s u b" / "f")], check=True)

    def snapshot() -> str:
        listing = subprocess.run(
            ["getfacl", "-R", "-P", "--absolute-names", str(project), str(outside)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        modes = sorted(
            f"{p} {p.lstat().st_mode:o} {p.lstat().st_uid}" for p in [project, *project.rglob("*")]
        )
        return listing + "\n".join(modes)

    before = snapshot()
    ledger = tmp_path / "ledger.json"
    uid = 61042
    projectacl.grant(project, uid, ledger)
    assert projectacl.has_grant(project, uid)
    listing = subprocess.run(
        ["getfacl", "-P", "--numeric", str(project / "s u b" / "f")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"user:{uid}:rw-" in listing and "user:4242:r--" in listing
    assert (
        f"user:{uid}"
        not in subprocess.run(
            ["getfacl", "--numeric", str(outside)], capture_output=True, text=True, check=True
        ).stdout
    )
    made = project / "s u b" / "agent-made"
    made.write_text("z")  # inherits the default ACL, as the agent's files do
    os.chown(made, uid, uid)
    assert projectacl.revoke(project, uid, (0, 0), ledger) == 1
    assert made.stat().st_uid == 0
    assert made.stat().st_mode & 0o777 == 0o644  # no group x from the inherited ACL
    assert (
        "user:"
        not in subprocess.run(
            ["getfacl", "--skip-base", str(made)], capture_output=True, text=True, check=True
        ).stdout
    )
    made.unlink()
    assert snapshot() == before
    assert not ledger.exists()
