"""The project's environment: session env and secrets, mounts, credentials modes,
--from images, .prov/Dockerfile, GPUs, and guide methods 1, 3 and 4."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import PROJECT_GID, PROJECT_UID, Prov, prov_containers

SECRET = "sk-test-0123456789-not-a-real-key"


def _pane_output(prov: Prov, alias: str, session: str, directory: str, command: str) -> str:
    """Type `command` into a tmux pane made the way NTM makes it; return what it wrote."""
    out_file = f"/tmp/{session}.out"

    def tmux(*args: str) -> None:
        inner = "tmux " + " ".join(shlex.quote(a) for a in args)
        result = prov.ssh(alias, f"/bin/sh -c {shlex.quote(inner)}")
        assert result.returncode == 0, result.stderr

    tmux("new-session", "-d", "-s", session, "-c", directory)
    tmux(
        "send-keys",
        "-t",
        session,
        f"cd {shlex.quote(directory)} && ({command}) > {out_file} 2>&1; echo done >> {out_file}",
        "Enter",
    )
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        text = prov.ssh(alias, f"cat {out_file} 2>/dev/null").stdout
        if text.rstrip().endswith("done"):
            break
        time.sleep(0.2)
    tmux("kill-session", "-t", session)
    return text


def test_session_env_reaches_ssh_and_panes_but_not_docker_inspect(
    prov: Prov, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """--env values reach agents (ssh and tmux panes), never Docker's env or output;
    an agent's API key set here reaches them as the proxy's placeholder only, its
    value kept on this machine in one file of the environment's own (0600)."""
    name = prov.name("envs")
    project = prov.project(name)
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=file value\n")
    result = prov.run(
        "up",
        name,
        "--json",
        "-e",
        f"PLAIN={SECRET}-plain",
        "--env-file",
        str(env_file),
        env={"ANTHROPIC_API_KEY": SECRET},
    )
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    alias = f"prov-{name}"
    seen = prov.ssh(alias, 'echo "$ANTHROPIC_API_KEY|$PLAIN|$FROM_FILE"').stdout.strip()
    assert seen == f"prov-placeholder-anthropic-api-key|{SECRET}-plain|file value"
    pane = _pane_output(prov, alias, "envtest", str(project), 'echo "$PLAIN $ANTHROPIC_API_KEY"')
    assert f"{SECRET}-plain prov-placeholder-anthropic-api-key" in pane
    attrs = docker_client.containers.get(alias).attrs
    assert SECRET not in json.dumps(attrs)
    assert attrs["Config"]["Labels"]["prov.env-keys"] == "ANTHROPIC_API_KEY,FROM_FILE,PLAIN"
    # On the host's disk only in the secrets store and its proxy's configuration,
    # in the environment's private dir; the --env value nowhere.
    holders = sorted(
        path
        for path in prov.prov_home.rglob("*")
        if path.is_file() and SECRET.encode() in path.read_bytes()
    )
    env_dir = prov.prov_home / "envs" / name
    kept = [env_dir / "egress" / "squid.conf", env_dir / "secrets.json"]
    slot = docker_client.containers.get(f"{alias}-egress").labels.get("prov.slot")
    if slot:  # its proxy was a slot: the configuration it mounts is in the slot's dir
        kept.append(prov.prov_home / "slots" / slot / "squid.conf")
        assert (prov.prov_home / "slots").stat().st_mode & 0o777 == 0o700
    assert holders == sorted(kept)
    assert env_dir.stat().st_mode & 0o777 == 0o700
    assert (env_dir / "secrets.json").stat().st_mode & 0o777 == 0o600
    for path in prov.prov_home.rglob("*"):
        if path.is_file():
            assert f"{SECRET}-plain".encode() not in path.read_bytes(), path
    # The agent sees --env values in its sessions, but the file itself is root's only.
    assert prov.ssh(alias, "cat /etc/prov/environment").returncode != 0


def test_session_env_changes_are_applied_not_dropped(prov: Prov) -> None:
    """`up -e KEY=new` on a running, then a stopped environment: new logins see the new
    value (exactly as given), and prov says running panes keep the old one."""
    name = prov.name("envchange")
    prov.project(name)
    alias = f"prov-{name}"
    prov.up(name, "-e", "TOKEN=old value")
    assert prov.ssh(alias, 'echo "[$TOKEN]"').stdout.strip() == "[old value]"
    again = prov.run("up", name, "-e", "TOKEN=new value ", check=True)
    assert "session environment updated (TOKEN)" in again.stderr
    assert "keep their old values" in again.stderr
    assert prov.ssh(alias, 'echo "[$TOKEN]"').stdout.strip() == "[new value ]"
    same = prov.run("up", name, "-e", "TOKEN=new value ", check=True)
    assert "session environment updated" not in same.stderr
    prov.run("stop", name, check=True)
    started = prov.run("up", name, "-e", "TOKEN=third", check=True)
    assert "session environment updated (TOKEN)" in started.stderr
    assert prov.ssh(alias, 'echo "[$TOKEN]"').stdout.strip() == "[third]"


def test_keys_mount_is_read_only_and_holds_no_client_key(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """The keys dir mounted into the container holds only the host key and the
    authorized key (never the client's private key), and even root inside
    cannot change the host's copy."""
    name = prov.name("keysmount")
    prov.project(name)
    env = prov.up(name, "--sudo")  # root inside, to try the host's copy
    alias = str(env["ssh_alias"])
    listing = prov.ssh(alias, "sudo ls -A /etc/prov/keys")
    assert listing.returncode == 0, listing.stderr
    assert sorted(listing.stdout.split()) == ["authorized_keys", "ssh_host_ed25519_key"]
    write = prov.ssh(alias, "sudo sh -c 'echo x >> /etc/prov/keys/authorized_keys'")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr
    keys_dir = prov.prov_home / "envs" / name / "sshd"
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys_dir / "ssh_host_ed25519_key").stat().st_mode) == 0o600
    mounts = docker_client.containers.get(alias).attrs["Mounts"]
    keys_mount = [m for m in mounts if m["Destination"] == "/etc/prov/keys"]
    assert keys_mount and keys_mount[0]["RW"] is False
    assert keys_mount[0]["Source"] == str(keys_dir)


def test_extra_mount_read_only(prov: Prov, tmp_path: Path) -> None:
    """--mount SRC:DST:ro shows the host files and refuses writes."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello.txt").write_text("hi\n")
    name = prov.name("mnt")
    prov.project(name)
    prov.up(name, "--mount", f"{data}:/data:ro")
    result = prov.ssh(f"prov-{name}", "cat /data/hello.txt; touch /data/x")
    assert result.stdout.strip() == "hi"
    assert result.returncode != 0 and "Read-only" in result.stderr


def test_credentials_copy_and_none(prov: Prov) -> None:
    """copy: a private 0600 copy the agent can refresh without touching the host's;
    none: nothing mounted."""
    name = prov.name("credcopy")
    prov.project(name)
    prov.up(name, "--credentials", "copy")
    alias = f"prov-{name}"
    host_before = (prov.home / ".codex" / "auth.json").read_text()
    result = prov.ssh(
        alias,
        'cat ~/.codex/auth.json && echo \'{"token": "copy"}\' > '
        "~/.codex/auth.json && stat -c %a ~/.codex/auth.json",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("600")  # mode of the copy inside
    assert (prov.home / ".codex" / "auth.json").read_text() == host_before
    copy = prov.prov_home / "envs" / name / "credentials" / ".codex" / "auth.json"
    assert '"copy"' in copy.read_text()
    assert (copy.stat().st_uid, copy.stat().st_mode & 0o077) == (PROJECT_UID, 0)

    bare = prov.name("credsnone")
    prov.project(bare)
    prov.up(bare, "--credentials", "none")
    assert (
        prov.ssh(f"prov-{bare}", "test ! -e ~/.codex && test ! -e ~/.claude.json").returncode == 0
    )


def test_project_dockerfile_layer(prov: Prov) -> None:
    """PROJECT/.prov/Dockerfile is built on top of prov's image; changing it rebuilds."""
    name = prov.name("projdf")
    project = prov.project(name)
    (project / ".prov").mkdir()
    dockerfile = project / ".prov" / "Dockerfile"
    dockerfile.write_text(
        "ARG PROV_IMAGE\nFROM ${PROV_IMAGE}\nRUN echo layer-one > /etc/project-marker\n"
    )
    first = prov.up(name)
    assert (
        prov.ssh(str(first["ssh_alias"]), "cat /etc/project-marker").stdout.strip() == "layer-one"
    )
    dockerfile.write_text(dockerfile.read_text().replace("layer-one", "layer-two"))
    drift = prov.run("up", name)
    assert drift.returncode == 4 and "image" in drift.stderr
    prov.up(name, "--recreate")
    assert (
        prov.ssh(str(first["ssh_alias"]), "cat /etc/project-marker").stdout.strip() == "layer-two"
    )


def test_from_user_image(prov: Prov, docker_client: docker.DockerClient, base_image: str) -> None:
    """--from adds prov's layers to the user's Debian-based project image."""
    base = docker_client.images.get(base_image)
    docker_client.images.build(
        fileobj=io.BytesIO(f"FROM {base.id}\nRUN echo mine > /opt/user-marker\n".encode()),
        tag="prov-test-userimage:1",
        rm=True,
    )
    try:
        name = prov.name("fromimg")
        prov.project(name)
        env = prov.up(name, "--from", "prov-test-userimage:1")
        assert prov.ssh(str(env["ssh_alias"]), "cat /opt/user-marker").stdout.strip() == "mine"
    finally:
        prov.run("down", prov.name("fromimg"))
        docker_client.images.remove("prov-test-userimage:1", force=True)


def test_from_non_debian_image_is_refused(prov: Prov, docker_client: docker.DockerClient) -> None:
    """An image that is not Debian/Ubuntu based gets a clear error naming what it is."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b'ID=alpine\nPRETTY_NAME="Alpine Linux v3.20"\n'
        info = tarfile.TarInfo("etc/os-release")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    docker_client.api.import_image_from_data(buf.getvalue(), repository="prov-test-alpine", tag="1")
    try:
        name = prov.name("alpine")
        prov.project(name)
        result = prov.run("up", name, "--from", "prov-test-alpine:1")
        assert result.returncode == 5
        assert "not Debian or Ubuntu based" in result.stderr
        assert "Alpine Linux v3.20" in result.stderr
        assert prov_containers(docker_client, name) == []
    finally:
        docker_client.images.remove("prov-test-alpine:1", force=True)


def test_gpus_without_gpu_support(prov: Prov, docker_client: docker.DockerClient) -> None:
    """--gpus asks Docker for GPU devices; an engine without them is a clear error.
    The environment's start fails while its egress proxy is being started beside
    it: the proxy's start is awaited, then everything made is removed."""
    name = prov.name("gpu")
    prov.project(name)
    result = prov.run("up", name, "--gpus", "all")
    assert result.returncode != 0
    assert "cannot give containers GPUs" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert docker_client.containers.list(all=True, filters={"name": f"prov-{name}"}) == []
    assert not docker_client.volumes.list(filters={"name": f"prov-{name}-home"})
    assert not docker_client.networks.list(names=[f"prov-{name}-net"])


def test_systemd_run_prefix_runs_in_the_container(prov: Prov) -> None:
    """NTM's memLimitPrefix line typed into a pane runs the command inside."""
    name = prov.name("sdrun")
    project = prov.project(name)
    prov.up(name)
    text = _pane_output(
        prov,
        f"prov-{name}",
        "sdrun",
        str(project),
        "systemd-run --user --scope -q -p MemoryMax=4G id -un",
    )
    assert text.splitlines()[0] == "agent", text


def test_exec_alias_and_route(prov: Prov, tmp_path: Path) -> None:
    """Method 1 (exec, alias) and method 4 (route picks the project's container, else local)."""
    a, b = prov.name("route-a"), prov.name("route-b")
    project_a, project_b = prov.project(a), prov.project(b)
    (project_a / "sub").mkdir()
    prov.up(a)
    prov.up(b)
    ran = prov.run("exec", a, "--", "sh", "-c", "id -un; pwd")
    assert ran.stdout.split() == ["agent", str(project_a)], ran.stderr
    aliases = prov.run("alias", a).stdout
    assert f"alias cc-{a}=" in aliases and f"prov-{a} claude" in aliases

    def route(cwd: Path) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "provisioner", "route", "--", "sh", "-c", "hostname; pwd"],
            cwd=cwd,
            env={**prov.env, "PWD": str(cwd)},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert route(project_a / "sub").split() == [a, str(project_a / "sub")]
    assert route(project_b).split() == [b, str(project_b)]
    assert route(tmp_path).split() == [os.uname().nodename, str(tmp_path)]


def test_ntm_config_round_trip(prov: Prov) -> None:
    """ntm-config: --dry-run writes nothing, apply keeps comments and other keys and makes a
    backup, --remove restores the file byte for byte."""
    name = prov.name("ntmcfg")
    prov.project(name)
    prov.up(name)
    config = Path(prov.env["NTM_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    original = (
        '# my NTM settings\nprojects_base = "~/code" # here\n\n[agents]\n'
        'aider = "aider --yes" # keep me\nclaude = "claude --verbose"\n'
    )
    config.write_text(original)
    dry = prov.run("ntm-config", name, "--dry-run")
    assert dry.returncode == 0 and f"prov-{name} claude" in dry.stdout
    assert config.read_text() == original
    applied = prov.run("ntm-config", name)
    assert applied.returncode == 0, applied.stderr
    text = config.read_text()
    assert "# my NTM settings" in text and 'aider = "aider --yes" # keep me' in text
    assert f"docker exec -it -u agent -w {{{{shellQuote .ProjectDir}}}} prov-{name} claude" in text
    assert Path(f"{config}.prov-backup").read_text() == original
    routed = prov.run("ntm-config", "--route")
    assert routed.returncode == 0 and " route -- claude" in config.read_text()
    removed = prov.run("ntm-config", "--remove")
    assert removed.returncode == 0, removed.stderr
    assert config.read_text() == original


@pytest.mark.usefixtures("prov")
def test_project_owner_ids_constant() -> None:
    """The project owner used by these tests is not root (guards the UID tests above)."""
    assert PROJECT_UID != 0 and PROJECT_GID != 0


@pytest.fixture()
def ssh_agent(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """A real ssh-agent holding one key: (its variables, the key's fingerprint)."""
    out = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    agent_env = dict(re.findall(r"(SSH_AUTH_SOCK|SSH_AGENT_PID)=([^;]+);", out))
    key = tmp_path / "fwd_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = {**os.environ, **agent_env}
    subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    try:
        yield agent_env, fingerprint
    finally:
        subprocess.run(["kill", agent_env["SSH_AGENT_PID"]], check=False)


def test_agent_forwarding_only_with_forward_agent(
    prov: Prov, ssh_agent: tuple[dict[str, str], str]
) -> None:
    """Off by default (even `ssh -A` gets no agent inside); with --forward-agent the
    agent inside lists the user's key through the alias and the master prov keeps."""
    agent_env, fingerprint = ssh_agent
    config = str(prov.home / ".ssh" / "config")
    plain, fwd = prov.name("nofwd"), prov.name("fwd")
    for name in (plain, fwd):
        prov.project(name)
    prov.up(plain)
    result = prov.run("up", fwd, "--json", "--forward-agent", env=agent_env)
    assert result.returncode == 0, result.stderr

    def agent_keys(alias: str, *options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-F", config, "-o", "BatchMode=yes", *options, alias, "ssh-add -l"],
            capture_output=True,
            text=True,
            env={**os.environ, **agent_env},
            timeout=30,
            check=False,
        )

    refused = agent_keys(f"prov-{plain}", "-A", "-S", "none")
    assert refused.returncode != 0 and fingerprint not in refused.stdout
    forwarded = agent_keys(f"prov-{fwd}")
    assert forwarded.returncode == 0 and fingerprint in forwarded.stdout, forwarded.stderr


def _readme_block(heading: str, language: str) -> str:
    """The first fenced `language` block after `heading` in the README: the tests run
    the documented code itself."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text[text.index(heading) :]
    start = section.index(f"```{language}\n") + len(f"```{language}\n")
    return section[start : section.index("```", start)]


def test_everyday_clients_through_the_alias(prov: Prov, tmp_path: Path) -> None:
    """rsync both ways, python3 inside, `ansible -m ping`, and the README's paramiko way
    (prov's ssh_config, the pin, RejectPolicy) with the system clients as users run them."""
    name = prov.name("clients")
    prov.project(name)
    alias = f"prov-{name}"
    prov.up(name)
    config = str(prov.home / ".ssh" / "config")
    ssh_cmd = f"ssh -F {config} -o BatchMode=yes"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "file.txt").write_text("through rsync\n")

    def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=120, check=False, env=env
        )

    up = run("rsync", "-a", "-e", ssh_cmd, f"{src}/", f"{alias}:/tmp/rs/")
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back"
    down = run("rsync", "-a", "-e", ssh_cmd, f"{alias}:/tmp/rs/", f"{back}/")
    assert down.returncode == 0, down.stderr
    assert (back / "sub" / "file.txt").read_text() == "through rsync\n"
    assert prov.ssh(alias, "python3 -c 'print(6 * 7)'").stdout.strip() == "42"

    ansible = Path(sys.executable).parent / "ansible"
    env = {
        **os.environ,
        "ANSIBLE_SSH_ARGS": f"-F {config} -o ControlMaster=auto -o ControlPersist=60s",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
    }
    ping = run(str(ansible), "-i", f"{alias},", "all", "-m", "ping", env=env)
    assert ping.returncode == 0 and '"ping": "pong"' in ping.stdout, ping.stdout + ping.stderr

    snippet = _readme_block("## Other SSH clients", "python").replace("prov-myproject", alias)
    script = snippet + "print(client.exec_command('id -un')[1].read().decode().strip())\n"
    paramiko_run = run(
        sys.executable, "-c", script, env={**os.environ, "PROV_HOME": str(prov.prov_home)}
    )
    assert paramiko_run.stdout.strip() == "agent", paramiko_run.stderr
    # The same code refuses the host when the pin holds another key.
    fake_home = tmp_path / "fake-ph"
    fake_home.mkdir()
    (fake_home / "ssh_config").write_text((prov.prov_home / "ssh_config").read_text())
    other = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")],
        check=True,
    )
    assert other.returncode == 0
    blob = (tmp_path / "other.pub").read_text().split()[1]
    (fake_home / "known_hosts").write_text(f"{alias} ssh-ed25519 {blob}\n")
    refused = run(sys.executable, "-c", script, env={**os.environ, "PROV_HOME": str(fake_home)})
    assert refused.returncode != 0 and "BadHostKeyException" in refused.stderr
