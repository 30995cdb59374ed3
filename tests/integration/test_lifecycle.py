"""Keys and host keys over an environment's life: down/up, several envs, own key."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import docker
import docker.errors
import pytest

from provisioner.host import ROOT_AGENT_IDS
from tests.integration.conftest import PROJECT_UID, Prov, prov_containers


def test_down_then_up_keeps_host_key_and_alias(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """`down` removes the container only; the next `up` presents the same pinned host key."""
    name = prov.name("cycle")
    prov.project(name)
    first = prov.up(name)
    known_before = (prov.prov_home / "known_hosts").read_text()
    down = prov.run("down", name)
    assert down.returncode == 0, down.stderr
    assert prov_containers(docker_client, name) == []
    assert (prov.prov_home / "envs" / name / "ssh_host_ed25519_key").exists()
    assert f"Host prov-{name}\n" in (prov.prov_home / "ssh_config").read_text()
    second = prov.up(name)
    assert second["host_key_fingerprint"] == first["host_key_fingerprint"]
    assert second["port"] == first["port"]
    assert (prov.prov_home / "known_hosts").read_text() == known_before
    # Strict checking against the old pin still lets the system client in.
    assert prov.ssh(f"prov-{name}", "true").returncode == 0


def test_two_environments_have_different_host_keys(prov: Prov) -> None:
    """Each environment gets its own host key, user key and port."""
    a, b = prov.name("hk-a"), prov.name("hk-b")
    prov.project(a)
    prov.project(b)
    env_a, env_b = prov.up(a), prov.up(b)
    assert env_a["host_key_fingerprint"] != env_b["host_key_fingerprint"]
    assert env_a["identity_file"] != env_b["identity_file"]
    assert env_a["host"] != env_b["host"]
    assert prov.ssh(str(env_a["ssh_alias"]), "hostname").stdout.strip() == a
    assert prov.ssh(str(env_b["ssh_alias"]), "hostname").stdout.strip() == b


def test_users_own_key(prov: Prov, tmp_path: Path) -> None:
    """--key FILE.pub authorizes the user's key and the alias uses its private half."""
    key = tmp_path / "mykey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    name = prov.name("ownkey")
    prov.project(name)
    env = prov.up(name, "--key", f"{key}.pub")
    assert env["identity_file"] == str(key)
    assert not (prov.prov_home / "envs" / name / "id_ed25519").exists()
    assert prov.ssh(str(env["ssh_alias"]), "true").returncode == 0


def test_ssh_test_fails_when_container_stopped(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """A stopped environment fails ssh-test at the first step, exit 9, rest skipped."""
    name = prov.name("stopped")
    prov.project(name)
    prov.up(name)
    docker_client.containers.get(f"prov-{name}").stop(timeout=2)
    result = prov.run("ssh-test", name, "--json")
    assert result.returncode == 9
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["checks"][0]["ok"] is False
    assert all(c["ok"] is None for c in report["checks"][1:])
    # `up` repairs it: the stopped container is started, not replaced.
    cid = docker_client.containers.get(f"prov-{name}").id
    prov.up(name)
    assert docker_client.containers.get(f"prov-{name}").id == cid
    assert prov.run("ssh-test", name).returncode == 0


def test_down_unknown_environment(prov: Prov) -> None:
    """`down` of a name prov never made is a clear not-found error."""
    result = prov.run("down", prov.name("never"))
    assert result.returncode == 7
    assert "No environment named" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the quick start's root case")
def test_project_created_under_root_home_is_usable(prov: Prov) -> None:
    """As root, `--create-dir` under /root (0700 in the image too) gives agents a
    reachable, writable project: the quick start's case."""
    base = Path("/root") / f".prov-test-{prov.prefix}"
    name = prov.name("rootdir")
    try:
        env = prov.up(name, "--create-dir", "--project", str(base / name))
        # Given to the agent's IDs: none of this host's accounts (not 1000's).
        assert Path(str(env["project_dir"])).stat().st_uid in ROOT_AGENT_IDS
        assert prov.run("ssh-test", name).returncode == 0
        assert prov.ssh(str(env["ssh_alias"]), f"touch {base / name}/x").returncode == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_lost_keys_are_repaired_or_the_fix_is_named(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """A deleted client key, an emptied authorized_keys (container in Docker's restart
    loop) are repaired by `up`; a replaced host key is drift whose named fix works."""
    name = prov.name("repair")
    prov.project(name)
    alias = f"prov-{name}"
    env_dir = prov.prov_home / "envs" / name
    prov.up(name)
    subprocess.run(["ssh", "-F", str(prov.prov_home / "ssh_config"), "-O", "exit", alias],
                   capture_output=True, check=False)  # fmt: skip
    for key in ("id_ed25519", "id_ed25519.pub"):
        (env_dir / key).unlink()
    repaired = prov.run("up", name, check=True)
    assert "authorized it again" in repaired.stderr
    assert prov.ssh(alias, "true").returncode == 0

    (env_dir / "sshd" / "authorized_keys").write_text("")
    docker_client.containers.get(alias).restart(timeout=1)
    restarted = prov.run("up", name)
    assert restarted.returncode == 0, restarted.stderr
    assert docker_client.containers.get(alias).status == "running"
    assert prov.ssh(alias, "true").returncode == 0

    before = prov.up(name)["host_key_fingerprint"]
    for key in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
        (env_dir / key).unlink()
    drift = prov.run("up", name)
    assert drift.returncode == 4 and "host key" in drift.stderr and "--recreate" in drift.stderr
    after = prov.up(name, "--recreate")["host_key_fingerprint"]
    assert after != before
    assert prov.ssh(alias, "true").returncode == 0


def test_live_agents_are_not_ended_without_a_word(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """stop/restart/down with a live tmux session and no terminal: refused, with the
    sessions named, and nothing stopped; with --yes they go ahead."""
    name = prov.name("livetmux")
    prov.project(name)
    alias = f"prov-{name}"
    prov.up(name)
    assert (
        prov.ssh(alias, "tmux new-session -d -s agents1 && tmux new-window -t agents1").returncode
        == 0
    )
    for command in ("stop", "restart", "down"):
        result = prov.run(command, name)
        assert result.returncode == 2, (command, result.stderr)
        assert "agents1 (2 windows)" in result.stderr and "--yes" in result.stderr
        assert docker_client.containers.get(alias).status == "running", command
    assert "agents1" in prov.ssh(alias, "tmux list-sessions").stdout
    assert prov.run("restart", name, "--yes").returncode == 0
    assert prov.ssh(alias, "tmux list-sessions").returncode != 0  # the server ended with it
    assert prov.run("stop", name).returncode == 0  # nothing live: no question


def test_ssh_test_without_a_name_tests_every_environment(prov: Prov, tmp_path: Path) -> None:
    """`prov ssh-test` as the usage line writes it: a block per environment of this
    PROV_HOME, a summary, non-zero when one fails; one name tests only that one."""
    env = {"PROV_HOME": str(tmp_path / "ph")}
    names = [prov.name("all-a"), prov.name("all-b")]
    for name in names:
        prov.project(name)
        assert prov.run("up", name, "--no-ssh-config", env=env).returncode == 0
    try:
        every = prov.run("ssh-test", env=env)
        assert every.returncode == 0, every.stdout + every.stderr
        assert all(f"== {name}" in every.stdout for name in names)
        assert "2 of 2 environments pass" in every.stderr
        assert prov.run("stop", names[1], env=env).returncode == 0
        failing = prov.run("ssh-test", "--json", env=env)
        assert failing.returncode == 9
        reports = {r["name"]: r["ok"] for r in json.loads(failing.stdout)}
        assert reports == {names[0]: True, names[1]: False}
        assert prov.run("ssh-test", names[0], env=env).returncode == 0
    finally:
        for name in names:
            prov.run("rm", name, "--yes", env=env)


def test_home_survives_down_and_up_and_goes_with_rm(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """Shell history and user-installed tools in /home/agent outlive `down` + `up`
    (and --recreate); `rm` removes the home volume; status says where home lives."""
    name = prov.name("home")
    prov.project(name)
    alias = f"prov-{name}"
    prov.up(name)
    made = prov.ssh(alias, "mkdir -p ~/.local/bin && echo kept > ~/.local/bin/tool && id -u")
    assert made.returncode == 0 and made.stdout.strip() == str(PROJECT_UID)
    assert prov.run("down", name).returncode == 0
    status = prov.run("status", name, "--json", check=True)
    assert "kept" in json.loads(status.stdout)["home_volume"]
    prov.up(name)
    assert prov.ssh(alias, "cat ~/.local/bin/tool").stdout.strip() == "kept"
    prov.up(name, "--recreate", "--pids-limit", "2048")
    assert prov.ssh(alias, "cat ~/.local/bin/tool && test -O ~").stdout.strip() == "kept"
    assert prov.run("rm", name, "--yes").returncode == 0
    assert not docker_client.volumes.list(filters={"name": f"{alias}-home"})


def test_gc_shows_then_removes_only_unused_images(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """`prov gc` lists an unused prov image without removing it; `--yes` removes it; an
    image a container uses is kept even when named."""
    name = prov.name("gcuser")
    prov.project(name)
    used = docker_client.containers.get(str(prov.up(name)["container"])).image
    spare = f"prov-env:gctest-{prov.prefix}"
    docker_client.images.build(
        fileobj=io.BytesIO(f"FROM {used.id}\nLABEL prov.gctest={prov.prefix}\n".encode()),
        tag=spare,
        rm=True,
    )
    try:
        dry = prov.run("gc")
        assert dry.returncode == 0 and f"would remove {spare}" in dry.stdout
        assert not any(t in dry.stdout for t in used.tags)
        assert docker_client.images.list(name=spare)
        used_tag = used.tags[0]
        named = prov.run("gc", spare, used_tag, "--yes")
        assert named.returncode == 0 and f"removed {spare}" in named.stdout, named.stderr
        assert not docker_client.images.list(name=spare)
        assert docker_client.images.get(used_tag).id == used.id
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(spare, force=True)
