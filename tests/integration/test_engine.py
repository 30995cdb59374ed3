"""prov's engine client: the same calls through both of its transports.

A local engine is spoken to over its socket; any other DOCKER_HOST goes
through docker-py. Both are driven here against the real engine (docker-py
over the same local socket), so the remote path is not left untested.
"""

from __future__ import annotations

import io
import json
import secrets
import socket
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from provisioner.engine import Engine, targets
from provisioner.engine.transport import DockerPyTransport
from provisioner.errors import DockerUnavailable, NotFound
from provisioner.plan import LABEL_MANAGED, LABEL_NAME, ContainerSpec, Mount, Security
from tests.integration.conftest import Prov


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def image(docker_client: docker.DockerClient, base_image: str) -> Iterator[str]:
    """prov's local base with a command (the debootstrap import has none);
    removed again afterwards."""
    base = docker_client.images.get(base_image)
    dockerfile = f'FROM {base.id}\nCMD ["true"]\n'.encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    built, _log = docker_client.images.build(
        fileobj=context, custom_context=True, tag="prov-test-engine:latest", rm=True
    )
    yield str(built.id)
    docker_client.images.remove("prov-test-engine:latest", force=True)


@pytest.fixture(params=["socket", "docker-py"])
def engine(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> Engine:
    if request.param == "socket":
        return Engine.connect()
    return Engine(DockerPyTransport(docker_client), targets.resolve(), docker_client)


def test_container_calls(
    engine: Engine, docker_client: docker.DockerClient, image: str, tmp_path: Path
) -> None:
    """create (ports, labels, env, read-only mount), find, list, reserved ports of a
    stopped container, put files, start, state, remove; a vanished one is no error."""
    name = f"prov-enginetest-{secrets.token_hex(3)}"
    port = _free_port()
    (tmp_path / "data").write_text("from the host\n")
    spec = ContainerSpec(
        name=name,
        image=image,
        hostname="enginetest",
        labels={LABEL_MANAGED: "true", LABEL_NAME: name},
        environment={"PROV_TEST": "1"},
        bind="127.0.0.1",
        port=port,
        mounts=(Mount(tmp_path, "/mnt/host", read_only=True),),
        keys_dir=tmp_path,
        key_files=(),
        files=(),
        security=Security(cap_add=("CHOWN",), no_new_privileges=True, pids_limit=99),
        network="bridge",
        address="",
    )
    container_id = engine.create(spec)
    try:
        info = engine.find(name)
        assert info is not None and info.id == container_id and info.status == "created"
        assert info.managed and info.labels[LABEL_NAME] == name
        assert name in {s["Names"][0].lstrip("/") for s in engine.summaries()}
        assert port in engine.reserved_ports()  # from its config: it is not running
        attrs = docker_client.api.inspect_container(container_id)
        assert "PROV_TEST=1" in attrs["Config"]["Env"]
        assert attrs["HostConfig"]["PortBindings"]["22/tcp"] == [
            {"HostIp": "127.0.0.1", "HostPort": str(port)}
        ]
        assert attrs["Mounts"][0]["RW"] is False
        assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        host_config = attrs["HostConfig"]
        assert (host_config["CapDrop"], host_config["CapAdd"]) == (["ALL"], ["CHOWN"])
        assert host_config["SecurityOpt"] == ["no-new-privileges:true"]
        assert host_config["PidsLimit"] == 99

        engine.inject_files(container_id, [("/tmp/put", 0o600, b"secret-ish\n")])
        stream, _ = docker_client.api.get_archive(container_id, "/tmp/put")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            assert member is not None and stat.S_IMODE(member.mode) == 0o600 and member.uid == 0
            handle = tar.extractfile(member)
            assert handle is not None and handle.read() == b"secret-ish\n"

        engine.start(container_id)  # runs `true`, and is restarted by its policy
        started = engine.state(container_id)
        assert started.status in ("running", "exited", "restarting")
        assert not started.started_at.startswith("0001")
    finally:
        engine.remove(container_id)
    assert engine.find(name) is None
    engine.remove(container_id)  # already gone: not an error


def test_missing_things(engine: Engine) -> None:
    """Absent images and containers are None where asked, NotFound where acted on."""
    assert engine.image_id("prov-test-no-such-image:1") is None
    assert engine.find("prov-test-no-such-container") is None
    with pytest.raises(NotFound):
        engine.start("prov-test-no-such-container")
    assert engine.engine_version()


def test_remote_engine_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DOCKER_HOST that is not a local socket goes through docker-py, and an
    unreachable one is a DockerUnavailable, not a traceback."""
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{_free_port()}")
    with pytest.raises(DockerUnavailable, match="Cannot reach the Docker engine"):
        Engine.connect()


def test_docker_contexts_choose_the_engine_for_every_call(prov: Prov, tmp_path: Path) -> None:
    """A context made with `docker context create` is honoured by all of prov (it was
    ignored by prov's own socket calls): through a second path to the engine's socket
    `up` works and `status` names the context; a context whose socket is gone fails
    in one paragraph naming it; an ssh:// context to a host with no address fails in
    one paragraph before anything is made."""
    config = tmp_path / "dockercfg"
    link = tmp_path / "engine.sock"
    link.symlink_to("/var/run/docker.sock")

    def context(name: str, host: str) -> None:
        subprocess.run(
            ["docker", "--config", str(config), "context", "create", name,
             "--docker", f"host={host}"],
            check=True, capture_output=True,
        )  # fmt: skip

    context("here", f"unix://{link}")
    context("gone", f"unix://{tmp_path / 'missing.sock'}")
    context("faraway", "ssh://builder.invalid")
    name = prov.name("ctx")
    prov.project(name)
    env = {"DOCKER_CONFIG": str(config), "DOCKER_CONTEXT": "here"}
    prov.run("up", name, "--json", env=env, check=True)
    status = json.loads(prov.run("status", name, "--json", env=env, check=True).stdout)
    assert status["engine"] == f"unix://{link} (DOCKER_CONTEXT=here)"
    gone = prov.run("ls", env={**env, "DOCKER_CONTEXT": "gone"})
    assert gone.returncode == 3 and "DOCKER_CONTEXT=gone" in gone.stderr
    assert "Traceback" not in gone.stderr
    far = prov.run("up", prov.name("far"), env={**env, "DOCKER_CONTEXT": "faraway"})
    assert far.returncode == 3 and "builder.invalid has no address" in far.stderr, far.stderr
    assert "Traceback" not in far.stderr
    # --docker-host outranks the context.
    flagged = prov.run("--docker-host", "unix:///var/run/docker.sock", "ls", env=env)
    assert flagged.returncode == 0 and name in flagged.stdout


def test_named_engines_listed_and_used(prov: Prov, tmp_path: Path) -> None:
    """`prov engine add` a second path to this engine and a dead socket: `engine ls` shows
    the first reachable with its size and the second as one line saying so (the list
    does not fail); `--engine NAME up` uses the named one."""
    link = tmp_path / "engine.sock"
    link.symlink_to("/var/run/docker.sock")
    alt, dead = f"{prov.prefix}-alt", f"{prov.prefix}-dead"
    prov.run("engine", "add", alt, f"unix://{link}", check=True)
    prov.run("engine", "add", dead, f"unix://{tmp_path / 'none.sock'}", check=True)
    try:
        listed = prov.run("engine", "ls", "--json", check=True)
        reports = {r["name"]: r for r in json.loads(listed.stdout)}
        assert reports[alt]["reachable"] and reports[alt]["cpus"] >= 1
        assert not reports[dead]["reachable"] and "none.sock" in reports[dead]["detail"]
        assert reports["(default)"]["reachable"]
        name = prov.name("named")
        prov.project(name)
        prov.run("--engine", alt, "up", name, "--json", check=True)
        status = json.loads(prov.run("--engine", alt, "status", name, "--json", check=True).stdout)
        assert status["engine"] == f"unix://{link} (engine '{alt}')"
    finally:
        for engine in (alt, dead):
            prov.run("engine", "rm", engine)
