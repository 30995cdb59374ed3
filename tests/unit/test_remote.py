"""Pure parts of remote engines: addresses, the engine host's network view, rsync."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner import sync
from provisioner.engine import hostview
from provisioner.engine.sshlink import SshDest, SshLink
from provisioner.errors import UsageError


def test_ssh_addresses_keep_alias_case_user_and_port() -> None:
    assert SshDest.parse("ssh://Builder") == SshDest("Builder")
    assert SshDest.parse("ssh://ops@Gpu-1:2200") == SshDest("Gpu-1", "ops", 2200)
    assert SshDest.parse("ssh://[fd00::5]:22") == SshDest("fd00::5", None, 22)
    assert SshDest("h", "u", 2200).argv() == ["-p", "2200", "--", "u@h"]
    assert SshDest("h").argv() == ["--", "h"]
    for bad in ("ssh://", "ssh://host/var/run/x.sock", "ssh://host:99999", "tcp://host"):
        with pytest.raises(UsageError):
            SshDest.parse(bad)


def test_each_engine_gets_a_short_private_link_dir(tmp_path: Path) -> None:
    """Unix socket paths are limited to 107 bytes: the link dir is a short hash."""
    a = SshLink.for_url("ssh://a", tmp_path)
    b = SshLink.for_url("ssh://b", tmp_path)
    assert a.dir != b.dir and a.dir.parent == tmp_path and len(a.dir.name) == 12
    assert a.socket.parent == a.control.parent == a.dir


PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:08AE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:08AF 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0100007F:08B0 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4 1
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0 0
"""
PROC_ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""


def test_remote_host_view_from_proc_files() -> None:
    """Listeners (state 0A) and bound sockets (07) on any address take their
    port; established connections do not; the default route is no subnet to
    avoid."""
    view = hostview.parse_remote(PROC_TCP + hostview.ROUTES_MARK + "\n" + PROC_ROUTE)
    # 2224: bound, not yet listening; Docker could not bind it either.
    assert view.listening == frozenset({2222, 22, 8080, 2224})
    assert not view.bindable("127.0.0.1", 2222)
    assert view.bindable("127.0.0.1", 2223)  # only an established connection there
    assert [str(n) for n in view.routes] == ["192.168.1.0/24"]


def test_rsync_never_overwrites_newer_files_nor_deletes_unless_asked(tmp_path: Path) -> None:
    config = tmp_path / "ssh config"
    push = sync.rsync_argv(config, "prov-x", Path("/p/x"), back=False, delete=False)
    pull = sync.rsync_argv(config, "prov-x", Path("/p/x/"), back=True, delete=True)
    assert push[-2:] == ["/p/x/", "prov-x:/p/x/"]
    assert pull[-2:] == ["prov-x:/p/x/", "/p/x/"]
    assert "--update" in push and "--delete" not in push
    assert "--delete" in pull
    assert f"ssh -F '{config}' -o BatchMode=yes" in push


def test_auto_spreads_by_free_memory_and_running_containers() -> None:
    from provisioner.errors import ConflictError
    from provisioner.placement import ESTIMATE, Candidate, spread

    equal = [Candidate("a", 16 << 30), Candidate("b", 16 << 30)]
    assert sorted(spread(equal, [None] * 4)) == ["a", "a", "b", "b"]
    busy = [Candidate("big", 64 << 30, running=9), Candidate("small", 8 << 30)]
    assert spread(busy, [None]) == ["big"]
    # Equal memory: the one running fewer containers first.
    tie = [Candidate("x", 8 << 30, running=3), Candidate("y", 8 << 30, running=1)]
    assert spread(tie, [None]) == ["y"]
    # A memory limit counts as what it is, not the estimate.
    limits = [Candidate("p", ESTIMATE * 2), Candidate("q", ESTIMATE + (1 << 20))]
    assert spread(limits, [ESTIMATE * 2, None]) == ["p", "q"]
    with pytest.raises(ConflictError):
        spread([], [None])


class _FakeEngine:
    """Only what transfer.ensure_on asks of an engine."""

    def __init__(self, arch: str, images: dict[str, str]) -> None:
        from provisioner.engine.targets import EngineTarget

        self.arch, self.images, self.loaded = arch, images, b""
        self.target = EngineTarget("ssh://far", "test")

    def image_id(self, ref: str) -> str | None:
        return self.images.get(ref)

    def info(self) -> dict[str, str]:
        return {"Architecture": self.arch}

    def export_image(self, ref: str, chunk: int) -> list[bytes]:
        return [b"layer-1", b"layer-2"]

    def load_image(self, chunks: object) -> None:
        self.loaded = b"".join(chunks)  # type: ignore[call-overload]
        self.images["img:1"] = "sha256:one"


def test_image_copy_only_when_missing_and_never_across_architectures() -> None:
    from typing import Any, cast

    from provisioner.engine import transfer
    from provisioner.errors import BuildError

    here = _FakeEngine("x86_64", {"img:1": "sha256:one"})
    there = _FakeEngine("x86_64", {})
    copied, _s, size = transfer.ensure_on(cast(Any, here), cast(Any, there), "img:1", print)
    assert copied and size == len(b"layer-1layer-2") and there.loaded == b"layer-1layer-2"
    again = transfer.ensure_on(cast(Any, here), cast(Any, there), "img:1", print)
    assert again == (False, 0.0, 0)
    arm = _FakeEngine("aarch64", {})
    with pytest.raises(BuildError, match="aarch64"):
        transfer.ensure_on(cast(Any, here), cast(Any, arm), "img:1", print)
    assert arm.loaded == b""


def test_only_ports_prov_chose_are_tried_again() -> None:
    """A port lost to a race is retried for an environment prov chose the port
    for, never for one whose --port was asked (nor for other failures)."""
    from provisioner.config import Containment, UpRequest
    from provisioner.engine.api import PortTaken
    from provisioner.errors import ConflictError
    from provisioner.service import LostPort, port_races

    lost = PortTaken("Docker could not start the container: the port is already in use", "", "")
    opened = Containment(egress="open")
    requests = [
        UpRequest(n, port=p, containment=opened)
        for n, p in (("a", None), ("b", 2300), ("c", None), ("d", None))
    ]
    outcomes = [
        LostPort(lost, 2301),
        LostPort(lost, 2300),
        ConflictError("x", "", ""),
        LostPort(lost, 2302),
    ]
    assert port_races(outcomes, requests) == [0, 3]


def test_a_subnet_taken_meanwhile_is_its_own_error() -> None:
    """Docker's "Pool overlaps" (another network took the subnet after prov
    chose it) is told apart, so `up` chooses again; other errors stay general."""
    from provisioner.engine.api import PortTaken, SubnetTaken, _api_error

    taken = _api_error(
        "create network prov-x-net", "Pool overlaps with other one on this address space"
    )
    assert isinstance(taken, SubnetTaken)
    assert isinstance(_api_error("start the container", "port is already allocated"), PortTaken)
    assert not isinstance(_api_error("create network x", "no such driver"), SubnetTaken)
