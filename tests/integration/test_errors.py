"""Every bad input: one clear paragraph, a non-zero exit, no traceback, no container left."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from provisioner import slots
from provisioner.config import ProvPaths
from tests.integration.conftest import Prov, prov_containers

SSHD_WRAPPER = """#!/bin/sh
# Test double: behaves like sshd for config checks, misbehaves when serving.
for a in "$@"; do
  if [ "$a" = -D ]; then {action}; fi
done
exec /usr/sbin/sshd.real "$@"
"""


def _assert_clean_failure(result, code: int, *phrases: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


@pytest.fixture(scope="module")
def local_base(prov: Prov, docker_client: docker.DockerClient) -> str:
    """The base image prov uses on this machine (pulled or made with debootstrap)."""
    name = prov.name("base")
    prov.project(name)
    env = prov.up(name)
    image = docker_client.containers.get(str(env["container"])).image
    prov.run("down", name, check=True)
    return str(image.labels["prov.base"])


def _derived_base(client: docker.DockerClient, base: str, tag: str, action: str) -> str:
    dockerfile = (
        f"FROM {base}\n"
        "RUN mv /usr/sbin/sshd /usr/sbin/sshd.real\n"
        "COPY sshd /usr/sbin/sshd\n"
        "RUN chmod 0755 /usr/sbin/sshd\n"
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for fname, text in (
            ("Dockerfile", dockerfile),
            ("sshd", SSHD_WRAPPER.format(action=action)),
        ):
            data = text.encode()
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True)
    return tag


def _remove_images(client: docker.DockerClient, refs: list[str]) -> None:
    """Remove `refs`, whatever their order: one that still has a child is tried
    again once the others are gone."""
    left = list(refs)
    for _ in range(len(refs) + 1):
        retry = []
        for ref in left:
            try:
                client.images.remove(ref, force=True)
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                retry.append(ref)
        if not retry:
            return
        left = retry
        # A failed build's untagged layers of prov's Dockerfile are children too.
        client.images.prune(filters={"dangling": True, "label": "prov.image=1"})
    raise AssertionError(f"images still have children: {left}")


@pytest.fixture(scope="module")
def broken_images(local_base: str, docker_client: docker.DockerClient) -> Iterator[dict[str, str]]:
    images = {
        "exits": _derived_base(
            docker_client,
            local_base,
            "prov-test-sshd-exits:1",
            "echo 'prov-test: sshd refuses to serve' >&2; exit 1",
        ),
        "hangs": _derived_base(
            docker_client, local_base, "prov-test-sshd-hangs:1", "exec sleep infinity"
        ),
    }
    empty = io.BytesIO()
    tarfile.open(fileobj=empty, mode="w").close()
    docker_client.api.import_image_from_data(
        empty.getvalue(), repository="prov-test-noshell", tag="1"
    )
    images["noshell"] = "prov-test-noshell:1"
    yield images
    for ref in images.values():
        # prov's layers on it, children before their parents (the list's order is
        # not that), then the base itself.
        made = [i.id for i in docker_client.images.list(filters={"label": f"prov.base={ref}"})]
        _remove_images(docker_client, [*made, ref])
    # A failed build leaves untagged intermediate layers of prov's Dockerfile.
    docker_client.images.prune(filters={"dangling": True, "label": "prov.image=1"})


def test_invalid_name(prov: Prov) -> None:
    """A name tmux or Docker would reject is refused before anything happens."""
    _assert_clean_failure(prov.run("up", "bad.name"), 2, "Invalid environment name")


def test_missing_project_dir(prov: Prov, docker_client: docker.DockerClient) -> None:
    """A missing project dir is an error that suggests --create-dir; nothing is created."""
    name = prov.name("noproj")
    _assert_clean_failure(prov.run("up", name), 2, "does not exist", "--create-dir")
    assert prov_containers(docker_client, name) == []
    assert not (prov.projects / name).exists()


def test_create_dir_flag(prov: Prov) -> None:
    """--create-dir makes the project dir and proceeds."""
    name = prov.name("mkproj")
    env = prov.up(name, "--create-dir")
    assert Path(str(env["project_dir"])).is_dir()


def test_missing_and_malformed_public_key(prov: Prov, tmp_path: Path) -> None:
    """--key with a missing file, garbage, or a private key is explained."""
    name = prov.name("badkey")
    prov.project(name)
    _assert_clean_failure(
        prov.run("up", name, "--key", str(tmp_path / "none.pub")), 2, "does not exist"
    )
    (tmp_path / "junk.pub").write_text("this is not a key\n")
    _assert_clean_failure(
        prov.run("up", name, "--key", str(tmp_path / "junk.pub")), 2, "Cannot use"
    )


def test_port_in_use(prov: Prov, docker_client: docker.DockerClient) -> None:
    """A port some process listens on is a conflict error, with no container left behind."""
    name = prov.name("busy")
    prov.project(name)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = prov.run("up", name, "--egress", "open", "--port", str(port))
    _assert_clean_failure(result, 4, f"Port {port}", "in use")
    assert prov_containers(docker_client, name) == []


def test_port_reserved_by_stopped_container(
    prov: Prov, local_base: str, docker_client: docker.DockerClient
) -> None:
    """A port a stopped container will publish is taken too: explicit --port is refused,
    and automatic choice skips it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    holder = docker_client.containers.create(
        local_base, "true", ports={"22/tcp": ("127.0.0.1", port)}
    )
    try:
        name = prov.name("reserved")
        prov.project(name)
        _assert_clean_failure(
            prov.run("up", name, "--egress", "open", "--port", str(port)), 4, "reserved"
        )
        assert prov_containers(docker_client, name) == []
    finally:
        holder.remove(force=True)


def test_name_taken_by_foreign_container(
    prov: Prov, local_base: str, docker_client: docker.DockerClient
) -> None:
    """A container named prov-NAME that prov did not make is never touched."""
    name = prov.name("foreign")
    prov.project(name)
    foreign = docker_client.containers.create(local_base, "true", name=f"prov-{name}")
    try:
        _assert_clean_failure(prov.run("up", name), 4, "was not made by prov")
        assert docker_client.containers.get(f"prov-{name}").id == foreign.id
        _assert_clean_failure(prov.run("down", name), 4, "not made by prov")
    finally:
        foreign.remove(force=True)


def test_docker_unreachable(prov: Prov, tmp_path: Path) -> None:
    """No engine at DOCKER_HOST: say so and how to start one."""
    result = prov.run(
        "up",
        prov.name("nodocker"),
        "--create-dir",
        env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"},
    )
    _assert_clean_failure(result, 3, "Cannot reach the Docker engine", "dockerd")


def test_unpullable_base_image(prov: Prov) -> None:
    """An explicit base that is neither present nor pullable is an error, not a substitute."""
    name = prov.name("nobase")
    prov.project(name)
    # A registry on this machine where nothing listens: no traffic leaves it.
    registry = "127.0.0.1:9"
    result = prov.run("up", name, "--base-image", f"{registry}/prov-test-missing:1")
    _assert_clean_failure(result, 5, "cannot be pulled", "docker load", "The pull said:")
    # A digest reference reaches the registry as such (it used to be split at the
    # wrong ':'), and the refusal is given in the engine's words.
    digest = f"{registry}/team/img@sha256:" + "0" * 64
    result = prov.run("up", name, "--base-image", digest)
    _assert_clean_failure(result, 5, "cannot be pulled", "connection refused")
    assert "invalid reference" not in result.stderr.lower()


def test_failed_build_shows_log_tail(
    prov: Prov, broken_images: dict[str, str], docker_client: docker.DockerClient
) -> None:
    """A base the Dockerfile cannot build on fails with the end of the build log."""
    name = prov.name("nobuild")
    prov.project(name)
    result = prov.run("up", name, "--base-image", broken_images["noshell"])
    _assert_clean_failure(result, 5, "Building the image", "last log lines")
    assert prov_containers(docker_client, name) == []


def test_container_exit_fails_fast_with_logs(
    prov: Prov, broken_images: dict[str, str], docker_client: docker.DockerClient
) -> None:
    """sshd dying at start is reported at once with its log; the container is removed."""
    name = prov.name("dies")
    prov.project(name)
    result = prov.run("up", name, "--base-image", broken_images["exits"], "--timeout", "120")
    _assert_clean_failure(result, 6, "container stopped", "sshd refuses to serve")
    assert prov_containers(docker_client, name) == []
    # Nothing else of the never-started environment either: home volume, network.
    assert not docker_client.volumes.list(filters={"name": f"prov-{name}-home"})
    assert not docker_client.networks.list(names=[f"prov-{name}-net"])


def test_readiness_timeout(
    prov: Prov, broken_images: dict[str, str], docker_client: docker.DockerClient
) -> None:
    """sshd that never answers hits --timeout with what was last seen; nothing is left."""
    name = prov.name("hangs")
    prov.project(name)
    result = prov.run("up", name, "--base-image", broken_images["hangs"], "--timeout", "3")
    _assert_clean_failure(result, 6, "within 3 s", "Last attempt")
    assert prov_containers(docker_client, name) == []


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file under `root` (None for dirs), to compare before and after."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
        if not p.is_symlink()
    }


def _hostile_cases(tmp: Path) -> list[tuple[str, list[str], int, str]]:
    """(label, arguments after `up NAME`, exit code, phrase) for inputs a careless or
    hostile user gives."""
    (tmp / "latin1.env").write_bytes(b"A=caf\xe9\n")
    return [
        ("bind not here", ["--egress", "open", "--bind", "10.255.254.253"], 2, "not an address"),
        ("env file not UTF-8", ["--env-file", str(tmp / "latin1.env")], 2, "not UTF-8"),
        ("env file a device", ["--env-file", "/dev/zero"], 2, "not a regular file"),
        ("env file a dir", ["--env-file", str(tmp)], 2, "not a regular file"),
        ("key a device", ["--key", "/dev/zero"], 2, "not a regular file"),
        ("value with #", ["-e", "A=x#y"], 2, "'#'"),
        ("value quoted", ["-e", 'A="x"'], 2, "quote"),
        ("value too long", ["-e", "A=" + "v" * 9000], 2, "line limit"),
        ("value ends in backslash", ["-e", "A=x\\"], 2, "backslash"),
    ]


def test_hostile_inputs_fail_cleanly(
    prov: Prov, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """Each bad input: its exit code, one paragraph, no traceback, and nothing left behind
    (no container, no key dir, no alias, no --create-dir project dir, the user's files as
    they were)."""
    ssh_config = prov.prov_home / "ssh_config"
    for index, (label, args, code, phrase) in enumerate(_hostile_cases(tmp_path)):
        name = prov.name(f"hostile{index}")
        project = prov.projects / "hostile" / name
        before = _snapshot(prov.home)
        result = prov.run("up", name, "--create-dir", "--project", str(project), *args)
        assert result.returncode == code, (label, result.stderr)
        assert "Traceback" not in result.stderr, label
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and phrase in errors[0], (label, result.stderr)
        assert prov_containers(docker_client, name) == [], label
        assert not (prov.prov_home / "envs" / name).exists(), label
        assert not project.exists() and not project.parent.exists(), label
        assert not ssh_config.exists() or f"prov-{name}" not in ssh_config.read_text(), label
        assert _snapshot(prov.home) == before, label


COMMANDS = (
    "down", "ssh-test", "status", "egress", "stop", "start", "restart", "logs", "rm",
    "ssh", "exec", "alias", "ntm-config",
)  # fmt: skip
HOSTILE_NAMES = ("nosuch", "Bad.Name", "../x", "-", "x" * 200, "a;rm -rf ~", "é")


def test_every_command_refuses_hostile_names_cleanly(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """Every command that takes a name, given names that do not exist or cannot exist:
    non-zero, one paragraph, no traceback, nothing made in Docker, PROV_HOME or HOME."""
    slots.wait_idle(ProvPaths(prov.prov_home))  # an earlier up's slots are made first
    containers_before = {c.id for c in docker_client.containers.list(all=True)}
    home_before, prov_before = _snapshot(prov.home), _snapshot(prov.prov_home)
    for command in COMMANDS:
        for name in HOSTILE_NAMES:
            result = prov.run(command, "--", name) if name == "-" else prov.run(command, name)
            label = (command, name)
            assert result.returncode != 0, label
            assert "Traceback" not in result.stderr, label
            errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            usage = "Usage:" in result.stderr  # typer's own refusal of the arguments
            assert len(errors) == 1 or usage, (label, result.stderr)
    assert {c.id for c in docker_client.containers.list(all=True)} == containers_before
    assert _snapshot(prov.home) == home_before
    assert _snapshot(prov.prov_home) == prov_before


def test_recreate_onto_a_busy_port_keeps_the_working_environment(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """`up --recreate --port P` with P taken: refused before the old container goes."""
    name = prov.name("keepold")
    prov.project(name)
    env = prov.up(name, "--egress", "open")
    before = docker_client.containers.get(f"prov-{name}").id
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        result = prov.run("up", name, "--egress", "open", "--port", str(busy), "--recreate")
    _assert_clean_failure(result, 4, f"Port {busy}", "in use")
    assert docker_client.containers.get(f"prov-{name}").id == before
    assert prov.ssh(str(env["ssh_alias"]), "true").returncode == 0


def test_unwritable_ssh_config_on_rm_removes_the_rest(prov: Prov) -> None:
    """chattr +i on prov's ssh_config: rm says what is left and why; once the file can
    be written again, a second rm finishes."""
    name = prov.name("immutable")
    prov.project(name)
    prov.up(name)
    config = prov.prov_home / "ssh_config"
    if subprocess.run(["chattr", "+i", str(config)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        result = prov.run("rm", name, "--yes")
        _assert_clean_failure(result, 2, "not its alias", "chattr -i")
        assert not (prov.prov_home / "envs" / name).exists()
    finally:
        subprocess.run(["chattr", "-i", str(config)], check=True)
    assert prov.run("rm", name, "--yes").returncode == 0
    assert f"prov-{name}" not in config.read_text()


def test_files_where_directories_belong(prov: Prov, tmp_path: Path) -> None:
    """PROV_HOME, envs/NAME or ~/.ssh being a file: a paragraph naming it, exit 2."""
    name = prov.name("filedir")
    prov.project(name)
    home_file = tmp_path / "ph-file"
    home_file.write_text("not a dir")
    result = prov.run("up", name, env={"PROV_HOME": str(home_file)})
    _assert_clean_failure(result, 2, "is a file, where prov needs a directory")
    env_file = prov.prov_home / "envs" / name
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.write_text("stray")
    try:
        _assert_clean_failure(prov.run("up", name), 2, f"{env_file} is a file")
    finally:
        env_file.unlink()


def test_no_ssh_on_path_does_not_break_lifecycle(prov: Prov, tmp_path: Path) -> None:
    """stop/start's best-effort master shutdown must not crash without `ssh`."""
    name = prov.name("nossh")
    prov.project(name)
    prov.up(name)
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {"PATH": str(bare)}
    for command in ("stop", "down"):
        result = prov.run(command, name, env=env)
        assert result.returncode == 0, (command, result.stderr)
        assert "Traceback" not in result.stderr
    rm = prov.run("rm", name, "--yes", env=env)
    assert rm.returncode == 0 and "Traceback" not in rm.stderr


def test_ls_survives_stray_and_broken_entries(prov: Prov) -> None:
    """A .DS_Store in envs/ is skipped; a key dir without a record, or with an unreadable
    one, is listed as such (so it can be removed) instead of failing the whole list."""
    envs = prov.prov_home / "envs"
    envs.mkdir(parents=True, exist_ok=True)
    half, broken = prov.name("half"), prov.name("broken")
    (envs / ".DS_Store").write_bytes(b"\x00\x01")
    (envs / half).mkdir()
    (envs / broken).mkdir()
    (envs / broken / "env.json").write_text("{not json")
    try:
        result = prov.run("ls", "--json")
        assert result.returncode == 0, result.stderr
        listed = {e["name"]: e["state"] for e in json.loads(result.stdout)}
        assert listed[half] == "incomplete" and listed[broken] == "broken"
        assert ".DS_Store" not in listed
        for name in (half, broken):
            assert prov.run("rm", name, "--yes").returncode == 0
            assert not (envs / name).exists()
    finally:
        (envs / ".DS_Store").unlink()
