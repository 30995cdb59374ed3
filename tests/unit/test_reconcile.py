"""Port choice, drift and replacement, and the readiness loop, without Docker:
fake containers, a fake port check and a fake clock."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from provisioner import ports, ready, reconcile
from provisioner.config import DEFAULT_FIRST_PORT
from provisioner.engine import ContainerInfo
from provisioner.errors import ConflictError, NotReady
from provisioner.plan import (
    AUTHORIZED_KEYS_FILE,
    HOST_KEY_FILE,
    LABEL_LIMITS,
    LABEL_SUDO,
    Plan,
    SshTarget,
)
from tests.unit.test_plan import _plan

# --- ports -------------------------------------------------------------------


def test_asked_port_used_unless_another_container_holds_it() -> None:
    assert ports.choose_port(set(), 2222, "127.0.0.1", bindable=lambda b, p: False) == 2222
    with pytest.raises(ConflictError, match="2222"):
        ports.choose_port({2222}, 2222, "127.0.0.1")
    # Its own container's port is not "another container's".
    assert ports.choose_port({2222}, 2222, "127.0.0.1", own={2222}) == 2222


def test_recorded_port_kept_then_first_free_one() -> None:
    first = DEFAULT_FIRST_PORT
    assert ports.choose_port(set(), None, "127.0.0.1", recorded=3000) == 3000
    busy = {first + 1}  # something listens there (not Docker)
    choice = ports.choose_port(
        {3000, first}, None, "127.0.0.1", recorded=3000, bindable=lambda b, p: p not in busy
    )
    assert choice == first + 2


def test_no_free_port_is_a_conflict() -> None:
    with pytest.raises(ConflictError, match="No free port"):
        ports.choose_port(set(), None, "127.0.0.1", bindable=lambda b, p: False)


# --- reconcile ---------------------------------------------------------------


def _running(plan: Plan, status: str = "running", **labels: str) -> ContainerInfo:
    return ContainerInfo(
        id="c1",
        name=plan.container.name,
        status=status,
        labels={**plan.container.labels, **labels},
        image_id="sha256:x",
        published=(),
        exit_code=None,
        started_at="",
    )


def _a_plan(tmp_path: Path) -> Plan:
    plan, _, _ = _plan(tmp_path / "p", tmp_path)
    assert isinstance(plan, Plan)
    return plan


def test_new_environment_is_created(tmp_path: Path) -> None:
    decision = reconcile.decide(None, _a_plan(tmp_path), set(), recreate=False)
    assert decision.action == "created" and decision.keys_to_write


def test_unchanged_running_or_stopped(tmp_path: Path) -> None:
    plan = _a_plan(tmp_path)
    assert reconcile.decide(_running(plan), plan, set(), False).action == "unchanged"
    assert reconcile.decide(_running(plan, "exited"), plan, set(), False).action == "started"


def test_drift_is_refused_without_recreate_and_named(tmp_path: Path) -> None:
    plan = _a_plan(tmp_path)
    changed = _running(plan, **{LABEL_SUDO: "yes"})
    with pytest.raises(ConflictError) as caught:
        reconcile.decide(changed, plan, set(), recreate=False)
    assert "sudo: running 'yes', asked 'no'" in caught.value.seen
    assert "--recreate" in caught.value.hint
    decision = reconcile.decide(changed, plan, set(), recreate=True)
    assert decision.action == "recreated" and decision.drift == ("sudo: running 'yes', asked 'no'",)


def test_an_environment_from_before_default_limits_is_kept_with_a_warning(
    tmp_path: Path,
) -> None:
    """A container labelled only `pids=N` (no memory or CPU limit, made by an older prov)
    still comes up as it is, with a warning naming --recreate; another pids limit, or a
    container with other limits, is drift as before."""
    plan = _a_plan(tmp_path)
    old = _running(plan, **{LABEL_LIMITS: "pids=4096"})
    kept = reconcile.decide(old, plan, set(), False)
    assert kept.action == "unchanged" and "--recreate" in kept.warnings[0]
    # And --recreate does apply them.
    assert reconcile.decide(old, plan, set(), True).action == "recreated"
    assert reconcile.decide(_running(plan), plan, set(), False).warnings == ()
    for other in ("pids=64", "pids=4096,memory=1073741824,cpus=1"):
        with pytest.raises(ConflictError, match="differs"):
            reconcile.decide(_running(plan, **{LABEL_LIMITS: other}), plan, set(), False)


def test_lost_authorized_key_is_repaired_host_key_is_drift(tmp_path: Path) -> None:
    plan = _a_plan(tmp_path)
    repaired = reconcile.decide(_running(plan), plan, {AUTHORIZED_KEYS_FILE}, False)
    assert repaired.action == "unchanged" and repaired.reauthorize
    with pytest.raises(ConflictError, match="differs"):
        reconcile.decide(_running(plan), plan, {HOST_KEY_FILE}, False)


def test_stale_keys_compares_the_keys_dir(tmp_path: Path) -> None:
    plan = _a_plan(tmp_path)
    spec = plan.container
    keys_dir = tmp_path / "keys"
    spec = type(spec)(**{**spec.__dict__, "keys_dir": keys_dir})
    assert reconcile.stale_keys(keys_dir, spec.key_files) == {HOST_KEY_FILE, AUTHORIZED_KEYS_FILE}
    reconcile.write_keys(spec)
    assert reconcile.stale_keys(keys_dir, spec.key_files) == set()
    (keys_dir / AUTHORIZED_KEYS_FILE).write_text("")
    assert reconcile.stale_keys(keys_dir, spec.key_files) == {AUTHORIZED_KEYS_FILE}


# --- readiness ---------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def _wait(
    attempts: list[Exception | None], problem_after: float | None = None, timeout: float = 5.0
) -> tuple[FakeClock, list[float]]:
    """wait_banner against a fake port: each try takes the next outcome."""
    clock = FakeClock()
    probes: list[float] = []

    def probe() -> str | None:
        probes.append(clock.t)
        if problem_after is not None and clock.t >= problem_after:
            return "Container status is 'exited' with code 1."
        return None

    def banner(host: str, port: int, timeout: float = 5.0) -> str:
        outcome = attempts.pop(0) if attempts else None
        if outcome is not None:
            raise outcome
        return "SSH-2.0-OpenSSH_9.2"

    original = ready.read_banner
    ready.read_banner = banner  # type: ignore[assignment]
    try:
        deadline = ready.Deadline.after(timeout, ready.Clock(clock.now, clock.sleep))
        target = SshTarget("127.0.0.1", 22, "agent", None, Path("/k"))  # type: ignore[arg-type]
        ready.wait_banner(target, probe, deadline, lambda _: None, lambda: "log tail")
    finally:
        ready.read_banner = original  # type: ignore[assignment]
    return clock, probes


def test_waits_until_the_banner_with_short_capped_steps() -> None:
    clock, probes = _wait([ready.Transient("no banner yet")] * 20)
    assert 0 < clock.t < 1.0  # 20 retries: short steps, no fixed sleeps
    # Docker is asked at most every PROBE_EVERY seconds, not on every try.
    assert len(probes) <= clock.t / ready.PROBE_EVERY + 1
    assert all(b - a >= ready.PROBE_EVERY for a, b in itertools.pairwise(probes))


def test_gives_up_at_the_deadline_with_the_last_reason() -> None:
    with pytest.raises(NotReady, match="within 2 s") as caught:
        _wait([ready.Transient("connection refused")] * 10_000, timeout=2.0)
    assert "connection refused" in caught.value.seen
    assert caught.value.log_tail == "log tail"


def test_stops_at_once_when_the_container_exits() -> None:
    with pytest.raises(NotReady, match="stopped") as caught:
        _wait([ready.Transient("x")] * 10_000, problem_after=0.5, timeout=60.0)
    assert "exited" in caught.value.seen


def test_a_first_try_that_passes_asks_docker_nothing() -> None:
    """The probe waits for a failed try: a login that works at once does not
    queue behind another call on the container (the layer's record being read)."""
    _clock, probes = _wait([])
    assert probes == []


def test_a_container_dead_from_the_start_is_seen_after_the_first_failed_try() -> None:
    with pytest.raises(NotReady, match="stopped"):
        _wait([ready.Transient("connection refused")] * 10_000, problem_after=0.0)


def test_fatal_failure_is_not_retried() -> None:
    attempts: list[Exception | None] = [ready.Fatal("host key mismatch"), None]
    with pytest.raises(NotReady, match="failed"):
        _wait(attempts)
    assert attempts == [None]  # the one after the fatal failure was never tried


# --- gc ----------------------------------------------------------------------


def test_gc_keeps_images_in_use_and_the_layers_below_them() -> None:
    from provisioner.lifecycle import select_unused

    listed = [
        {"Id": "sshd", "RepoTags": ["prov-env:sshd"], "Created": 1},
        {"Id": "agents", "RepoTags": ["prov-env:agents"], "Created": 2},
        {"Id": "old", "RepoTags": ["prov-env:old", "other:tag"], "Created": 0},
        {"Id": "egress", "RepoTags": ["prov-env:egress"], "Created": 3},
    ]
    parents = {"agents": "sshd", "sshd": "base", "base": ""}
    removable, in_use = select_unused(
        listed, {"agents"}, parents, {"old": 500, "egress": 7}, "prov-env"
    )
    assert [(i.tag, i.frees) for i in removable] == [("prov-env:old", 500), ("prov-env:egress", 7)]
    assert in_use == ("prov-env:agents", "prov-env:sshd")
    nothing, _ = select_unused(listed, {"agents", "old", "egress"}, parents, {}, "prov-env")
    assert nothing == ()


def test_wait_listening_returns_once_something_listens_else_names_it() -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        ready.wait_listening("127.0.0.1", server.getsockname()[1], 5.0, "The proxy", lambda: "")
        port = server.getsockname()[1]
    clock = FakeClock()
    with pytest.raises(NotReady, match="The proxy did not start listening within 1 s") as caught:
        ready.wait_listening(
            "127.0.0.1",
            port,
            1.0,
            "The proxy",
            lambda: "its log",
            ready.Clock(clock.now, clock.sleep),
        )
    assert caught.value.log_tail == "its log" and clock.t >= 1.0
