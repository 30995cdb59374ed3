"""`prov up` end to end: real engine, real sshd, system ssh, tmux the way NTM drives it."""

from __future__ import annotations

import json
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import PROJECT_GID, PROJECT_UID, Prov, env_network


@pytest.fixture(scope="module")
def env(prov: Prov) -> dict[str, object]:
    name = prov.name("main")
    prov.project(name)
    return prov.up(name)


def test_up_reports_everything_ntm_and_ssh_need(prov: Prov, env: dict[str, object]) -> None:
    """--json carries the alias, endpoint, key files, pinned fingerprint and ntm command."""
    name = prov.name("main")
    assert env["name"] == name
    assert env["container"] == f"prov-{name}"
    assert env["ssh_alias"] == f"prov-{name}"
    assert str(env["host"]).startswith("10.213.") and env["port"] == 22  # its own address
    assert env["user"] == "agent"
    assert str(env["host_key_fingerprint"]).startswith("SHA256:")
    assert env["project_dir"] == str(prov.projects / name)
    assert env["ntm_command"] == f"ntm spawn {name} --cc=2 --cod=1 --ssh=prov-{name}"
    assert stat.S_IMODE(Path(str(env["identity_file"])).stat().st_mode) == 0o600
    assert stat.S_IMODE(prov.prov_home.stat().st_mode) == 0o700


def test_nothing_published_by_default(
    docker_client: docker.DockerClient, env: dict[str, object]
) -> None:
    """On its internal network the environment publishes no host port at all: sshd is
    reached at its own address, which only this machine can reach."""
    container = docker_client.containers.get(str(env["container"]))
    assert not container.attrs["HostConfig"].get("PortBindings")
    networks = container.attrs["NetworkSettings"]["Networks"]
    own = env_network(docker_client, str(env["container"]))  # its own, or its slot's
    assert list(networks) == [own]
    assert networks[own]["IPAddress"] == env["host"]
    assert docker_client.networks.get(own).attrs["Internal"] is True


def test_published_on_loopback_only_with_open_egress(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """With --egress open, Docker publishes sshd on 127.0.0.1 only, at the reported port."""
    name = prov.name("openpub")
    prov.project(name)
    env = prov.up(name, "--egress", "open")
    assert env["host"] == "127.0.0.1"
    container = docker_client.containers.get(str(env["container"]))
    bindings = container.attrs["NetworkSettings"]["Ports"]["22/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(env["port"])}]
    assert prov.ssh(f"prov-{name}", "true").returncode == 0


def test_system_ssh_through_alias_with_strict_pinning(prov: Prov, env: dict[str, object]) -> None:
    """Plain `ssh ALIAS` (as NTM runs it) logs in as agent with the project owner's IDs."""
    result = prov.ssh(str(env["ssh_alias"]), "id -u; id -g; id -un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(PROJECT_UID), str(PROJECT_GID), "agent"]


def test_pinned_host_key_is_enforced(prov: Prov, env: dict[str, object]) -> None:
    """A wrong key in prov's known_hosts makes ssh refuse to connect (no TOFU)."""
    known = prov.prov_home / "known_hosts"
    original = known.read_text()
    alias = str(env["ssh_alias"])
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(prov.home / "other")],
            check=True,
        )
        other = (prov.home / "other.pub").read_text().split()
        known.write_text(
            "".join(
                f"{alias} {other[0]} {other[1]}\n" if line.startswith(alias + " ") else line + "\n"
                for line in original.splitlines()
            )
        )
        # A fresh connection: bypass any running master for this check.
        result = prov.ssh(alias, "true", options=("-o", "ControlPath=none"))
        assert result.returncode == 255
        assert (
            "HOST IDENTIFICATION HAS CHANGED" in result.stderr
            or "Host key verification failed" in result.stderr
        )
    finally:
        known.write_text(original)


def test_root_and_password_logins_refused(prov: Prov, env: dict[str, object]) -> None:
    """Only `agent` with its key gets in: root with the same key is refused."""
    result = prov.ssh(
        str(env["ssh_alias"]), "true", options=("-o", "ControlPath=none", "-l", "root")
    )
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def _ntm_tmux(prov: Prov, alias: str, *tmux_args: str) -> subprocess.CompletedProcess[str]:
    """Exactly NTM's remote call: ssh -- ALIAS "/bin/sh -c 'tmux ARG ...'"."""
    inner = "tmux " + " ".join(shlex.quote(a) for a in tmux_args)
    return subprocess.run(
        [
            "ssh",
            "-F",
            str(prov.home / ".ssh" / "config"),
            "--",
            alias,
            f"/bin/sh -c {shlex.quote(inner)}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_existing_credentials_mounted_writable(prov: Prov, env: dict[str, object]) -> None:
    """The host's Codex login and Claude's state reach the agent's home, the login
    writable: a token refreshed inside (written as Codex writes it, a new file
    renamed over the old) reaches the host's own file; missing ~/.gemini is
    neither mounted nor created on the host."""
    alias = str(env["ssh_alias"])
    refreshed = (
        '{"tokens": {"refresh_token": "t1", "account_id": "acc"}, '
        '"last_refresh": "2026-12-01T00:00:00Z"}'
    )
    result = prov.ssh(
        alias,
        f"cat ~/.codex/auth.json && echo {shlex.quote(refreshed)} > ~/.codex/new.json && "
        "mv ~/.codex/new.json ~/.codex/auth.json "
        "&& test -f ~/.claude.json && test ! -e ~/.gemini && mkdir -p ~/.config/x",
    )
    assert result.returncode == 0, result.stderr
    assert '"t0"' in result.stdout
    deadline = time.monotonic() + 15  # the keeper looks every 2 s
    while '"t1"' not in (prov.home / ".codex" / "auth.json").read_text():
        assert time.monotonic() < deadline, (prov.home / ".codex" / "auth.json").read_text()
        time.sleep(0.5)
    assert not (prov.home / ".gemini").exists()
    assert not (prov.home / ".config" / "gemini").exists()


def test_ntm_spawn_calls_work_over_the_alias(prov: Prov, env: dict[str, object]) -> None:
    """tmux -V, new-session -c DIR, send-keys `cd DIR && ...`: the file appears on the host,
    owned by the project's owner."""
    alias, session = str(env["ssh_alias"]), str(env["name"])
    project = Path(str(env["project_dir"]))
    assert _ntm_tmux(prov, alias, "-V").stdout.startswith("tmux ")
    created = _ntm_tmux(prov, alias, "new-session", "-d", "-s", session, "-c", str(project))
    assert created.returncode == 0, created.stderr
    split = _ntm_tmux(prov, alias, "split-window", "-t", session, "-c", str(project))
    assert split.returncode == 0, split.stderr
    marker = project / "made-by-agent.txt"
    typed = _ntm_tmux(
        prov,
        alias,
        "send-keys",
        "-t",
        f"{session}:0.1",
        f"cd {shlex.quote(str(project))} && id -un > {marker.name}",
        "Enter",
    )
    assert typed.returncode == 0, typed.stderr
    deadline = time.monotonic() + 10
    # The shell creates the file before `id` writes to it: wait for content.
    while (not marker.exists() or not marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.read_text().strip() == "agent"
    assert (marker.stat().st_uid, marker.stat().st_gid) == (PROJECT_UID, PROJECT_GID)
    panes = _ntm_tmux(prov, alias, "list-panes", "-t", session, "-F", "#{pane_current_path}")
    assert panes.stdout.split() == [str(project), str(project)]
    _ntm_tmux(prov, alias, "kill-session", "-t", session)


def test_ssh_test_passes_every_step(prov: Prov, env: dict[str, object]) -> None:
    """`prov ssh-test NAME --json` reports each step and all pass."""
    result = prov.run("ssh-test", str(env["name"]), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    names = [c["name"] for c in report["checks"]]
    assert "host key matches the pin" in names
    assert "tmux session created the way NTM does" in names
    assert all(c["ok"] is True for c in report["checks"])


def test_ssh_audit_finds_no_failures(env: dict[str, object]) -> None:
    """ssh-audit reports no failures (exit 0 good, 2 warnings only, 3 failures)."""
    result = subprocess.run(
        # The venv's own ssh-audit: a fresh machine has none on PATH.
        [str(Path(sys.executable).parent / "ssh-audit"), "-p", str(env["port"]), str(env["host"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode in (0, 2), result.stdout
    assert "[fail]" not in result.stdout


def test_second_up_is_a_fast_noop(
    prov: Prov, env: dict[str, object], docker_client: docker.DockerClient
) -> None:
    """Re-running `up` unchanged keeps the same container and re-verifies it."""
    before = docker_client.containers.get(str(env["container"])).id
    again = prov.up(str(env["name"]))
    assert again == env
    assert docker_client.containers.get(str(env["container"])).id == before


def test_user_ssh_config_gets_one_include(prov: Prov, env: dict[str, object]) -> None:
    """~/.ssh/config gains exactly one Include of prov's file, and is 0600."""
    config = prov.home / ".ssh" / "config"
    assert config.read_text().count(f'Include "{prov.prov_home / "ssh_config"}"') == 1
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_installed_script_runs(prov: Prov) -> None:
    """The console script `prov` is installed and answers --help."""
    import shutil
    import sys

    script = Path(sys.executable).parent / "prov"
    exe = str(script) if script.exists() else shutil.which("prov")
    assert exe, "the prov console script is not installed"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "ssh-test" in result.stdout
