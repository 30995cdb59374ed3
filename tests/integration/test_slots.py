"""Slots (egress proxies made before their environments), tried as the agent
would: an unclaimed slot allows nothing and nothing inside can reach it, a
claimed slot is its environment's alone and allows exactly that
environment's names, a slot is never handed out twice, and nothing of a
slot stays behind that nothing will use."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from provisioner import slots
from provisioner.config import ProvPaths
from tests.integration.conftest import (
    ALLOWED_DOMAIN,
    DENIED_DOMAIN,
    DENIED_SITE,
    EGRESS_NET,
    SITE,
    HttpsSite,
    Prov,
    env_network,
    remove_slots,
)


@pytest.fixture(scope="module")
def home(
    prov: Prov, tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Prov]:
    """prov with a PROV_HOME of this module's own (its slots are counted here)."""
    ph = tmp_path_factory.mktemp("slots") / "ph"
    env = {k: v for k, v in prov.env.items() if k != "PROV_SLOTS"}  # slots as users get them
    own = replace(prov, prov_home=ph, env={**env, "PROV_HOME": str(ph)})
    yield own
    for listed in json.loads(own.run("ls", "--json").stdout or "[]"):
        own.run("rm", "--yes", str(listed["name"]))
    subprocess.run(["pkill", "-f", f"provisioner.slots {ph}"], check=False)
    remove_slots(docker_client, str(ph))


def _settle(prov: Prov) -> None:
    """Until the background filler (if any) is done."""
    slots.wait_idle(ProvPaths(prov.prov_home))


def _slots(prov: Prov) -> dict[str, object]:
    _settle(prov)
    return dict(json.loads(prov.run("slots", "--json", check=True).stdout))


def _ready(prov: Prov) -> list[str]:
    ready = _slots(prov)["ready"]
    assert isinstance(ready, list)
    return [str(r) for r in ready]


def _proxy(client: docker.DockerClient, name: str) -> docker.models.containers.Container:
    return client.containers.get(f"prov-{name}-egress")


def _curl(prov: Prov, name: str, url: str, ca: Path) -> str:
    """The HTTP status the agent gets for `url` through its proxy ("000": none)."""
    result = prov.ssh(
        f"prov-{name}",
        f"curl -sS -m 15 -o /dev/null -w '%{{http_code}}' --cacert {ca} {url}",
        timeout=60,
    )
    return result.stdout.strip()[-3:]


def _site_ca(prov: Prov, name: str, site: HttpsSite) -> Path:
    ca = prov.project(name) / "site-ca.pem"
    ca.write_bytes(site.ca.read_bytes())
    return ca


def test_an_up_claims_a_slot_that_allows_only_its_own_names(
    home: Prov, docker_client: docker.DockerClient, https_site: HttpsSite
) -> None:
    """Two environments claim two ready slots: each proxy is a slot made
    before it, on its own environment's network (and the outside one) only,
    and lets through exactly its own environment's allowlist."""
    home.run("up", "--prepare", "3", check=True)
    ready = _ready(home)
    assert len(ready) == 3
    one, two = home.name("slot-a"), home.name("slot-b")
    ca = {n: _site_ca(home, n, https_site) for n in (one, two)}
    home.up(one, "--allow", ALLOWED_DOMAIN)
    home.up(two, "--allow", DENIED_DOMAIN)
    claimed = []
    for name in (one, two):
        proxy = _proxy(docker_client, name)
        assert proxy.labels["prov.role"] == "slot"
        claimed.append(f"prov-slot-{proxy.labels['prov.slot']}")
        networks = set(proxy.attrs["NetworkSettings"]["Networks"])
        own = env_network(docker_client, f"prov-{name}")
        assert networks == {own, EGRESS_NET} and own == f"{claimed[-1]}-net"
        env = docker_client.containers.get(f"prov-{name}")
        assert set(env.attrs["NetworkSettings"]["Networks"]) == {own}  # only its slot's
    assert claimed[0] != claimed[1] and set(claimed) <= set(ready)
    assert _curl(home, one, f"https://{SITE}/hello.txt", ca[one]) == "200"
    assert _curl(home, one, f"https://{DENIED_SITE}/hello.txt", ca[one]) != "200"
    assert _curl(home, two, f"https://{DENIED_SITE}/hello.txt", ca[two]) == "200"
    assert _curl(home, two, f"https://{SITE}/hello.txt", ca[two]) != "200"
    after = _slots(home)
    assert after["claimed"] == 2
    assert len(after["ready"]) == 3 and not set(claimed) & set(after["ready"])  # type: ignore[arg-type]


def test_an_unclaimed_slot_allows_nothing_and_the_agent_cannot_reach_one(
    home: Prov, docker_client: docker.DockerClient, https_site: HttpsSite
) -> None:
    """A ready slot listens on its own loopback only; from a peer on the
    outside network its port is closed; from inside an environment there is
    no route to it, and the environment's proxy will not tunnel to it."""
    home.run("up", "--prepare", "2", check=True)
    slot = docker_client.containers.get(_ready(home)[0])
    table = slot.exec_run(["cat", "/proc/net/tcp", "/proc/net/tcp6"]).output.decode()
    rows = [line.split() for line in table.splitlines() if line.split()[3:4] == ["0A"]]
    bound = {row[1] for row in rows}
    assert "0100007F:0C38" in bound  # squid, on 127.0.0.1:3128
    # Nothing else but Docker's own resolver, all on loopback (127.x: xx00007F).
    assert all(len(b) == 13 and b[6:8] == "7F" for b in bound), bound
    address = slot.attrs["NetworkSettings"]["Networks"][EGRESS_NET]["IPAddress"]
    probe = (
        "import socket,sys\ns=socket.socket();s.settimeout(3)\n"
        f"sys.exit(s.connect_ex(({address!r},3128)))"
    )
    peer = https_site.container.exec_run(["python3", "-c", probe])
    assert peer.exit_code != 0  # refused: nothing listens there
    name = home.name("slot-agent")
    ca = _site_ca(home, name, https_site)
    home.up(name, "--allow", ALLOWED_DOMAIN)
    alias = f"prov-{name}"
    direct = home.ssh(alias, f"timeout 5 bash -c '</dev/tcp/{address}/3128'")
    assert direct.returncode != 0
    tunnel = home.ssh(
        alias,
        f"curl -sS -m 10 -o /dev/null -w '%{{http_code}}' -p --cacert {ca} http://{address}:3128/",
    )
    assert tunnel.stdout.strip()[-3:] != "200"
    plain = home.ssh(
        alias, f"curl -sS -m 10 -o /dev/null -w '%{{http_code}}' http://{address}:3128/"
    )
    assert plain.stdout.strip()[-3:] == "403"


def test_a_secret_is_injected_through_a_claimed_slot(
    home: Prov, docker_client: docker.DockerClient, https_site: HttpsSite, tmp_path: Path
) -> None:
    """A slot starts with no certificate authority and no bumping; the
    claim's SIGHUP turns injection on: the site gets the real value, the
    agent holds the placeholder."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(
        Path("/etc/ssl/certs/ca-certificates.crt").read_bytes() + https_site.ca.read_bytes()
    )
    trusting = replace(home, env={**home.env, "SSL_CERT_FILE": str(bundle)})
    trusting.run("up", "--prepare", "1", check=True)
    _settle(trusting)
    name = trusting.name("slot-secret")
    trusting.project(name)
    value = "slot-secret-value-5e1f"
    trusting.up(name, "--allow", ALLOWED_DOMAIN, "--secret", f"SLOT_KEY={value}@{SITE}:x-api-key")
    assert _proxy(docker_client, name).labels["prov.role"] == "slot"
    before = len(https_site.requests().splitlines())
    sent = trusting.ssh(
        f"prov-{name}",
        f'curl -sS -m 20 -X POST -d x -H "x-api-key: $SLOT_KEY" https://{SITE}/v1/messages',
    )
    assert "prov test stub" in sent.stdout, sent.stderr
    auth = [ln for ln in https_site.requests().splitlines()[before:] if ln.startswith("AUTH ")]
    assert any(value in line for line in auth), auth
    inside = trusting.ssh(f"prov-{name}", "echo $SLOT_KEY").stdout
    assert value not in inside and "prov-placeholder" in inside


def test_slots_are_never_shared_when_more_come_up_than_are_ready(
    home: Prov, docker_client: docker.DockerClient
) -> None:
    """Three at once with one slot ready: one claims it, the other two get
    proxies of their own; three different proxies, each working."""
    home.run("up", "--prepare", "1", check=True)
    ready = _ready(home)
    names = [home.name(f"slot-many{i}") for i in range(3)]
    for name in names:
        home.project(name)
    home.run("up", *names, check=True)
    proxies = [_proxy(docker_client, n) for n in names]
    assert len({p.id for p in proxies}) == 3
    roles = sorted(p.labels["prov.role"] for p in proxies)
    assert roles == ["egress", "egress", "slot"]
    assert [
        f"prov-slot-{p.labels['prov.slot']}" for p in proxies if "prov.slot" in p.labels
    ] == ready
    for name in names:
        assert home.ssh(f"prov-{name}", "true").returncode == 0


def test_a_claimed_slot_that_fails_is_removed(
    home: Prov, docker_client: docker.DockerClient
) -> None:
    """An `up` that fails after claiming a slot takes the slot with it: no
    container, no files; the next one is a fresh slot."""
    home.run("up", "--prepare", "1", check=True)
    (ready,) = _ready(home)
    slot_id = docker_client.containers.get(ready).labels["prov.slot"]
    name = home.name("slot-fail")
    home.project(name)
    failed = home.run("up", name, "--timeout", "0.01")
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert not docker_client.containers.list(all=True, filters={"label": f"prov.slot={slot_id}"})
    assert not docker_client.containers.list(all=True, filters={"name": f"prov-{name}"})
    _settle(home)
    assert not list((home.prov_home / "slots").glob(f"{slot_id}*"))
    assert ready not in _ready(home)


def test_an_environment_removed_behind_provs_back_leaves_no_slot_network(
    home: Prov, docker_client: docker.DockerClient
) -> None:
    """The environment's container removed with `docker rm -f`, then `up` again:
    it comes up on a new slot, and the old slot's network and proxy are gone
    (they were left for good before)."""
    home.run("up", "--prepare", "2", check=True)
    name = home.name("slot-behind")
    home.project(name)
    home.up(name)
    alias = f"prov-{name}"
    old = env_network(docker_client, alias)
    assert old.startswith("prov-slot-")
    docker_client.containers.get(alias).remove(force=True)
    home.up(name)
    new = env_network(docker_client, alias)
    assert new != old and not docker_client.networks.list(names=[old]), (old, new)
    assert home.ssh(alias, "true").returncode == 0
    assert home.run("rm", name, "--yes").returncode == 0
    assert not docker_client.networks.list(names=[new])


def test_nothing_of_a_slot_stays_that_nothing_will_use(
    prov: Prov, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """down takes the environment's slot; the last rm takes the ready ones
    (the default number); gc --yes and --prepare 0 remove ready ones too."""
    ph = tmp_path / "ph"
    env = {k: v for k, v in prov.env.items() if k != "PROV_SLOTS"}  # the default number
    own = replace(prov, prov_home=ph, env={**env, "PROV_HOME": str(ph)})
    try:
        name = own.name("slot-solo")
        own.project(name)
        own.up(name)  # no slot yet: a proxy of its own; then two are made
        assert len(_ready(own)) == slots.DEFAULT_WANTED
        own.run("down", name, check=True)
        own.up(name)  # claims one
        slot_id = _proxy(docker_client, name).labels["prov.slot"]
        own.run("down", name, check=True)
        assert not docker_client.containers.list(
            all=True, filters={"label": f"prov.slot={slot_id}"}
        )
        _settle(own)
        own.run("rm", "--yes", name, check=True)
        assert _slots(own)["ready"] == []
        assert not _mine(docker_client, ph)
        own.run("up", "--prepare", "2", check=True)
        assert len(_mine(docker_client, ph)) == 2
        gc = own.run("gc", "--yes", check=True)
        assert "removed 2 ready slot(s)" in gc.stderr
        assert not _mine(docker_client, ph)
        own.run("up", "--prepare", "1", check=True)
        own.run("up", "--prepare", "0", check=True)
        assert not _mine(docker_client, ph)
    finally:
        subprocess.run(["pkill", "-f", f"provisioner.slots {ph}"], check=False)
        remove_slots(docker_client, str(ph))


def _mine(client: docker.DockerClient, ph: Path) -> list[str]:
    return [
        c.name
        for c in client.containers.list(all=True, filters={"label": "prov.role=slot"})
        if any(str(m.get("Source", "")).startswith(str(ph)) for m in c.attrs["Mounts"])
    ]
