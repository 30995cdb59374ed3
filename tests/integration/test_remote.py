"""Environments on remote Docker engines, reached over SSH (issue 11).

Two remote hosts are built by the suite itself (tests/integration/remotehost.py):
each a network namespace with its own sshd and dockerd and no route out. prov
reaches them only as it would reach a real machine: `ssh://root@ADDR` with
the user's ssh config, key and known_hosts. That user's HOME is this test's;
OpenSSH reads the config of the passwd entry's home, so an `ssh` wrapper
first on PATH passes `-F $HOME/.ssh/config` (prov, its ProxyCommands, rsync
and the NTM-style calls below all run it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import docker
import pytest

from provisioner.engine.sshlink import link_dir
from tests.integration.conftest import PROJECT_GID, PROJECT_UID, Prov, remove_volumes
from tests.integration.remotehost import BASE_DIR, RemoteHost, cleanup_stale

pytestmark = pytest.mark.remote


@dataclass
class Remote:
    prov: Prov
    hosts: list[RemoteHost]
    key: Path
    known_hosts: Path

    def trust(self, host: RemoteHost) -> None:
        lines = [
            ln
            for ln in self.known_hosts.read_text().splitlines()
            if not ln.startswith(host.address + " ")
        ]
        self.known_hosts.write_text("\n".join([*lines, host.host_key_line()]) + "\n")

    def forget(self, host: RemoteHost) -> None:
        lines = self.known_hosts.read_text().splitlines()
        kept = [ln for ln in lines if not ln.startswith(host.address + " ")]
        self.known_hosts.write_text("".join(ln + "\n" for ln in kept))

    def engine(self, host: RemoteHost) -> docker.DockerClient:
        """The remote engine itself, asked directly (not through prov)."""
        return docker.DockerClient(base_url=f"unix://{host.docker_sock}")

    def leftovers(self, host: RemoteHost, name: str) -> list[str]:
        """Whatever of environment `name` exists on that engine."""
        client = self.engine(host)
        found = [
            f"container {c.name}"
            for c in client.containers.list(all=True)
            if c.labels.get("prov.name") == name
        ]
        found += [
            f"volume {v.name}"
            for v in client.volumes.list()
            if (v.attrs.get("Labels") or {}).get("prov.name") == name
        ]
        found += [
            f"network {n.name}"
            for n in client.networks.list()
            if (n.attrs.get("Labels") or {}).get("prov.name") == name
        ]
        return found

    def ssh(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The user's own ssh (through the wrapper), as NTM runs it."""
        return subprocess.run(
            ["ssh", "-o", "BatchMode=yes", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.prov.env,
            check=False,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture(scope="module")
def remote(prov: Prov, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    cleanup_stale()
    root = tmp_path_factory.mktemp("remote")
    home = root / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "prov-test", "-f", str(key)],
        check=True,
    )
    wrapper = root / "bin"
    wrapper.mkdir()
    (wrapper / "ssh").write_text('#!/bin/sh\nexec /usr/bin/ssh -F "$HOME/.ssh/config" "$@"\n')
    (wrapper / "ssh").chmod(0o755)
    known = home / ".ssh" / "known_hosts"
    known.write_text("")
    (home / ".codex").mkdir()
    (home / ".codex" / "auth.json").write_text('{"token": "remote-t0"}')
    (home / ".ssh" / "config").write_text(
        f"IdentityFile {key}\nIdentitiesOnly yes\nUserKnownHostsFile {known}\n"
        "GlobalKnownHostsFile /dev/null\n"
        "Host first-engine\n    HostName 10.231.1.2\n    User root\n"
    )
    hosts = [
        RemoteHost(i, BASE_DIR / f"r{i}", (key.with_suffix(".pub")).read_text()) for i in (1, 2)
    ]
    errors: list[BaseException] = []

    def start(host: RemoteHost) -> None:
        try:
            host.start()
        except BaseException as exc:  # reported below, after both tried
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(h,)) for h in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    env = {
        **prov.env,
        "HOME": str(home),
        "PROV_HOME": str(root / "ph"),
        "PATH": f"{wrapper}:{os.environ['PATH']}",
        "NTM_CONFIG": str(home / ".config" / "ntm" / "config.toml"),
        "XDG_CONFIG_HOME": str(home / ".config"),
    }
    harness = Remote(replace(prov, home=home, prov_home=root / "ph", env=env), hosts, key, known)
    try:
        if errors:
            raise errors[0]
        for host in hosts:
            harness.trust(host)
        yield harness
    finally:
        subprocess.run(["pkill", "-f", str(root / "ph")], check=False)
        for host in hosts:
            host.stop()


def _project(remote: Remote, name: str) -> Path:
    path = remote.prov.projects / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "README.md").write_text("hello from here\n")
    for p in (path, path / "README.md"):
        os.chown(p, PROJECT_UID, PROJECT_GID)
    return path


def test_up_on_a_remote_engine_end_to_end(remote: Remote) -> None:
    """`up --docker-host ssh://...`: the image is copied (never pulled), nothing of
    this machine is bind-mounted there, the alias jumps through the engine host
    with the host key pinned, ssh-test passes, an NTM-style tmux session runs in
    the project, rsync moves work both ways, `down`/`up` keeps host key and
    work, and `rm` leaves nothing on the engine."""
    p, r1 = remote.prov, remote.hosts[0]
    name = p.name("far")
    project = _project(remote, name)
    up = p.run("up", name, "--json", "--docker-host", r1.ssh_url, "--credentials", "copy")
    assert up.returncode == 0, up.stderr
    first = json.loads(up.stdout)
    alias = first["ssh_alias"]
    # The container is on the remote engine, not here, and mounts nothing of this
    # machine; its image is the one built here (same ID: copied, not pulled).
    client = remote.engine(r1)
    container = client.containers.get(f"prov-{name}")
    assert container.attrs["Image"] == docker.from_env().images.get(container.image.tags[0]).id
    assert all(m["Type"] == "volume" for m in container.attrs["Mounts"])
    assert not docker.from_env().containers.list(all=True, filters={"name": f"prov-{name}"})

    checks = p.run("ssh-test", name, "--json")
    assert checks.returncode == 0, checks.stdout + checks.stderr
    # The forwarded Docker socket is root on the engine host: only this user reaches it.
    link = next((p.prov_home / "l").iterdir())
    assert (link.stat().st_mode & 0o777, (link / "docker.sock").stat().st_mode & 0o777) == (
        0o700,
        0o600,
    )
    # --credentials copy: a private copy in the agent's home there, the agent's own.
    creds = remote.ssh(alias, "stat -c '%U %a' ~/.codex/auth.json && cat ~/.codex/auth.json")
    assert creds.stdout.split("\n")[:2] == ["agent 600", '{"token": "remote-t0"}'], creds
    # Without prov's master to the engine host the alias still works (a jump of its own).
    subprocess.run(
        ["ssh", "-o", f"ControlPath={link / 'ctl'}", "-O", "exit", "x"],
        env=p.env, capture_output=True, check=False,
    )  # fmt: skip
    subprocess.run(
        ["ssh", "-F", str(p.prov_home / "ssh_config"), "-O", "exit", alias],
        capture_output=True, check=False,
    )  # fmt: skip
    assert remote.ssh(alias, "true").returncode == 0
    # Method 1 on a remote engine: docker exec through the forwarded socket.
    ran = p.run("exec", name, "--", "sh", "-c", "id -un; pwd")
    assert ran.stdout.split() == ["agent", str(project)], ran.stderr
    aliases = p.run("alias", name, check=True).stdout
    assert f"ssh -t prov-{name}" in aliases and "docker exec" not in aliases
    refused = p.run("ntm-config", name, "--dry-run")  # method 3 execs on this machine
    assert refused.returncode == 2 and f"--ssh=prov-{name}" in refused.stderr
    # stop/start: readiness through the alias, as for up.
    assert p.run("stop", name, "--yes").returncode == 0
    started = p.run("start", name)
    assert started.returncode == 0, started.stderr

    # As NTM does it: tmux session in the project dir, through the plain alias.
    session = "farwork"
    made = remote.ssh(
        alias,
        f"tmux new-session -d -s {session} -c {shlex.quote(str(project))} && "
        f"tmux list-panes -t {session} -F '#{{pane_current_path}}'",
    )
    assert made.returncode == 0 and made.stdout.strip() == str(project), made.stderr
    # rsync pushed the project at up; the agent's work comes back with sync --back.
    seen = remote.ssh(alias, f"cat {shlex.quote(str(project / 'README.md'))}")
    assert seen.stdout == "hello from here\n"
    wrote = remote.ssh(alias, f"echo agent work > {shlex.quote(str(project / 'NOTES.md'))}")
    assert wrote.returncode == 0, wrote.stderr
    back = p.run("sync", name, "--back")
    assert back.returncode == 0, back.stderr
    assert (project / "NOTES.md").read_text() == "agent work\n"
    (project / "later.txt").write_text("pushed\n")
    assert p.run("sync", name).returncode == 0
    assert remote.ssh(alias, f"cat {shlex.quote(str(project / 'later.txt'))}").stdout == "pushed\n"

    listed = p.run("ls", "--json", check=True)
    env = {e["name"]: e for e in json.loads(listed.stdout)}[name]
    assert env["engine"].startswith(r1.ssh_url) and env["state"] == "running"

    # down/up: same host key (no known_hosts change), the work is still there.
    pins = (p.prov_home / "known_hosts").read_bytes()
    assert p.run("down", name, "--yes").returncode == 0
    again = json.loads(p.run("up", name, "--json", check=True).stdout)  # no flag: recorded
    assert again["host_key_fingerprint"] == first["host_key_fingerprint"]
    assert (p.prov_home / "known_hosts").read_bytes() == pins
    assert remote.ssh(alias, f"cat {shlex.quote(str(project / 'NOTES.md'))}").stdout == (
        "agent work\n"
    )

    assert p.run("rm", name, "--yes").returncode == 0
    assert remote.leftovers(r1, name) == []


def test_the_agent_inside_a_remote_environment_is_contained(remote: Remote) -> None:
    """As the agent would try it, from inside a remote environment: no root, no
    Docker socket, no way to the engine host's sshd or to the internet except
    the allowlist proxy, and no key of prov's on the engine host's disk."""
    p, r1 = remote.prov, remote.hosts[0]
    name = p.name("cage")
    _project(remote, name)
    port = 20000 + os.getpid() % 20000  # the engine host's loopback: its own namespace
    result = p.run("up", name, "--json", "--docker-host", r1.ssh_url, "--port", str(port))
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    alias = made["ssh_alias"]
    try:
        # --port publishes on the engine host's loopback, relayed to sshd by the gate.
        assert made["published"]["port"] == port and made["published"]["engine_host"]
        banner = remote.ssh(
            f"root@{r1.address}",
            f"timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port} && head -1 <&3'",
        )
        assert banner.stdout.startswith("SSH-2.0-"), banner.stdout + banner.stderr
        checks = p.run("ssh-test", name)
        assert checks.returncode == 0, checks.stdout + checks.stderr
        assert f"pass  published port 127.0.0.1:{port} reaches sshd" in checks.stdout
        probe = remote.ssh(
            alias,
            "id -u; sudo -n true 2>&1 && echo ROOT; "
            "test -S /var/run/docker.sock && echo SOCKET; "
            f"timeout 3 bash -c 'echo > /dev/tcp/{r1.address}/22' 2>/dev/null && echo JUMPHOST; "
            "timeout 5 curl -s -o /dev/null -w 'proxy %{http_connect}\\n' https://example.com; "
            "timeout 3 curl -s --noproxy '*' https://example.com >/dev/null 2>&1 && echo DIRECT; "
            "ls /etc/prov/keys >/dev/null 2>&1 && echo KEYSDIR; "
            "cat /etc/prov/keys/ssh_host_ed25519_key >/dev/null 2>&1 && echo HOSTKEY; "
            "true",
        )
        lines = probe.stdout.split()
        assert lines[0] != "0"
        for escape in ("ROOT", "SOCKET", "JUMPHOST", "DIRECT", "KEYSDIR", "HOSTKEY"):
            assert escape not in lines, probe.stdout
        assert "proxy 403" in probe.stdout, probe.stdout
        # The keys are in a volume on the engine host, never a file of this machine's.
        data = r1.data_root
        found = subprocess.run(
            ["grep", "-rl", "--exclude-dir=volumes", "--exclude-dir=overlay2",
             "BEGIN OPENSSH PRIVATE KEY", str(data)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert found.stdout == ""
    finally:
        p.run("rm", name, "--yes")
    assert remote.leftovers(r1, name) == []


def test_contexts_auto_placement_and_one_list(remote: Remote, tmp_path: Path) -> None:
    """A Docker context (ssh://) is honoured; `--engine auto` over two named engines
    spreads new environments; `prov ls` lists every engine's environments in one
    table, and an unreachable engine is one line, not a failed list."""
    p, (r1, r2) = remote.prov, remote.hosts
    config = tmp_path / "dockercfg"
    subprocess.run(
        ["docker", "--config", str(config), "context", "create", "r2ctx",
         "--docker", f"host={r2.ssh_url}"],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = p.name("ctx")
    _project(remote, ctx)
    env = {"DOCKER_CONFIG": str(config), "DOCKER_CONTEXT": "r2ctx"}
    made = p.run("up", ctx, "--json", env=env)
    assert made.returncode == 0, made.stderr
    assert remote.engine(r2).containers.get(f"prov-{ctx}")

    e1, e2 = f"{p.prefix}-one", f"{p.prefix}-two"
    # An ssh:// address may name a Host of the user's ssh config.
    p.run("engine", "add", e1, "ssh://first-engine", check=True)
    p.run("engine", "add", e2, r2.ssh_url, check=True)
    a, b = p.name("auto-a"), p.name("auto-b")
    for name in (a, b):
        _project(remote, name)
    try:
        spread = p.run("up", a, b, "--engine", "auto")
        assert spread.returncode == 0, spread.stderr
        where = {name: [h.index for h in (r1, r2) if remote.leftovers(h, name)] for name in (a, b)}
        assert sorted(where[a] + where[b]) == [1, 2], where
        listed = json.loads(p.run("ls", "--json", check=True).stdout)
        names = {e["name"]: e["engine"] for e in listed}
        assert {ctx, a, b} <= set(names)
        r2.blackhole()
        try:
            started = time.monotonic()
            partial = p.run("ls", timeout=120)
            assert partial.returncode == 0, partial.stderr
            assert time.monotonic() - started < 40
            assert "does not answer" in partial.stdout or "no answer" in partial.stdout
            assert r1.address in partial.stdout or a in partial.stdout
        finally:
            r2.unblackhole()
    finally:
        for name in (ctx, a, b):
            p.run("rm", name, "--yes", timeout=120)
        for engine in (e1, e2):
            p.run("engine", "rm", engine)


@contextlib.contextmanager
def _fault(undo: object) -> Iterator[None]:
    try:
        yield
    finally:
        assert callable(undo)
        undo()


def _refused(
    remote: Remote, host: RemoteHost, name: str, *args: str, engine_up: bool = True
) -> str:
    """`prov up` fails: a non-zero exit, one paragraph, no traceback, nothing left
    here (keys, alias) or there (containers, volumes, networks)."""
    p = remote.prov
    started = time.monotonic()
    result = p.run("up", name, "--docker-host", host.ssh_url, *args, timeout=180)
    took = time.monotonic() - started
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    assert not (p.prov_home / "envs" / name).exists()
    config = p.prov_home / "ssh_config"
    assert not config.exists() or f"prov-{name}" not in config.read_text()
    if engine_up:  # else the caller looks once it runs again
        assert remote.leftovers(host, name) == []
    assert took < 60, f"took {took:.0f} s"
    return result.stderr


def test_every_engine_host_fault_is_one_clear_paragraph(remote: Remote) -> None:
    """Each fault seen by hand on a remote host, injected: sshd stopped, packets
    dropped, dockerd stopped, TCP forwarding refused, a changed and an unknown
    host key, the chosen port taken by a non-Docker listener."""
    p, r2 = remote.prov, remote.hosts[1]
    name = p.name("fault")
    _project(remote, name)

    # Asked for what a remote engine cannot do: refused before anything is made.
    said = _refused(remote, r2, name, "--credentials", "mount")
    assert "--credentials mount is not available on a remote engine" in said
    said = _refused(remote, r2, name, "--sync", "none", "--project", "/nonexistent/prov")
    assert "does not exist on the engine host" in said

    r2.stop_sshd()
    with _fault(r2.start_sshd):
        said = _refused(remote, r2, name)
        assert "refused the SSH connection" in said and "start sshd" in said

    r2.blackhole()
    with _fault(r2.unblackhole):
        said = _refused(remote, r2, name)
        assert "did not answer within 10 s" in said
    # The same with prov's master up when packets start to vanish.
    p.run("--docker-host", r2.ssh_url, "ls", check=True)
    r2.blackhole()
    with _fault(r2.unblackhole):
        started = time.monotonic()
        said = _refused(remote, r2, name)
        assert "stopped answering" in said, said
        assert time.monotonic() - started < 15

    r2.stop_dockerd()
    with _fault(r2.start_dockerd):
        said = _refused(remote, r2, name, engine_up=False)
        assert "dockerd is not running" in said or "no Docker socket" in said, said
    assert remote.leftovers(r2, name) == []

    r2.stop_sshd()
    r2.start_sshd(allow_tcp_forwarding=False)
    with _fault(lambda: (r2.stop_sshd(), r2.start_sshd())):
        said = _refused(remote, r2, name)
        assert "does not forward TCP connections" in said and "AllowTcpForwarding" in said

    old = remote.known_hosts.read_text()
    r2.regenerate_host_key()
    try:
        said = _refused(remote, r2, name)
        assert "different host key" in said and "ssh-keygen -R" in said
        assert remote.known_hosts.read_text() == old  # nothing accepted
        remote.forget(r2)
        said = _refused(remote, r2, name)
        assert "not in your known_hosts" in said and r2.host_key_fingerprint() in said
        assert r2.address not in remote.known_hosts.read_text()  # still not trusted
    finally:
        remote.trust(r2)

    listener = r2.occupy_port(2222)  # the first port prov would choose
    try:
        said = _refused(remote, r2, name, "--egress", "open", "--port", "2222")
        assert "Port 2222" in said and "engine host" in said
        # Left to choose, prov skips the taken port.
        chosen = p.run(
            "up", name, "--json", "--docker-host", r2.ssh_url, "--egress", "open", timeout=180
        )
        assert chosen.returncode == 0, chosen.stderr
        assert json.loads(chosen.stdout)["port"] == 2223
    finally:
        listener.stop()

    # The engine host's key changes under a running environment, and the user's
    # config would accept any key: the alias still refuses the jump.
    alias = f"prov-{name}"
    config = p.home / ".ssh" / "config"
    before = config.read_text()
    subprocess.run(["pkill", "-f", str(p.prov_home / "l")], check=False)
    subprocess.run(
        ["ssh", "-F", str(p.prov_home / "ssh_config"), "-O", "exit", alias],
        capture_output=True, check=False,
    )  # fmt: skip
    r2.regenerate_host_key()
    config.write_text("StrictHostKeyChecking no\n" + before)
    try:
        jumped = remote.ssh(alias, "true")
        assert jumped.returncode == 255, jumped
        # ssh hides a ProxyCommand's stderr under ControlPersist: the jump's log has it.
        log = (link_dir(p.prov_home / "l", r2.ssh_url) / "jump.log").read_text()
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in log, log
        tested = p.run("ssh-test", name)
        assert tested.returncode != 0 and "different host key" in tested.stderr, tested
    finally:
        config.write_text(before)
        remote.trust(r2)

    # Its engine unreachable, `rm` says so and how to forget it; --forget removes
    # prov's files here only.
    r2.stop_sshd()
    try:
        stuck = p.run("rm", name, "--yes", timeout=120)
        assert stuck.returncode == 3 and f"prov rm {name} --forget" in stuck.stderr
        assert (p.prov_home / "envs" / name).exists()
        forgot = p.run("rm", name, "--forget", "--yes", timeout=120)
        assert forgot.returncode == 0, forgot.stderr
        assert not (p.prov_home / "envs" / name).exists()
        assert f"prov-{name}" not in (p.prov_home / "ssh_config").read_text()
    finally:
        r2.start_sshd()
    client = remote.engine(r2)
    for container in client.containers.list(all=True, filters={"label": f"prov.name={name}"}):
        container.remove(force=True)
    remove_volumes(client, name)  # its home's file system unmounted first
    for network in client.networks.list(filters={"label": f"prov.name={name}"}):
        network.remove()
    assert remote.leftovers(r2, name) == []


def test_concurrent_commands_share_one_master(remote: Remote) -> None:
    """Four prov commands at once, with no master up: exactly one ssh master
    serves them afterwards (no stray ssh left holding a forward)."""
    p, r1 = remote.prov, remote.hosts[0]
    p.run("--docker-host", r1.ssh_url, "ls", check=True)
    subprocess.run(["pkill", "-f", str(p.prov_home / "l")], check=False)
    time.sleep(0.5)
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "provisioner", "--docker-host", r1.ssh_url, "ls"],
            env=p.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    for run in runs:
        assert run.wait(timeout=60) == 0, run.stderr.read() if run.stderr else ""
    masters = subprocess.run(
        ["pgrep", "-f", str(p.prov_home / "l")], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(masters) == 1, masters
