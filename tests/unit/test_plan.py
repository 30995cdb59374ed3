"""The pure plan: what Docker and ssh are asked to do, without a daemon."""

from __future__ import annotations

from pathlib import Path

from provisioner import keys
from provisioner.config import AgentCounts, Containment, ProvPaths
from provisioner.host import CredentialMount
from provisioner.plan import (
    HERE,
    Mount,
    Placement,
    PlanInputs,
    build_network,
    build_plan,
    connect_host,
)


def _plan(  # type: ignore[no-untyped-def]
    project: Path,
    base: Path,
    bind: str = "127.0.0.1",
    agents: AgentCounts | None = None,
    containment: Containment | None = None,
    placement: Placement = HERE,
    port: int | None = None,
    **more,
):
    """A plan for `demo`; `port` defaults to 2222 with --egress open (prov picks
    one there), else to none (the alias needs no port)."""
    client = keys.generate_ed25519("c")
    hostkey = keys.generate_ed25519("h")
    containment = containment or Containment(egress="open")
    paths = ProvPaths(Path("/ph"))
    network = build_network("demo", "10.213.0.0/28", "10.213.0.1", containment, paths)
    return (
        build_plan(
            PlanInputs(
                name="demo",
                image="prov-env:abc",
                image_hash="abc" * 20,
                bind=bind,
                port=port if port is not None else (0 if containment.internal else 2222),
                project_dir=project,
                project_uid=1234,
                project_gid=2345,
                projects_base=base,
                credentials=(CredentialMount(Path("/home/u/.claude"), "/home/agent/.claude"),),
                authorized_key=client.public,
                identity_file=Path("/ph/envs/demo/id_ed25519"),
                host_key_public=hostkey.public,
                host_key_private=hostkey.private_openssh,
                agents=agents or AgentCounts(),
                paths=paths,
                network=network,
                env_address="10.213.0.2",
                containment=containment,
                egress_image="prov-env:egress",
                egress_address="10.213.0.3",
                egress_network="prov-egress",
                allow=("github.com", "example.org"),
                placement=placement,
                **more,
            )
        ),
        client,
        hostkey,
    )


def test_project_mounted_at_same_absolute_path() -> None:
    """NTM cds to the host path inside the container, so the mount target equals the source."""
    plan, _, _ = _plan(Path("/data/projects/demo"), Path("/data/projects"))
    project_mount = plan.container.mounts[0]
    assert str(project_mount.source) == project_mount.target == "/data/projects/demo"
    assert not project_mount.read_only


def test_published_on_loopback_with_owner_ids() -> None:
    """SSH goes to 127.0.0.1 only, and the agent takes the project owner's UID/GID."""
    plan, _, _ = _plan(Path("/p/demo"), Path("/p"))
    assert (plan.container.bind, plan.container.port) == ("127.0.0.1", 2222)
    assert plan.container.environment == {
        "PROV_HOME_VOLUME": "1",
        "PROV_HOME_BOUND": "0",
        "PROV_FORWARD_AGENT": "0",
        "PROV_UID": "1234",
        "PROV_GID": "2345",
        "PROV_PROJECT_DIR": "/p/demo",
        "PROV_SUDO": "0",
        "PROV_EGRESS": "open",
    }
    assert (plan.ssh.hostname, plan.ssh.port) == ("127.0.0.1", 2222)
    assert plan.egress is None


def test_keys_come_from_a_read_only_mount_of_the_keys_dir() -> None:
    """Host key (0600) and authorized key are files of the env's keys dir,
    mounted read-only (not exec'd in later, and never the client key); they
    are not in the drift label, which lists only the user's mounts."""
    plan, client, hostkey = _plan(Path("/p/demo"), Path("/p"))
    spec = plan.container
    files = {f.name: f for f in spec.key_files}
    assert set(files) == {"ssh_host_ed25519_key", "authorized_keys"}
    assert files["ssh_host_ed25519_key"].mode == 0o600
    assert files["ssh_host_ed25519_key"].content == hostkey.private_openssh
    assert files["authorized_keys"].content.decode().split()[1] == client.public.blob_b64
    keys_mount = [m for m in spec.mounts if m.target == "/etc/prov/keys"]
    assert keys_mount == [Mount(spec.keys_dir, "/etc/prov/keys", read_only=True)]
    assert spec.keys_dir.name == "sshd" and spec.keys_dir.parent.name == "demo"
    assert "/etc/prov/keys" not in spec.labels["prov.mounts"]
    assert spec.files == ()  # no session variables asked for: nothing put in


def test_plan_repr_holds_no_private_key() -> None:
    """repr(plan) contains no key material."""
    plan, _, hostkey = _plan(Path("/p/demo"), Path("/p"))
    secret_line = hostkey.private_openssh.decode().splitlines()[1]
    assert secret_line not in repr(plan)


def test_least_privilege_by_default() -> None:
    """No sudo, no-new-privileges, all capabilities dropped but the listed few, a pids limit."""
    plan, _, _ = _plan(Path("/p/demo"), Path("/p"))
    sec = plan.container.security
    assert sec.no_new_privileges
    assert sec.pids_limit == 4096
    assert "SYS_ADMIN" not in sec.cap_add and "NET_RAW" not in sec.cap_add
    assert "FSETID" not in sec.cap_add
    assert plan.container.labels["prov.sudo"] == "no"
    assert plan.container.labels["prov.limits"] == "pids=4096,memory=none,cpus=none"


def test_sudo_lifts_no_new_privileges_and_is_recorded() -> None:
    """--sudo: sudo can run (no no-new-privileges), and labels/env say so for drift."""
    plan, _, _ = _plan(
        Path("/p/demo"),
        Path("/p"),
        containment=Containment(sudo=True, egress="open", memory=1 << 30, cpus=1.5),
    )
    sec = plan.container.security
    assert not sec.no_new_privileges
    assert plan.container.environment["PROV_SUDO"] == "1"
    assert (sec.memory, sec.nano_cpus) == (1 << 30, 1_500_000_000)
    assert plan.container.labels["prov.limits"] == "pids=4096,memory=1073741824,cpus=1.5"


def test_allowlist_puts_the_env_on_an_internal_network_behind_its_proxy() -> None:
    """Allowlist: nothing published, the alias goes to the env's own address, the
    proxy sits at .3 with the allowlist, and sessions get the proxy variables."""
    plan, _, _ = _plan(Path("/p/demo"), Path("/p"), containment=Containment())
    c = plan.container
    assert plan.network.internal and c.network == "prov-demo-net"
    assert (plan.ssh.hostname, plan.ssh.port) == ("10.213.0.2", 22)
    assert c.security.disable_ipv6
    assert plan.egress is not None
    proxy = plan.egress.container
    assert proxy.address == "10.213.0.3" and proxy.extra_network == "prov-egress"
    conf = {f.name: f.content.decode() for f in plan.egress.files}
    assert set(conf) == {"squid.conf"}  # no secrets: no CA, no TLS opened
    assert "acl allowed dstdomain -n .example.org .github.com\n" in conf["squid.conf"]
    assert "acl client src 10.213.0.2/32" in conf["squid.conf"]
    assert "http_port 10.213.0.3:3128\n" in conf["squid.conf"]
    assert "ssl_bump" not in conf["squid.conf"]
    assert [m.target for m in proxy.mounts] == ["/etc/prov-egress"]
    assert proxy.mounts[0].read_only and proxy.mounts[0].source.name == "egress"
    assert proxy.read_only and proxy.security.no_new_privileges
    assert c.environment["HTTPS_PROXY"] == "http://10.213.0.3:3128"
    assert c.environment["PROV_PROXY_ADDR"] == "10.213.0.3"
    assert c.labels["prov.egress"] == "allowlist:github.com,example.org"


def test_the_users_address_lines_reach_the_proxy_as_its_hosts_file() -> None:
    """The user file's "ADDRESS NAME" lines: a hosts file beside squid.conf, which
    squid is told to read; in the egress label, so a change is drift."""
    hosts = ("10.20.0.5 mirror.corp.example",)
    plan, _, _ = _plan(Path("/p/demo"), Path("/p"), containment=Containment(), hosts=hosts)
    assert plan.egress is not None
    conf = {f.name: f.content.decode() for f in plan.egress.files}
    assert conf["hosts"] == "10.20.0.5 mirror.corp.example\n"
    assert "hosts_file /etc/prov-egress/hosts\n" in conf["squid.conf"]
    label = plan.container.labels["prov.egress"]
    assert label == "allowlist:github.com,example.org,10.20.0.5 mirror.corp.example"


def test_egress_none_has_no_proxy() -> None:
    """--egress none: internal network, no proxy, no proxy variables."""
    plan, _, _ = _plan(Path("/p/demo"), Path("/p"), containment=Containment(egress="none"))
    assert plan.network.internal and plan.egress is None and plan.published is None
    assert "HTTPS_PROXY" not in plan.container.environment


def test_port_under_allowlist_is_relayed_by_the_gate() -> None:
    """--port with the default containment: the environment stays on its internal
    network and publishes nothing; its gate (the proxy) publishes the port on
    loopback and relays it to the environment's sshd only; the alias still goes
    to the environment's own address."""
    plan, _, _ = _plan(Path("/p/demo"), Path("/p"), containment=Containment(), port=2299)
    c = plan.container
    assert plan.network.internal and c.port == 0
    assert plan.egress is not None and plan.egress.proxying and plan.egress.relays
    gate = plan.egress.container
    assert (gate.bind, gate.port, gate.container_port) == ("127.0.0.1", 2299, "2222/tcp")
    assert gate.environment["PROV_RELAY_TO"] == "10.213.0.2:22"
    assert gate.environment["PROV_RELAY_PORT"] == "2222"
    assert plan.published == ("127.0.0.1", 2299)
    assert (plan.ssh.hostname, plan.ssh.port) == ("10.213.0.2", 22)
    assert c.labels["prov.port"] == "2299" and gate.labels["prov.port"] == "2299"
    assert c.environment["HTTPS_PROXY"] == "http://10.213.0.3:3128"


def test_port_under_egress_none_gets_a_relay_but_no_proxy() -> None:
    """--egress none --port: a gate that relays SSH and proxies nothing; the
    environment gets no proxy variables (its rules let it reach nothing)."""
    plan, _, _ = _plan(
        Path("/p/demo"), Path("/p"), containment=Containment(egress="none"), port=2299
    )
    assert plan.egress is not None and not plan.egress.proxying and plan.egress.relays
    assert plan.egress.container.environment["PROV_PROXY"] == "0"
    assert plan.egress.files == () and plan.egress.container.mounts == ()
    assert "HTTPS_PROXY" not in plan.container.environment
    assert "PROV_PROXY_ADDR" not in plan.container.environment
    assert plan.published == ("127.0.0.1", 2299)


def test_open_egress_publishes_on_the_environment_itself() -> None:
    """--egress open: Docker publishes sshd's own port; there is no gate."""
    plan, _, _ = _plan(Path("/p/demo"), Path("/p"))
    assert plan.egress is None and plan.published == ("127.0.0.1", 2222)
    assert plan.container.container_port == "22/tcp"


def test_labels_let_prov_find_and_compare() -> None:
    """Labels record what was asked, so drift can be seen from Docker alone."""
    plan, _, hostkey = _plan(Path("/p/demo"), Path("/p"))
    labels = plan.container.labels
    assert labels["prov.managed"] == "true"
    assert labels["prov.name"] == "demo"
    assert labels["prov.port"] == "2222"
    assert labels["prov.project"] == "/p/demo"
    assert labels["prov.host-key-fingerprint"] == hostkey.public.fingerprint


def test_ntm_command_uses_alias_and_counts() -> None:
    """The handoff is an alias NTM can pass to ssh, with the requested agent counts."""
    plan, _, _ = _plan(Path("/p/demo"), Path("/p"), agents=AgentCounts(cc=3, cod=0, gmi=1))
    assert plan.ntm_display == "ntm spawn demo --cc=3 --gmi=1 --ssh=prov-demo"
    assert "@" not in plan.ntm_display and ":2222" not in plan.ntm_display


def test_ntm_projects_base_prefix_when_project_elsewhere() -> None:
    """A project outside NTM's projects_base gets NTM_PROJECTS_BASE set to its parent."""
    plan, _, _ = _plan(Path("/srv/code/demo"), Path("/root/ntm_Dev"))
    assert plan.ntm_display == (
        "NTM_PROJECTS_BASE=/srv/code ntm spawn demo --cc=2 --cod=1 --ssh=prov-demo"
    )


def test_session_is_project_dir_name() -> None:
    """NTM's DIR is projects_base/SESSION, so the session is the project dir's name."""
    plan, _, _ = _plan(Path("/srv/code/webapp"), Path("/srv/code"))
    assert plan.ntm_command[:3] == ("ntm", "spawn", "webapp")
    assert plan.ntm_env == {}


def test_wildcard_bind_connects_via_loopback() -> None:
    """Publishing on 0.0.0.0 still connects locally through 127.0.0.1."""
    assert connect_host("0.0.0.0") == "127.0.0.1"
    assert connect_host("::") == "::1"
    assert connect_host("192.0.2.7") == "192.0.2.7"


def test_route_picks_deepest_project_containing_cwd() -> None:
    """Routing chooses the innermost project; unrelated or prefix-only paths do not match."""
    from provisioner.route import choose

    projects = {"prov-a": "/src/a", "prov-inner": "/src/a/sub", "prov-b": "/src/b"}
    assert choose("/src/a", projects) == "prov-a"
    assert choose("/src/a/x/y", projects) == "prov-a"
    assert choose("/src/a/sub/z", projects) == "prov-inner"
    assert choose("/src/b", projects) == "prov-b"
    assert choose("/src/bb", projects) is None
    assert choose("/elsewhere", projects) is None


def test_home_lives_in_a_volume_of_its_own() -> None:
    """/home/agent is the named volume prov-NAME-home, labelled as prov's, and recorded
    (an older container without it shows as drift)."""
    plan, _, _ = _plan(Path("/p/demo"), Path("/p"))
    assert plan.container.volumes == (("prov-demo-home", "/home/agent"),)
    assert plan.container.volume_labels["prov.name"] == "demo"
    assert plan.container.labels["prov.home-volume"] == "prov-demo-home"


def test_agent_forwarding_off_unless_asked_and_then_on_both_ends() -> None:
    """Off by default in the alias and the container; --forward-agent turns on both
    (the alias's ForwardAgent and sshd's AllowAgentForwarding), recorded for drift."""
    from provisioner.sshconf import render_host_block

    plan, _, _ = _plan(Path("/p/demo"), Path("/p"))
    assert "ForwardAgent no" in render_host_block(plan.ssh)
    assert plan.container.environment["PROV_FORWARD_AGENT"] == "0"
    on, _, _ = _plan(
        Path("/p/demo"), Path("/p"), containment=Containment(egress="open", forward_agent=True)
    )
    assert "ForwardAgent yes" in render_host_block(on.ssh)
    assert on.container.environment["PROV_FORWARD_AGENT"] == "1"
    assert on.container.labels["prov.forward-agent"] == "yes"


def test_remote_environment_mounts_nothing_of_this_machine() -> None:
    """On a remote engine no path of this machine is bind-mounted: the keys come
    in a read-only volume, the project (rsync) in a volume the agent is given,
    credentials are copied in (not mounted); the alias reaches it through the
    engine host with a ControlPath of its own."""
    remote = Placement(False, project_copied=True, proxy_command="ssh -W [%h]:%p -- builder")
    plan, _, _ = _plan(Path("/p/demo"), Path("/p"), placement=remote)
    spec = plan.container
    assert spec.mounts == ()
    assert spec.ro_volumes == (("prov-demo-keys", "/etc/prov/keys"),)
    assert ("prov-demo-project", "/p/demo") in spec.volumes
    assert ("prov-demo-home", "/home/agent") in spec.volumes
    assert spec.environment["PROV_PROJECT_VOLUME"] == "1"
    assert spec.environment["PROV_PROJECT_DIR"] == "/p/demo"
    assert plan.ssh.proxy_command == remote.proxy_command


def test_remote_sync_none_mounts_the_engine_hosts_own_path() -> None:
    """--sync none: the project is the engine host's directory at the same path."""
    plan, _, _ = _plan(Path("/p/demo"), Path("/p"), placement=Placement(False, proxy_command="x"))
    spec = plan.container
    assert spec.mounts == (Mount(Path("/p/demo"), "/p/demo"),)
    assert "PROV_PROJECT_VOLUME" not in spec.environment
    assert all(target != "/p/demo" for _v, target in spec.volumes)


def test_plan_inputs_keep_key_material_and_session_values_out_of_repr() -> None:
    """The host key, the session's variables and the proxy's CAs never show in a
    repr (a log line or a traceback of PlanInputs)."""
    import dataclasses

    hidden = {f.name for f in dataclasses.fields(PlanInputs) if not f.repr}
    assert {"host_key_private", "session_env", "upstream_cas"} <= hidden


def test_a_bounded_home_is_checked_at_start_and_the_agents_scratch_is_sized_memory() -> None:
    """A home of its own file system tells the entrypoint to check it is mounted; the
    agent's writable places outside it (/tmp, /var/tmp, /run/lock) are tmpfs sized
    from the memory limit, or 2 GiB each with none."""
    plan, _, _ = _plan(
        Path("/p/demo"), Path("/p"), containment=Containment(egress="open", memory=4 << 30),
        home_bound=300 << 20,
    )  # fmt: skip
    assert plan.container.environment["PROV_HOME_BOUND"] == "1"
    assert dict(plan.container.scratch) == {
        "/tmp": 1 << 30,
        "/var/tmp": 1 << 30,
        "/run/lock": 1 << 20,
    }
    unlimited, _, _ = _plan(
        Path("/p/demo"), Path("/p"), containment=Containment(egress="open", memory=0)
    )
    assert dict(unlimited.container.scratch)["/tmp"] == 2 << 30
    assert unlimited.container.environment["PROV_HOME_BOUND"] == "0"
