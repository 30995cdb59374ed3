"""What a failed `up` removes (ledger.created_here): only a container this run
created, never one that was there before it; after Ctrl-C mid-request, the
never-started container of its name that Docker may have finished making."""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.ledger import created_here


@dataclass
class Found:
    id: str
    managed: bool
    status: str


class FakeEngine:
    def __init__(self, found: Found | None) -> None:
        self.found = found
        self.asked: list[str] = []

    def find(self, name: str) -> Found | None:
        self.asked.append(name)
        return self.found


def test_only_what_this_run_created() -> None:
    engine = FakeEngine(None)
    assert created_here(engine, "prov-a", "created", "c1") == "c1"  # type: ignore[arg-type]
    assert created_here(engine, "prov-a", "recreated", "c2") == "c2"  # type: ignore[arg-type]
    # An existing container that was kept or started is not this run's to remove.
    assert created_here(engine, "prov-a", "unchanged", "c3") is None  # type: ignore[arg-type]
    assert created_here(engine, "prov-a", "started", "c4") is None  # type: ignore[arg-type]
    assert engine.asked == []


def test_interrupted_before_the_id_came_back() -> None:
    made = FakeEngine(Found("c5", managed=True, status="created"))
    assert created_here(made, "prov-a", None, None) == "c5"  # type: ignore[arg-type]
    running = FakeEngine(Found("c6", managed=True, status="running"))
    assert created_here(running, "prov-a", None, None) is None  # type: ignore[arg-type]
    foreign = FakeEngine(Found("c7", managed=False, status="created"))
    assert created_here(foreign, "prov-a", None, None) is None  # type: ignore[arg-type]
    assert created_here(FakeEngine(None), "prov-a", None, None) is None  # type: ignore[arg-type]
