"""`prov ssh-test`: prove a running environment works, step by step, the way NTM uses it."""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provisioner import keys, sshconf, state
from provisioner.config import AGENT_USER, ProvPaths
from provisioner.engine import Engine, targets
from provisioner.openssh import system_ssh
from provisioner.ownership import require_ours
from provisioner.plan import SshTarget, connect_host, container_name, proxy_name
from provisioner.ready import Fatal, Transient, read_banner
from provisioner.sshclient import run_command


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: skipped because an earlier step failed
    detail: str


@dataclass(frozen=True)
class Report:
    """One environment's ssh-test: it passes only if every step passed (a step
    skipped after a failure is not a pass)."""

    name: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok is True for c in self.checks)

    @property
    def failed(self) -> int:
        return sum(1 for c in self.checks if c.ok is False)

    def public(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def chosen(
    name: str | None, paths: ProvPaths | None = None, asked: targets.Asked = targets.NOTHING
) -> tuple[list[str], list[str]]:
    """The environments to test (`name`, or every one of this PROV_HOME with a
    container) and the ones left out for having none."""
    if name is not None:
        return [name], []
    from provisioner.lifecycle import list_envs

    listed = list_envs(paths, asked=asked)
    return (
        [e.name for e in listed if e.container != "-"],
        [e.name for e in listed if e.container == "-"],
    )


def report(
    name: str, paths: ProvPaths | None = None, asked: targets.Asked = targets.NOTHING
) -> Report:
    return Report(name, tuple(ssh_test(name, paths, asked)))


def summary(reports: list[Report]) -> str:
    """ "N of M environments pass", and which fail."""
    failing = [r.name for r in reports if not r.ok]
    text = f"{len(reports) - len(failing)} of {len(reports)} environments pass"
    return text + ("; failing: " + ", ".join(failing) if failing else "")


def _pinned(known_hosts: Path, alias: str) -> str | None:
    try:
        for line in known_hosts.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == alias:
                return keys.PublicKey(parts[1], parts[2]).fingerprint
    except FileNotFoundError:
        return None
    return None


def ssh_test(
    name: str, paths: ProvPaths | None = None, asked: targets.Asked = targets.NOTHING
) -> list[Check]:
    paths = paths or ProvPaths.from_env()
    record = state.load(paths, name)
    alias = sshconf.alias_for(name)
    results: list[Check] = []

    def add(check_name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        # Each step builds on the one before: after a failure, say "skipped"
        # rather than pile up consequences of the same fault.
        if results and results[-1].ok is not True:
            results.append(Check(check_name, None, "skipped: an earlier step failed"))
            return False
        try:
            ok, detail = fn()
        except Exception as exc:  # each step reports its own failure; the run goes on
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        results.append(Check(check_name, ok, detail))
        return ok

    if record is None:
        return [
            Check(
                "environment recorded", False, f"prov has no record of {name!r} under {paths.envs}"
            )
        ]
    host_pub = keys.read_public(paths.env_dir(name), keys.HOST_KEY_NAME)
    if host_pub is None:
        return [
            Check(
                "host key stored",
                False,
                f"{paths.env_dir(name) / keys.HOST_KEY_NAME}.pub is missing; "
                f"`prov up {name} --recreate` makes a new one",
            )
        ]
    from provisioner.lifecycle import engine_of

    engine = engine_of(name, paths, asked)
    site = engine.site
    info = engine.find(container_name(name))
    if info is not None:
        require_ours(info, paths)
    hostname = record.ssh_host or connect_host(record.bind)
    ssh_port = record.ssh_port or record.port

    def running() -> tuple[bool, str]:
        if info is None:
            return False, f"no container {container_name(name)}; run `prov up {name}`"
        return info.running, f"{info.name} is {info.status}"

    # A published port on an internal network is the gate's, relayed to sshd.
    relayed = bool(record.port) and (record.ssh_host, record.ssh_port) != (
        connect_host(record.bind),
        record.port,
    )

    def published() -> tuple[bool, str]:
        assert info is not None  # noqa: S101 - only reached after `running` passed
        if record.port == 0 or relayed:  # an internal network: the alias goes to its address
            return hostname in info.addresses, f"want {hostname}, have " + (
                ", ".join(info.addresses) or "none"
            )
        want = (record.bind, record.port)
        return want in info.published, f"want {want[0]}:{want[1]}, have " + (
            ", ".join(f"{h}:{p}" for h, p in info.published) or "none"
        )

    def banner() -> tuple[bool, str]:
        try:
            line = read_banner(hostname, ssh_port)
        except Transient as exc:
            return False, str(exc)
        return line.startswith("SSH-2.0-"), line

    target = SshTarget(hostname, ssh_port, AGENT_USER, host_pub, Path(record.identity_file))

    def pin() -> tuple[bool, str]:
        pinned = _pinned(paths.known_hosts, alias)
        if pinned != host_pub.fingerprint:
            return False, f"known_hosts pins {pinned}, prov's host key is {host_pub.fingerprint}"
        try:
            run_command(target, "true")
        except Fatal as exc:
            if "host key" in str(exc):
                return False, str(exc)
        except Transient as exc:
            return False, str(exc)
        return True, f"server presents the pinned {host_pub.fingerprint}"

    def login() -> tuple[bool, str]:
        try:
            code, out = run_command(target, "id -un")
        except (Fatal, Transient) as exc:
            return False, str(exc)
        return code == 0 and out.strip() == AGENT_USER, f"logged in as {out.strip()}"

    def via_alias(
        command: str, expect: Callable[[int, str], bool]
    ) -> Callable[[], tuple[bool, str]]:
        def run() -> tuple[bool, str]:
            since = site.jump_mark()
            code, out = system_ssh(paths.ssh_config, alias, command)
            detail = f"exit {code}: {out.strip()[-300:]}" if out.strip() else f"exit {code}"
            if code == 255:
                jump = site.jump_said(since)
                if jump:
                    detail += f"; the jump through the engine host said: {jump}"
            return expect(code, out), detail

        return run

    project = shlex.quote(record.project_dir)
    session = f"prov-test-{secrets.token_hex(3)}"
    tmux = (
        f"/bin/sh -c {shlex.quote(f'tmux new-session -d -s {session} -c {project}')}"
        f" && tmux list-panes -t {session} -F '#{{pane_current_path}}'"
        f"; rc=$?; tmux kill-session -t {session} 2>/dev/null; exit $rc"
    )

    add("container running", running)
    add("address or port as recorded", published)
    reach = site.reach
    if reach is None:
        add("SSH banner", banner)
        add("host key matches the pin", pin)
        add("key login", login)
    else:
        # Its port is the engine host's: the system ssh goes there through the
        # alias, and insists on the pinned key (StrictHostKeyChecking yes).
        add(
            f"engine host {site.display()} reaches sshd",
            lambda: (lambda why: (why is None, why or f"{hostname}:{ssh_port} accepts"))(
                reach(hostname, ssh_port)
            ),
        )
        add(
            "pinned host key and key login through the engine host",
            via_alias("id -un", lambda c, o: c == 0 and o.strip().endswith(AGENT_USER)),
        )
    add("command runs through the alias", via_alias("true", lambda c, _o: c == 0))
    add(
        "tmux and git on PATH (non-interactive and login shell)",
        via_alias(
            "/bin/sh -c 'command -v tmux && command -v git' && "
            "bash -lc 'command -v tmux && command -v git'",
            lambda c, _o: c == 0,
        ),
    )
    add(
        "project dir at the same path, writable by agent",
        via_alias(
            f"test -d {project} || {{ echo 'missing in the container'; exit 1; }}; "
            f'test -w {project} || {{ echo "not writable by $(id -un) (uid $(id -u)); '
            f'owner is $(stat -c %u:%g {project})"; exit 1; }}; echo {project}',
            lambda c, _o: c == 0,
        ),
    )
    add(
        "tmux session created the way NTM does",
        via_alias(tmux, lambda c, o: c == 0 and record.project_dir in o),
    )
    if relayed:
        add(
            f"published port {record.bind}:{record.port} reaches sshd",
            lambda: _relay(engine, paths, record),
        )
    return results


def _relay(engine: Engine, paths: ProvPaths, record: state.EnvRecord) -> tuple[bool, str]:
    """The gate publishes the recorded port, and sshd's banner comes through it."""
    from provisioner.lifecycle import own_container

    gate = own_container(engine, record.name, paths, "egress")
    if gate is None or not gate.running:
        return False, f"the gate {proxy_name(record.name)} is not running"
    if (record.bind, record.port) not in gate.published:
        return False, f"{proxy_name(record.name)} publishes " + (
            ", ".join(f"{h}:{p}" for h, p in gate.published) or "nothing"
        )
    host = connect_host(record.bind)
    probe = engine.site.banner
    if probe is not None:
        said = probe(host, record.port)
        return said.startswith("SSH-"), " ".join(said.split())[-200:]
    try:
        return True, read_banner(host, record.port)
    except Transient as exc:
        return False, str(exc)
