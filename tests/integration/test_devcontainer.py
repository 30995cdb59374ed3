"""The project's devcontainer.json, applied by `prov up NAME` with no flag: its
image or build, features (by the real devcontainers CLI, which scripts/setup.sh
installs from the npm registry), variables, commands and ports, with prov's
SSH and containment on top; what would break containment refused before
anything is made."""

from __future__ import annotations

import io
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import PROJECT_GID, PROJECT_UID, Prov, free_port
from tests.integration.test_environments import _pane_output

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / ".venv" / "bin" / "devcontainer"
USER_IMAGE = "prov-test-dcimage:1"


@pytest.fixture(scope="module")
def dcprov(prov: Prov) -> Prov:
    """prov with the devcontainers CLI that setup installed (as a user would)."""
    assert CLI.is_file(), f"{CLI} is missing: scripts/setup.sh installs the devcontainers CLI"
    prov.env["PROV_DEVCONTAINER_CLI"] = str(CLI)
    return prov


@pytest.fixture(scope="module")
def user_image(docker_client: docker.DockerClient, base_image: str) -> Iterator[str]:
    """A project image with an ENV of its own, as a devcontainer `image`."""
    base = docker_client.images.get(base_image)
    docker_client.images.build(
        fileobj=io.BytesIO(
            f"FROM {base.id}\nENV FROM_IMAGE=image-env\nRUN echo img > /opt/dc-image\n".encode()
        ),
        tag=USER_IMAGE,
        rm=True,
    )
    yield USER_IMAGE
    docker_client.images.remove(USER_IMAGE, force=True)


def _write(project: Path, config: dict[str, object] | str, rel: str = "devcontainer.json") -> Path:
    folder = project / ".devcontainer"
    folder.mkdir(exist_ok=True)
    path = folder / rel
    path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
    for item in (folder, *folder.rglob("*")):
        os.chown(item, PROJECT_UID, PROJECT_GID)
    return path


def _contained(prov: Prov, alias: str) -> None:
    """The containment the default gives, from inside, as the agent would try it."""
    probe = prov.ssh(
        alias,
        "id -u; sudo -n true 2>/dev/null && echo ROOT; "
        "grep CapEff /proc/self/status; test -e /var/run/docker.sock && echo SOCKET; "
        "timeout 5 bash -c 'exec 3<>/dev/tcp/1.1.1.1/443' 2>/dev/null && echo OUT; "
        "curl -s -m 5 -o /dev/null -w '%{http_code}' https://example.com/ || true",
    )
    lines = probe.stdout.split()
    assert lines[0] != "0" and "ROOT" not in lines and "SOCKET" not in lines, probe.stdout
    assert "CapEff:\t0000000000000000" in probe.stdout, probe.stdout
    assert "OUT" not in lines, probe.stdout
    assert not probe.stdout.rstrip().endswith("200"), probe.stdout  # not on the allowlist


def test_image_variables_commands_and_ports(dcprov: Prov, user_image: str) -> None:
    """An `image`, containerEnv and remoteEnv, postCreateCommand (once),
    postStartCommand (each start), forwardPorts from this machine; NTM's tmux
    pane runs in the project with the file's environment; the agent stays contained."""
    prov = dcprov
    name = prov.name("dcimage")
    project = prov.project(name)
    port = free_port()
    _write(
        project,
        "{\n  // JSON with comments, as the spec allows\n"
        f'  "image": "{user_image}",\n'
        '  "containerEnv": {"DC_CONTAINER": "c-${localWorkspaceFolderBasename}"},\n'
        '  "remoteEnv": {"DC_REMOTE": "${containerEnv:DC_CONTAINER}-r"},\n'
        '  "postCreateCommand": "echo \\"$DC_CONTAINER $DC_REMOTE $FROM_IMAGE $(pwd)\\" '
        '>> created.txt",\n'
        '  "postStartCommand": ["sh", "-c", "date +%s >> started.txt"],\n'
        f'  "forwardPorts": [{port}],\n'
        '  "workspaceFolder": "/workspaces/x",\n'
        "}\n",
    )
    result = prov.run("up", name, check=True)
    assert "postCreateCommand (devcontainer.json, as the agent)" in result.stderr
    # Named once, not dropped silently.
    assert result.stderr.count("prov does not apply workspaceFolder") == 1, result.stderr
    alias = f"prov-{name}"
    expected = f"c-{name} c-{name}-r image-env {project}"
    assert (project / "created.txt").read_text().strip() == expected
    assert len((project / "started.txt").read_text().split()) == 1
    pane = _pane_output(
        prov, alias, "dcpane", str(project), 'echo "$(pwd) $DC_CONTAINER $DC_REMOTE $FROM_IMAGE"'
    )
    assert f"{project} c-{name} c-{name}-r image-env" in pane
    # forwardPorts: this machine's loopback port reaches the environment's.
    prov.ssh(
        alias,
        f"cd /tmp && (setsid python3 -m http.server {port} --bind 127.0.0.1 "
        ">/dev/null 2>&1 &); sleep 1",
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
        assert answer.status == 200
    _contained(prov, alias)
    # Again: nothing runs (it is running, unchanged); stopped and started:
    # postStartCommand runs, postCreateCommand does not.
    again = prov.run("up", name, check=True)
    assert "postCreateCommand" not in again.stderr
    prov.run("stop", name, check=True)
    started = prov.run("start", name, check=True)
    assert "postStartCommand" in started.stderr, started.stderr
    assert len((project / "created.txt").read_text().splitlines()) == 1
    assert len((project / "started.txt").read_text().split()) == 2
    prov.run("rm", "--yes", name, check=True)


def test_build_with_args_and_target(
    dcprov: Prov, docker_client: docker.DockerClient, base_image: str
) -> None:
    """`build` with a Dockerfile, args and a target; the image's hash covers the
    file, so a changed arg is a changed image."""
    prov = dcprov
    name = prov.name("dcbuild")
    project = prov.project(name)
    base = docker_client.images.get(base_image).id
    (project / ".devcontainer").mkdir()
    (project / ".devcontainer" / "Dockerfile").write_text(
        f"FROM {base} AS tools\nARG TOOL_VERSION\n"
        'RUN echo "tool $TOOL_VERSION" > /opt/tool\n'
        "FROM tools AS dev\nRUN cp /opt/tool /opt/dev-stage\n"
        "FROM dev AS unused\nRUN false\n"
    )
    config = {
        "build": {"dockerfile": "Dockerfile", "args": {"TOOL_VERSION": "1.2"}, "target": "dev"}
    }
    _write(project, config)
    env = prov.up(name)
    alias = str(env["ssh_alias"])
    assert prov.ssh(alias, "cat /opt/dev-stage").stdout.strip() == "tool 1.2"
    pane = _pane_output(prov, alias, "dcbuild", str(project), 'echo "$(pwd) $(cat /opt/dev-stage)"')
    assert f"{project} tool 1.2" in pane
    config["build"]["args"] = {"TOOL_VERSION": "1.3"}  # type: ignore[index]
    _write(project, config)
    drift = prov.run("up", name)
    assert drift.returncode == 4 and "image" in drift.stderr, drift.stderr
    prov.up(name, "--recreate")
    assert prov.ssh(alias, "cat /opt/dev-stage").stdout.strip() == "tool 1.3"
    _contained(prov, alias)
    prov.run("rm", "--yes", name, check=True)


def test_a_local_feature_built_by_the_devcontainers_cli(dcprov: Prov, user_image: str) -> None:
    """A local feature (no registry): the real CLI builds it in; what it installs,
    the variables it sets (an ENV in the image) and its own postCreateCommand
    (before the file's) all reach the agent's sessions."""
    prov = dcprov
    name = prov.name("dcfeat")
    project = prov.project(name)
    feature = project / ".devcontainer" / "hello"
    feature.mkdir(parents=True)
    (feature / "devcontainer-feature.json").write_text(
        json.dumps(
            {
                "id": "hello",
                "version": "1.0.0",
                "options": {"greeting": {"type": "string", "default": "hey"}},
                "containerEnv": {"HELLO_HOME": "/opt/hello", "PATH": "/opt/hello/bin:${PATH}"},
                "postCreateCommand": "echo feature >> order.txt",
            }
        )
    )
    (feature / "install.sh").write_text(
        # This run's own (so the CLI builds it here, not a cached image of an earlier run).
        f"#!/bin/sh\n# {prov.prefix}\nset -e\nmkdir -p /opt/hello/bin\n"
        'printf \'#!/bin/sh\\necho "%s from hello"\\n\' "$GREETING" > /opt/hello/bin/hello\n'
        "chmod 755 /opt/hello/bin/hello\n"
    )
    (feature / "install.sh").chmod(0o755)
    _write(
        project,
        {
            "image": user_image,
            "features": {"./hello": {"greeting": "hi"}},
            "postCreateCommand": "echo file >> order.txt",
        },
    )
    result = prov.run("up", name, check=True, timeout=600)
    assert "with its features" in result.stderr, result.stderr
    alias = f"prov-{name}"
    assert (project / "order.txt").read_text().split() == ["feature", "file"]
    assert prov.ssh(alias, "hello; echo $HELLO_HOME").stdout.split() == [
        "hi",
        "from",
        "hello",
        "/opt/hello",
    ]
    pane = _pane_output(prov, alias, "dcfeat", str(project), "hello")
    assert "hi from hello" in pane  # a login shell keeps the image's PATH
    _contained(prov, alias)
    prov.run("rm", "--yes", name, check=True)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--privileged"], "--privileged"),
        (["--network=host"], "--network=host"),
        (["-v", "/var/run/docker.sock:/var/run/docker.sock"], "-v"),
    ],
)
def test_what_breaks_containment_is_refused_and_nothing_is_made(
    dcprov: Prov, docker_client: docker.DockerClient, args: list[str], needle: str
) -> None:
    prov = dcprov
    name = prov.name("dcpriv")
    project = prov.project(name)
    _write(project, '{\n  "image": "debian:12",\n  "runArgs": ' + json.dumps(args) + "\n}\n")
    result = prov.run("up", name)
    assert result.returncode == 2, result.stderr
    assert f"devcontainer.json line 3: {needle}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not docker_client.containers.list(all=True, filters={"label": f"prov.name={name}"})
    assert not docker_client.networks.list(filters={"label": f"prov.name={name}"})
    assert not (prov.prov_home / "envs" / name).exists()
    assert sorted(p.name for p in project.iterdir()) == [".devcontainer"]


def test_a_failing_command_is_reported_with_its_exit_code_and_runs_again(
    dcprov: Prov, user_image: str
) -> None:
    prov = dcprov
    name = prov.name("dcfail")
    project = prov.project(name)
    _write(project, {"image": user_image, "postCreateCommand": "test -e go || exit 3"})
    failed = prov.run("up", name)
    assert failed.returncode == 10, failed.stderr
    assert "postCreateCommand: test -e go || exit 3 failed with exit code 3" in failed.stderr
    assert "Traceback" not in failed.stderr
    (project / "go").touch()
    again = prov.run("up", name, check=True)  # the environment was kept; the command runs again
    assert "postCreateCommand" in again.stderr
    assert "postCreateCommand" not in prov.run("up", name, check=True).stderr
    prov.run("rm", "--yes", name, check=True)


def test_features_without_the_cli_and_opting_out(dcprov: Prov, user_image: str) -> None:
    prov = dcprov
    name = prov.name("dcnocli")
    project = prov.project(name)
    _write(project, {"image": user_image, "features": {"ghcr.io/devcontainers/features/go:1": {}}})
    missing = prov.run("up", name, env={"PROV_DEVCONTAINER_CLI": "/nonexistent/devcontainer"})
    assert missing.returncode == 5, missing.stderr
    assert "ghcr.io/devcontainers/features/go:1" in missing.stderr
    assert "npm install -g @devcontainers/cli" in missing.stderr
    ignored = prov.run("up", name, "--no-devcontainer", "--json", check=True)
    assert "devcontainer" not in ignored.stderr
    assert prov.ssh(f"prov-{name}", "test -e /opt/dc-image || echo plain").stdout.strip() == "plain"
    prov.run("rm", "--yes", name, check=True)
