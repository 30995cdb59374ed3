"""Slots without a daemon: what an unclaimed slot's proxy allows, how a
claim hands a slot to one caller only, and how many are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provisioner import slots
from provisioner.config import ProvPaths
from provisioner.engine import ContainerInfo
from provisioner.errors import ConfigError
from provisioner.injection import CONF_DIR, slot_conf, squid_conf
from provisioner.plan import LABEL_SLOT_IMAGE, PROXY_SECURITY, home_id, slot_network, slot_spec
from provisioner.spec import EGRESS_NETWORK

IMAGE = "prov-env:egress1"


class SlotEngine:
    """Docker's view of some slot containers: found by name, removable."""

    def __init__(self, paths: ProvPaths) -> None:
        self.paths = paths
        self.running: dict[str, str] = {}  # container name -> image label
        self.removed: list[str] = []
        self.old_network: set[str] = set()  # containers on an older prov's outside network

    def _outside(self, name: str) -> str:
        return "prov-egress" if name in self.old_network else EGRESS_NETWORK

    def find(self, name: str) -> ContainerInfo | None:
        if name not in self.running:
            return None
        labels = {LABEL_SLOT_IMAGE: self.running[name], "prov.network": f"{name}-net 10.0.0.0/28"}
        return ContainerInfo(
            name + "-id",
            name,
            "running",
            labels,
            "",
            (),
            None,
            "",
            networks=(f"{name}-net", self._outside(name)),
        )

    def remove(self, name: str) -> None:
        self.removed.append(name)
        self.running.pop(name, None)

    def remove_network(self, name: str) -> None:
        self.removed.append(name)

    def summaries(self) -> list[dict[str, Any]]:
        return [
            {
                "State": "running",
                "Labels": {
                    "prov.role": "slot",
                    "prov.home": home_id(self.paths),
                    "prov.slot": name.removeprefix("prov-slot-"),
                    LABEL_SLOT_IMAGE: image,
                },
                "NetworkSettings": {"Networks": {f"{name}-net": {}, self._outside(name): {}}},
            }
            for name, image in self.running.items()
        ]


def _ready_slot(engine: SlotEngine, paths: ProvPaths, slot_id: str, image: str = IMAGE) -> None:
    slots.slots_dir(paths).mkdir(parents=True, exist_ok=True)
    slots.conf_dir(paths, slot_id).mkdir()
    (slots.slots_dir(paths) / f"{slot_id}.ready").touch()
    engine.running[f"prov-slot-{slot_id}"] = image


def test_an_unclaimed_slot_allows_nothing_and_listens_on_loopback_only() -> None:
    conf = slot_conf().splitlines()
    assert [ln for ln in conf if ln.startswith("http_port")] == ["http_port 127.0.0.1:3128"]
    assert [ln for ln in conf if ln.startswith("http_access")] == ["http_access deny all"]
    assert not [ln for ln in conf if ln.startswith(("acl", "ssl_bump", "request_header"))]
    # The same settings as an environment's proxy (no cache, a line a request).
    env = squid_conf("10.0.0.3", "10.0.0.2", ("example.com",), ())
    assert conf[3:] == env.splitlines()[-len(conf[3:]) :]


def test_a_slot_is_a_proxy_on_an_internal_network_of_its_own(tmp_path: Path) -> None:
    paths = ProvPaths(tmp_path)
    network = slot_network("ab12cd34", "10.213.0.16/28", "10.213.0.17", paths)
    assert network.internal and network.name == "prov-slot-ab12cd34-net"
    spec = slot_spec("ab12cd34", IMAGE, tmp_path / "slots" / "ab12cd34", network, "10.213.0.19")
    assert spec.network == network.name and spec.address == "10.213.0.19"
    assert spec.extra_network == EGRESS_NETWORK
    assert spec.labels["prov.network"] == "prov-slot-ab12cd34-net 10.213.0.16/28"
    assert spec.port == 0  # it relays nothing
    assert spec.labels["prov.role"] == "slot" and spec.labels["prov.home"] == home_id(paths)
    assert "prov.name" not in spec.labels  # it is no environment's until claimed
    (mount,) = spec.mounts
    assert mount.target == CONF_DIR and mount.read_only
    assert spec.read_only
    # The same bounds and firewall as an environment's own gate.
    assert spec.security == PROXY_SECURITY and spec.security.no_new_privileges
    assert spec.environment["PROV_ALLOW_NETS"] == "" and spec.environment["PROV_PRIVATE_NETS"]


def test_a_claim_is_one_callers_alone(tmp_path: Path) -> None:
    paths = ProvPaths(tmp_path)
    engine = SlotEngine(paths)
    for slot_id in ("aaaa0001", "aaaa0002"):
        _ready_slot(engine, paths, slot_id)
    first = slots.claim(engine, paths, IMAGE)  # type: ignore[arg-type]
    second = slots.claim(engine, paths, IMAGE)  # type: ignore[arg-type]
    assert first is not None and second is not None
    assert first.slot_id != second.slot_id
    assert slots.claim(engine, paths, IMAGE) is None  # type: ignore[arg-type]
    assert slots.ready_count(paths) == 0
    assert (slots.slots_dir(paths) / f"{first.slot_id}.claimed").exists()


def test_a_broken_or_outdated_slot_is_removed_not_handed_out(tmp_path: Path) -> None:
    paths = ProvPaths(tmp_path)
    engine = SlotEngine(paths)
    _ready_slot(engine, paths, "bbbb0001", image="prov-env:older")
    _ready_slot(engine, paths, "bbbb0002")
    del engine.running["prov-slot-bbbb0002"]  # its container is gone
    assert slots.claim(engine, paths, IMAGE) is None  # type: ignore[arg-type]
    assert engine.removed == [
        "prov-slot-bbbb0001",
        "prov-slot-bbbb0001-net",
        "prov-slot-bbbb0002",
        "prov-slot-bbbb0002-net",
    ]
    assert not list(slots.slots_dir(paths).iterdir())


def test_sweep_leaves_claimed_slots_and_removes_stale_and_orphaned_ones(tmp_path: Path) -> None:
    paths = ProvPaths(tmp_path)
    engine = SlotEngine(paths)
    _ready_slot(engine, paths, "cccc0001")
    _ready_slot(engine, paths, "cccc0002", image="prov-env:older")
    _ready_slot(engine, paths, "cccc0003")
    (slots.slots_dir(paths) / "cccc0003.ready").rename(slots.slots_dir(paths) / "cccc0003.claimed")
    slots.conf_dir(paths, "dddd0001").mkdir()  # a slot whose container went with its env
    (slots.slots_dir(paths) / "dddd0001.claimed").touch()
    (slots.slots_dir(paths) / "eeee0001.making").touch()  # its filler was killed half-way
    assert slots.sweep(engine, paths, IMAGE) == ["cccc0001"]  # type: ignore[arg-type]
    assert engine.removed == [
        "prov-slot-cccc0002",
        "prov-slot-cccc0002-net",
        "prov-slot-eeee0001",
        "prov-slot-eeee0001-net",
    ]
    left = sorted(p.name for p in slots.slots_dir(paths).iterdir())
    assert left == ["cccc0001", "cccc0001.ready", "cccc0003", "cccc0003.claimed"]


def test_how_many_are_kept(tmp_path: Path) -> None:
    paths = ProvPaths(tmp_path)
    assert slots.wanted(paths, {}) == (slots.DEFAULT_WANTED, "the default")
    slots.set_wanted(paths, 0)
    assert slots.wanted(paths, {}) == (0, "`prov up --prepare`")
    assert slots.wanted(paths, {"PROV_SLOTS": "5"}) == (5, "PROV_SLOTS")
    for bad in ("-1", "two", "99"):
        with pytest.raises(ConfigError):
            slots.wanted(paths, {"PROV_SLOTS": bad})


def test_a_slot_on_an_older_provs_outside_network_is_neither_claimed_nor_kept(
    tmp_path: Path,
) -> None:
    """prov-egress let its containers reach one another: a slot made on it is
    removed by the sweep and by a claim, never handed to an environment."""
    paths = ProvPaths(tmp_path / "ph")
    engine = SlotEngine(paths)
    for slot_id in ("aa", "bb"):
        _ready_slot(engine, paths, slot_id)
        engine.old_network.add(f"prov-slot-{slot_id}")
    assert slots.claim(engine, paths, IMAGE) is None  # type: ignore[arg-type]
    assert "prov-slot-aa" in engine.removed and "prov-slot-bb" in engine.removed
    _ready_slot(engine, paths, "cc")
    engine.old_network.add("prov-slot-cc")
    assert slots.sweep(engine, paths, IMAGE) == []  # type: ignore[arg-type]
    assert "prov-slot-cc" in engine.removed
