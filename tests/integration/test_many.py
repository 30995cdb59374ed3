"""Lifecycle commands, idempotent `up`, many environments at once, and Ctrl-C."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import docker
import pytest

from tests.integration.conftest import Prov, prov_containers


def _json(result: subprocess.CompletedProcess[str]) -> object:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_lifecycle_commands(prov: Prov, docker_client: docker.DockerClient) -> None:
    """ls/status show it; stop stops; start and restart come back ready; logs and ssh work."""
    name = prov.name("life")
    prov.project(name)
    env = prov.up(name)
    listed = _json(prov.run("ls", "--json"))
    assert isinstance(listed, list)
    mine = [e for e in listed if e["name"] == name]
    assert mine and mine[0]["state"] == "running" and mine[0]["port"] == env["port"]
    status = _json(prov.run("status", name, "--json"))
    assert isinstance(status, dict)
    assert status["host_key_fingerprint"] == env["host_key_fingerprint"]

    assert prov.run("stop", name).returncode == 0
    assert docker_client.containers.get(f"prov-{name}").status == "exited"
    started = prov.run("start", name)
    assert started.returncode == 0, started.stderr
    assert prov.ssh(str(env["ssh_alias"]), "true").returncode == 0
    assert prov.run("restart", name).returncode == 0
    assert prov.ssh(str(env["ssh_alias"]), "true").returncode == 0

    logs = prov.run("logs", name, "--tail", "50")
    assert logs.returncode == 0
    assert "Server listening" in logs.stdout
    remote = prov.run("ssh", name, "--", "echo", "hello-from", "$HOSTNAME")
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout.split() == ["hello-from", name]


def test_drift_is_reported_not_applied(prov: Prov, docker_client: docker.DockerClient) -> None:
    """`up` with a different port names the difference and changes nothing; --recreate
    applies it and keeps the host key."""
    name = prov.name("drift")
    prov.project(name)
    env = prov.up(name, "--egress", "open")
    before = docker_client.containers.get(f"prov-{name}").id
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        other = probe.getsockname()[1]
    result = prov.run("up", name, "--egress", "open", "--port", str(other))
    assert result.returncode == 4
    assert "differs" in result.stderr and f"asked '{other}'" in result.stderr
    assert "--recreate" in result.stderr
    assert docker_client.containers.get(f"prov-{name}").id == before
    moved = prov.up(name, "--egress", "open", "--port", str(other), "--recreate")
    assert moved["port"] == other
    assert moved["host_key_fingerprint"] == env["host_key_fingerprint"]
    assert docker_client.containers.get(f"prov-{name}").id != before
    assert prov.ssh(str(env["ssh_alias"]), "true").returncode == 0


def _first_free_port() -> int:
    """The port prov would pick next: lowest from 2222 not reserved by Docker nor bound."""
    client = docker.from_env()
    reserved = set()
    for container in client.containers.list(all=True):
        for entries in (container.attrs["HostConfig"].get("PortBindings") or {}).values():
            reserved |= {int(e["HostPort"]) for e in entries or [] if e.get("HostPort")}
    for port in range(2222, 4222):
        if port in reserved:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")


def test_auto_port_skips_port_of_stopped_container(
    prov: Prov, docker_client: docker.DockerClient, base_image: str
) -> None:
    """With --egress open and no --port, prov skips a port a stopped container holds."""
    name = prov.name("autoport")
    prov.project(name)
    image = docker_client.images.get(base_image)
    taken = _first_free_port()
    holder = docker_client.containers.create(
        image.id, "true", ports={"22/tcp": ("127.0.0.1", taken)}
    )
    try:
        env = prov.up(name, "--egress", "open")
        assert env["port"] != taken
    finally:
        holder.remove(force=True)


def test_concurrent_up_processes(prov: Prov) -> None:
    """Two `prov up` processes at once get different ports and intact shared files."""
    names = [prov.name("conc-a"), prov.name("conc-b")]
    for name in names:
        prov.project(name)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "provisioner", "up", name, "--json"],
            env=prov.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert results[0]["host"] != results[1]["host"]
    config = (prov.prov_home / "ssh_config").read_text()
    known = (prov.prov_home / "known_hosts").read_text()
    for name in names:
        assert config.count(f"Host prov-{name}\n") == 1
        assert sum(line.startswith(f"prov-{name} ") for line in known.splitlines()) == 1
        assert prov.ssh(f"prov-{name}", "true").returncode == 0


def test_up_several_names(prov: Prov) -> None:
    """`prov up a b c` brings all three up, each reachable through its alias."""
    names = [prov.name(f"multi{i}") for i in range(3)]
    for name in names:
        prov.project(name)
    result = prov.run("up", *names, "--json")
    data = _json(result)
    assert isinstance(data, list)
    assert [d["name"] for d in data] == names
    assert len({d["host"] for d in data}) == 3  # an address (and network) each
    for name in names:
        assert prov.ssh(f"prov-{name}", "hostname").stdout.strip() == name


def test_up_several_names_one_failing(
    prov: Prov, docker_client: docker.DockerClient, base_image: str
) -> None:
    """One environment that cannot come up (its name is taken by a foreign
    container) fails alone, with its error; the others come up; nothing of
    the failed one is left behind."""
    good = [prov.name(f"mixok{i}") for i in range(2)]
    bad = prov.name("mixbad")
    for name in (*good, bad):
        prov.project(name)
    image = docker_client.images.get(base_image)
    foreign = docker_client.containers.create(image.id, "true", name=f"prov-{bad}")
    try:
        result = prov.run("up", good[0], bad, good[1])
        assert result.returncode == 4, result.stderr  # ConflictError
        assert f"{bad}: A container named prov-{bad} already exists" in result.stderr
        assert "Traceback" not in result.stderr
        for name in good:
            assert prov.ssh(f"prov-{name}", "true").returncode == 0
        assert f"Host prov-{bad}\n" not in (prov.prov_home / "ssh_config").read_text()
        made = docker_client.containers.list(all=True, filters={"label": f"prov.name={bad}"})
        assert made == []
    finally:
        foreign.remove(force=True)


@pytest.mark.parametrize("delay", [0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4])
def test_ctrl_c_leaves_nothing_half_made(
    prov: Prov, docker_client: docker.DockerClient, delay: float
) -> None:
    """SIGINT at any point of `up` leaves either a working env or none; the next `up` works."""
    name = prov.name(f"sigint{int(delay * 10)}")
    prov.project(name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner", "up", name],
        env=prov.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err
    # 0: it finished first; 130: prov caught it; -SIGINT: Python was still
    # importing prov, or already exiting, when it arrived.
    assert proc.returncode in (0, 130, -signal.SIGINT), err
    if prov_containers(docker_client, name):
        # Whatever exists must be whole: a working environment, never half of one.
        assert prov.run("ssh-test", name).returncode == 0
    # prov's own half-written files (an environment's logins dir is its agents').
    assert not [p for p in prov.prov_home.rglob("*.tmp") if "logins" not in p.parts]
    again = prov.up(name)
    assert prov.ssh(str(again["ssh_alias"]), "true").returncode == 0


def test_rm_leaves_no_trace(prov: Prov, docker_client: docker.DockerClient) -> None:
    """`prov rm --yes` removes container, keys, alias and pin: `ssh -G` knows nothing."""
    name = prov.name("gone")
    prov.project(name)
    prov.up(name)
    refused = subprocess.run(
        [sys.executable, "-m", "provisioner", "rm", name],
        env=prov.env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert prov.run("rm", name, "--yes").returncode == 0
    assert prov_containers(docker_client, name) == []
    assert not (prov.prov_home / "envs" / name).exists()
    assert f"prov-{name}" not in (prov.prov_home / "known_hosts").read_text()
    assert f"prov-{name}" not in (prov.prov_home / "ssh_config").read_text()
    resolved = subprocess.run(
        ["ssh", "-G", "-F", str(prov.home / ".ssh" / "config"), f"prov-{name}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert f"hostname prov-{name}" in resolved  # no alias left: ssh would resolve the name
    assert "port 22" in resolved


def test_doctor(prov: Prov) -> None:
    """`prov doctor` passes on a working machine and flags a loose private key."""
    result = prov.run("doctor", "--json")
    findings = {f["name"]: f for f in json.loads(result.stdout)}
    assert findings["Docker engine"]["level"] == "pass"
    assert findings["ssh client"]["level"] == "pass"
    name = prov.name("doctor")
    prov.project(name)
    prov.up(name)
    key = prov.prov_home / "envs" / name / "id_ed25519"
    key.chmod(0o644)
    try:
        result = prov.run("doctor", "--json")
        assert result.returncode == 1
        findings = {f["name"]: f for f in json.loads(result.stdout)}
        assert findings["prov's files"]["level"] == "fail"
        assert str(key) in findings["prov's files"]["detail"]
    finally:
        key.chmod(0o600)


def test_a_burst_of_ntm_calls_through_the_kept_master(prov: Prov) -> None:
    """NTM fires many ssh calls at once: right after `up` (whose master persists), 150
    concurrent calls through the alias all succeed and none prints a warning."""
    from concurrent.futures import ThreadPoolExecutor

    name = prov.name("burst")
    prov.project(name)
    prov.up(name)
    alias = f"prov-{name}"

    def call(i: int) -> subprocess.CompletedProcess[str]:
        return prov.ssh(alias, f"tmux has-session -t none{i} 2>/dev/null; echo ok{i}", timeout=60)

    with ThreadPoolExecutor(max_workers=150) as pool:
        results = list(pool.map(call, range(150)))
    assert [r.stdout.strip() for r in results] == [f"ok{i}" for i in range(150)]
    assert all(r.returncode == 0 and r.stderr == "" for r in results), [
        r.stderr for r in results if r.stderr
    ][:3]
