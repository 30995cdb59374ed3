"""`prov ssh-test`: prove a running environment works, step by step, the way NTM uses it."""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provisioner import keys, sshconf, state
from provisioner.config import AGENT_USER, ProvPaths
from provisioner.engine import ContainerInfo, Engine, targets
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


Step = Callable[[], tuple[bool, str]]


class _Steps:
    """The checks so far. Each step builds on the one before: after a failure,
    the rest say "skipped" rather than pile up consequences of the same fault."""

    def __init__(self) -> None:
        self.results: list[Check] = []

    def add(self, check_name: str, fn: Step) -> None:
        if self.results and self.results[-1].ok is not True:
            self.results.append(Check(check_name, None, "skipped: an earlier step failed"))
            return
        try:
            ok, detail = fn()
        except Exception as exc:  # each step reports its own failure; the run goes on
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.results.append(Check(check_name, ok, detail))


def ssh_test(
    name: str, paths: ProvPaths | None = None, asked: targets.Asked = targets.NOTHING
) -> list[Check]:
    paths = paths or ProvPaths.from_env()
    record = state.load(paths, name)
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
    info = engine.find(container_name(name))
    if info is not None:
        require_ours(info, paths)
    probe = _Probe(paths, record, host_pub, engine, info)
    steps = _Steps()
    steps.add("container running", probe.running)
    steps.add("address or port as recorded", probe.published)
    reach = engine.site.reach
    if reach is None:
        steps.add("SSH banner", probe.banner)
        steps.add("host key matches the pin", probe.pin)
        steps.add("key login", probe.login)
    else:
        # Its port is the engine host's: the system ssh goes there through the
        # alias, and insists on the pinned key (StrictHostKeyChecking yes).
        steps.add(f"engine host {engine.site.display()} reaches sshd", probe.engine_reaches)
        steps.add(
            "pinned host key and key login through the engine host",
            probe.via_alias("id -un", lambda c, o: c == 0 and o.strip().endswith(AGENT_USER)),
        )
    for check_name, step in probe.through_alias():
        steps.add(check_name, step)
    if probe.relayed:
        steps.add(
            f"published port {record.bind}:{record.port} reaches sshd",
            lambda: _relay(engine, paths, record),
        )
    return steps.results


def _exits_0(code: int, _out: str) -> bool:
    return code == 0


class _Probe:
    """The steps of one environment's ssh-test, each answering (ok, detail)."""

    def __init__(
        self,
        paths: ProvPaths,
        record: state.EnvRecord,
        host_pub: keys.PublicKey,
        engine: Engine,
        info: ContainerInfo | None,
    ) -> None:
        self.paths, self.record, self.host_pub, self.info = paths, record, host_pub, info
        self.site = engine.site
        self.alias = sshconf.alias_for(record.name)
        self.hostname = record.ssh_host or connect_host(record.bind)
        self.ssh_port = record.ssh_port or record.port
        self.target = SshTarget(
            self.hostname, self.ssh_port, AGENT_USER, host_pub, Path(record.identity_file)
        )
        # A published port on an internal network is the gate's, relayed to sshd.
        self.relayed = bool(record.port) and (record.ssh_host, record.ssh_port) != (
            connect_host(record.bind),
            record.port,
        )

    def running(self) -> tuple[bool, str]:
        if self.info is None:
            name = self.record.name
            return False, f"no container {container_name(name)}; run `prov up {name}`"
        return self.info.running, f"{self.info.name} is {self.info.status}"

    def published(self) -> tuple[bool, str]:
        info, record = self.info, self.record
        assert info is not None  # noqa: S101 - only reached after `running` passed
        if record.port == 0 or self.relayed:  # an internal network: the alias goes to its address
            return self.hostname in info.addresses, f"want {self.hostname}, have " + (
                ", ".join(info.addresses) or "none"
            )
        want = (record.bind, record.port)
        return want in info.published, f"want {want[0]}:{want[1]}, have " + (
            ", ".join(f"{h}:{p}" for h, p in info.published) or "none"
        )

    def banner(self) -> tuple[bool, str]:
        try:
            line = read_banner(self.hostname, self.ssh_port)
        except Transient as exc:
            return False, str(exc)
        return line.startswith("SSH-2.0-"), line

    def pin(self) -> tuple[bool, str]:
        pinned = _pinned(self.paths.known_hosts, self.alias)
        fingerprint = self.host_pub.fingerprint
        if pinned != fingerprint:
            return False, f"known_hosts pins {pinned}, prov's host key is {fingerprint}"
        try:
            run_command(self.target, "true")
        except Fatal as exc:
            if "host key" in str(exc):
                return False, str(exc)
        except Transient as exc:
            return False, str(exc)
        return True, f"server presents the pinned {fingerprint}"

    def login(self) -> tuple[bool, str]:
        try:
            code, out = run_command(self.target, "id -un")
        except (Fatal, Transient) as exc:
            return False, str(exc)
        return code == 0 and out.strip() == AGENT_USER, f"logged in as {out.strip()}"

    def engine_reaches(self) -> tuple[bool, str]:
        assert self.site.reach is not None  # noqa: S101 - asked for a remote engine only
        why = self.site.reach(self.hostname, self.ssh_port)
        return why is None, why or f"{self.hostname}:{self.ssh_port} accepts"

    def via_alias(self, command: str, expect: Callable[[int, str], bool]) -> Step:
        def run() -> tuple[bool, str]:
            since = self.site.jump_mark()
            code, out = system_ssh(self.paths.ssh_config, self.alias, command)
            detail = f"exit {code}: {out.strip()[-300:]}" if out.strip() else f"exit {code}"
            if code == 255:
                jump = self.site.jump_said(since)
                if jump:
                    detail += f"; the jump through the engine host said: {jump}"
            return expect(code, out), detail

        return run

    def through_alias(self) -> list[tuple[str, Step]]:
        """What NTM does through the alias: a command, the tools, the project, tmux."""
        project_dir = self.record.project_dir
        project = shlex.quote(project_dir)
        session = f"prov-test-{secrets.token_hex(3)}"
        tmux = (
            f"/bin/sh -c {shlex.quote(f'tmux new-session -d -s {session} -c {project}')}"
            f" && tmux list-panes -t {session} -F '#{{pane_current_path}}'"
            f"; rc=$?; tmux kill-session -t {session} 2>/dev/null; exit $rc"
        )
        return [
            ("command runs through the alias", self.via_alias("true", _exits_0)),
            (
                "tmux and git on PATH (non-interactive and login shell)",
                self.via_alias(
                    "/bin/sh -c 'command -v tmux && command -v git' && "
                    "bash -lc 'command -v tmux && command -v git'",
                    _exits_0,
                ),
            ),
            (
                "project dir at the same path, writable by agent",
                self.via_alias(
                    f"test -d {project} || {{ echo 'missing in the container'; exit 1; }}; "
                    f'test -w {project} || {{ echo "not writable by $(id -un) (uid $(id -u)); '
                    f'owner is $(stat -c %u:%g {project})"; exit 1; }}; echo {project}',
                    _exits_0,
                ),
            ),
            (
                "tmux session created the way NTM does",
                self.via_alias(tmux, lambda c, o: c == 0 and project_dir in o),
            ),
        ]


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
