"""The guide's own usage under prov's defaults, and what prov prints about it:
`prov up NAME --port P` with containment on, a root-owned project run as root,
the times prov prints, a subnet taken meanwhile, and what a build leaves."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import Prov, free_port, prov_containers


def test_guide_port_with_default_containment(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """`prov up NAME --port P` with the defaults: the guide's `ssh -p P agent@localhost`
    (and 127.0.0.1) logs in with the pinned host key, the alias too, the environment
    keeps its internal network and its proxy, ssh-test checks the port, `ls` shows it,
    a changed key is refused, and `rm` takes the pins away again."""
    name = prov.name("guide")
    prov.project(name)
    port = free_port()
    run = prov.run("up", name, "--port", str(port))
    assert run.returncode == 0, run.stderr
    key = str(prov.prov_home / "envs" / name / "id_ed25519")
    assert f"ssh -p {port} -i {key} agent@localhost" in run.stderr
    for host in ("localhost", "127.0.0.1"):
        guide = prov.guide_ssh(port, key, "id -un; echo $HTTPS_PROXY", host=host)
        assert guide.returncode == 0, guide.stderr
        user, proxy = guide.stdout.split()
        assert user == "agent" and proxy.endswith(":3128")
    assert prov.ssh(f"prov-{name}", "true").returncode == 0
    container = docker_client.containers.get(f"prov-{name}")
    assert list(container.attrs["NetworkSettings"]["Networks"]) == [f"prov-{name}-net"]
    assert docker_client.networks.get(f"prov-{name}-net").attrs["Internal"] is True
    test = prov.run("ssh-test", name)
    assert test.returncode == 0, test.stdout + test.stderr
    assert f"pass  published port 127.0.0.1:{port} reaches sshd" in test.stdout
    listed = json.loads(prov.run("ls", "--json", check=True).stdout)
    assert next(e for e in listed if e["name"] == name)["published"] == f"127.0.0.1:{port}"

    known = prov.home / ".ssh" / "known_hosts"
    pinned = known.read_text()
    assert f"[127.0.0.1]:{port},[localhost]:{port} ssh-ed25519 " in pinned
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(prov.home / "guide-other")],
        check=True,
    )
    other = (prov.home / "guide-other.pub").read_text().split()[1]
    known.write_text(
        re.sub(r"(ssh-ed25519 )\S+( prov-managed:prov-" + name + ")", rf"\g<1>{other}\2", pinned)
    )
    try:
        changed = prov.guide_ssh(port, key, "true")
        assert changed.returncode == 255 and "HOST IDENTIFICATION HAS CHANGED" in changed.stderr
    finally:
        known.write_text(pinned)

    assert prov.run("rm", name, "--yes").returncode == 0
    assert f"prov-managed:prov-{name}" not in known.read_text()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_printed_times_are_the_commands_own(prov: Prov) -> None:
    """The seconds prov prints for `up` (new, and already running) are the process's
    wall time, Python's start included, not a part of it."""
    name = prov.name("clock")
    prov.project(name)
    for verb in ("ready", "already running"):
        started = time.monotonic()
        result = prov.run("up", name)
        wall = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        match = re.search(rf"{name} {verb} in ([0-9.]+) s", result.stderr)
        assert match, result.stderr
        printed = float(match.group(1))
        # Printed to 0.1 s, before the process exits: within a short margin below.
        assert wall - 0.35 <= printed <= wall + 0.05, (verb, printed, wall)


def test_root_owned_project_works_as_root_and_is_given_back(prov: Prov, tmp_path: Path) -> None:
    """prov as root on a project root owns, with a git repository in it: the agent,
    never root, can create, edit and delete there and commit with git; `up` says
    what it changed on the host, and `rm` puts every file's mode, owner and ACL
    back and hands the agent's files to root."""
    if os.geteuid() != 0:
        pytest.skip("prov must run as root for this case")
    project = tmp_path / "rootproj"
    (project / "docs").mkdir(parents=True)
    (project / "README").write_text("root's\n")
    (project / "docs" / "tool.sh").write_text("#!/bin/sh\n")
    (project / "docs" / "tool.sh").chmod(0o750)
    repo = project / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    git_id = ["-c", "user.email=r@x", "-c", "user.name=r"]
    subprocess.run(
        ["git", "-C", str(repo), *git_id, "commit", "-q", "--allow-empty", "-m", "root's"],
        check=True,
    )

    def snapshot() -> list[str]:
        """Mode, owner and ACL of every path but the repository's own git files
        (which git rewrites by renaming on a commit)."""
        paths = [p for p in [project, *project.rglob("*")] if ".git" not in p.parts]
        facl = subprocess.run(
            ["getfacl", "-P", "--absolute-names", *map(str, paths)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [*sorted(f"{p} {p.lstat().st_mode:o} {p.lstat().st_uid}" for p in paths), facl]

    before = snapshot()
    name = prov.name("rootproj")
    result = prov.run("up", name, "--project", str(project))
    assert result.returncode == 0, result.stderr
    assert "owned by root" in result.stderr and "POSIX ACLs" in result.stderr
    alias = f"prov-{name}"
    work = prov.ssh(
        alias,
        f"cd {project} && id -u && echo more >> README && mkdir d && echo x > d/gone && "
        "rm d/gone && rmdir d && echo y > repo/kept && cd repo && git add kept && "
        "git -c user.email=a@x -c user.name=a commit -q -m agent && git log --oneline | wc -l",
    )
    assert work.returncode == 0, work.stderr
    uid, commits = work.stdout.split()
    assert uid != "0" and commits == "2"
    assert (project / "README").read_text() == "root's\nmore\n"
    assert prov.run("ssh-test", name).returncode == 0

    removed = prov.run("rm", name, "--yes")
    assert removed.returncode == 0, removed.stderr
    assert "ACL entries removed" in removed.stderr
    assert (repo / "kept").lstat().st_uid == 0
    (repo / "kept").unlink()
    assert snapshot() == before
    assert (
        subprocess.run(
            ["git", "-C", str(repo), "log", "-1", "--format=%s"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        == "agent"
    )


def test_unwritable_project_is_refused_not_ready(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """A project its owner cannot write (0555): `up` fails with the cause and the fix,
    never 'ready', and leaves no container, network or alias."""
    name = prov.name("ro")
    project = prov.project(name)
    project.chmod(0o555)
    try:
        result = prov.run("up", name)
    finally:
        project.chmod(0o755)
    assert result.returncode != 0
    assert (
        "cannot write its project" in result.stderr
        and "ready" not in result.stderr.split("error:")[0]
    )
    assert "Traceback" not in result.stderr
    assert prov_containers(docker_client, name) == []
    assert prov_containers(docker_client, f"{name}-egress") == []
    assert [n.name for n in docker_client.networks.list()].count(f"prov-{name}-net") == 0
    assert f"Host prov-{name}\n" not in (prov.prov_home / "ssh_config").read_text()


def test_start_is_ready_only_when_up_would_be(prov: Prov) -> None:
    """`prov start` holds to what `up` calls ready: a project that became
    unwritable while stopped fails it with the cause (not 'ready'); once
    writable again it starts, and its proxy lets the first request out."""
    name = prov.name("start-ro")
    project = prov.project(name)
    prov.up(name)
    prov.run("stop", name, "--yes", check=True)
    project.chmod(0o555)
    try:
        refused = prov.run("start", name)
    finally:
        project.chmod(0o755)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "cannot write its project" in refused.stderr, refused.stderr
    prov.run("stop", name, "--yes", check=True)
    prov.run("start", name, check=True)
    # Straight after start: the proxy answers (a refusal is its answer).
    code = prov.ssh(
        f"prov-{name}", "curl -sS -m 5 -o /dev/null -w '%{http_code}' http://denied.invalid/"
    ).stdout.strip()
    assert code == "403", code


COLLIDE = textwrap.dedent(
    """
    import sys
    import docker
    from provisioner import netplan, entry

    chosen = netplan.choose_subnet
    squatter = sys.argv[1]
    done = []

    def collide(used, pool_net):
        subnet = chosen(used, pool_net)
        if not done:  # another PROV_HOME (or the user) takes it before prov creates it
            docker.from_env().networks.create(
                squatter, ipam=docker.types.IPAMConfig(
                    pool_configs=[docker.types.IPAMPool(subnet=str(subnet))]))
            done.append(subnet)
        return subnet

    netplan.choose_subnet = collide
    sys.argv = ["prov", *sys.argv[2:]]
    entry.main()
    """
)


def test_a_subnet_taken_between_choice_and_creation_is_chosen_again(
    prov: Prov, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """A deliberate collision: right after prov chooses its subnet, another network
    takes it (as a second PROV_HOME's `up` or the user's `docker network create`
    would); `up` chooses another one and comes up, instead of failing on
    "Pool overlaps"."""
    name = prov.name("collide")
    prov.project(name)
    script = tmp_path / "collide.py"
    script.write_text(COLLIDE)
    squatter = f"{prov.prefix}-squatter"
    # A home with no slot: the environment makes its own network (a claimed
    # slot's is made before, by the filler, which chooses again the same way).
    alone = {**prov.env, "PROV_HOME": str(tmp_path / "ph"), "PROV_SLOTS": "0"}
    try:
        result = subprocess.run(
            [sys.executable, str(script), squatter, "up", name, "--json"],
            capture_output=True,
            text=True,
            env=alone,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        taken = docker_client.networks.get(squatter).attrs["IPAM"]["Config"][0]["Subnet"]
        mine = docker_client.networks.get(f"prov-{name}-net").attrs["IPAM"]["Config"][0]["Subnet"]
        assert taken != mine
        assert prov.ssh(f"prov-{name}", "true").returncode == 0
    finally:
        prov.run("rm", "--yes", name, env={"PROV_HOME": alone["PROV_HOME"]})
        for network in docker_client.networks.list(names=[squatter]):
            network.remove()


def test_concurrent_ups_under_two_prov_homes(prov: Prov, tmp_path: Path) -> None:
    """Two PROV_HOMEs bring up three environments each at the same moment, in one
    small pool: each gets a subnet of its own and none fails on an overlap."""
    homes = [tmp_path / "h1", tmp_path / "h2"]
    names = [[prov.name(f"cc{h}{i}") for i in range(3)] for h in range(2)]
    for group in names:
        for name in group:
            prov.project(name)
    pool = {"PROV_SUBNET_POOL": "10.213.240.0/24"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "provisioner", "up", *group, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**prov.env, **pool, "PROV_HOME": str(home)},
        )
        for home, group in zip(homes, names, strict=True)
    ]
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
        for proc, (_out, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err
            assert "overlaps" not in err
    finally:
        for home, group in zip(homes, names, strict=True):
            for name in group:
                prov.run("rm", name, "--yes", env={"PROV_HOME": str(home)})


def test_a_build_leaves_no_untagged_image_and_gc_finds_old_ones(
    prov: Prov, docker_client: docker.DockerClient
) -> None:
    """A multi-stage project Dockerfile builds with no `<none>` image left behind;
    an untagged image of prov's from before (a replaced build) is listed by `prov
    gc` and removed by `prov gc --yes`."""
    name = prov.name("stages")
    project = prov.project(name)
    (project / ".prov").mkdir()
    marker = f"{name}-{time.time_ns()}"
    (project / ".prov" / "Dockerfile").write_text(
        "ARG PROV_IMAGE\n"
        f"FROM ${{PROV_IMAGE}} AS stage\nRUN echo {marker} > /stage-output\n"
        "FROM ${PROV_IMAGE}\nCOPY --from=stage /stage-output /stage-output\n"
    )
    before = {i.id for i in docker_client.images.list(filters={"dangling": True})}
    prov.up(name)
    after = {i.id for i in docker_client.images.list(filters={"dangling": True})}
    assert after <= before, after - before
    assert prov.ssh(f"prov-{name}", "cat /stage-output").stdout.strip() == marker

    base = docker_client.containers.get(f"prov-{name}").image.id
    tag = f"prov-env:{prov.prefix}-gc"
    old, _ = docker_client.images.build(
        fileobj=io.BytesIO(f"FROM {base}\nRUN echo old > /o\n".encode()), tag=tag, rm=True
    )
    docker_client.images.build(
        fileobj=io.BytesIO(f"FROM {base}\nRUN echo new > /o\n".encode()), tag=tag, rm=True
    )
    short = old.id.removeprefix("sha256:")[:12]
    listed = prov.run("gc")
    assert f"<untagged> {short}" in listed.stdout, listed.stdout
    assert prov.run("gc", old.id.removeprefix("sha256:"), "--yes").returncode == 0
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(old.id)
    docker_client.images.remove(tag)


def test_a_ca_layer_with_nothing_to_add_is_not_built(prov: Prov, tmp_path: Path) -> None:
    """--agents none: a layer that would only add CAs the image trusts already
    is not built (its parent gets the tag), and one that adds a CA is one stage."""
    from tests.integration import tlssite

    ca = tlssite.build(tmp_path / "ca", ["ca.prov-test"])
    first = prov.name("ca1")
    prov.project(first)
    made = prov.run("up", first, "--ca-cert", str(ca))
    assert made.returncode == 0, made.stderr
    image = json.loads(prov.run("status", first, "--json", check=True).stdout)["image"]
    second = prov.name("ca2")
    prov.project(second)
    again = prov.run("up", second, "--from", image, "--ca-cert", str(ca))
    assert again.returncode == 0, again.stderr
    assert "building the agents (CA certificates only) layer" in made.stderr
    assert "building the SSH layer" in again.stderr  # prov's layers on the --from image
    assert "building the agents (CA certificates only) layer" not in again.stderr
