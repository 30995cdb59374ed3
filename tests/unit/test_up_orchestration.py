"""The orchestration of `up` (service.up_many) against an engine that records
what it is asked and answers as Docker would: the order of the work (network,
then container, started only once it exists; the alias and the record after
SSH works), and a failure that undoes exactly what this run made. Readiness
(sshd and the system ssh) is the one seam replaced: it has its own tests, and
integration tests drive the whole of `up` for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provisioner import ready, service, state
from provisioner.config import Containment, Extras, ProvPaths, UpRequest
from provisioner.engine.hostview import HostView
from provisioner.engine.site import Site
from provisioner.engine.targets import DEFAULT_HOST, EngineTarget
from provisioner.errors import NotReady
from provisioner.spec import ContainerSpec, NetworkSpec


class RecordingEngine:
    """This machine's engine, empty at first, keeping what it was asked."""

    def __init__(self) -> None:
        self.target = EngineTarget(DEFAULT_HOST, "test")
        self.calls: list[tuple[str, str]] = []
        self.containers: dict[str, ContainerSpec] = {}
        self.networks: dict[str, NetworkSpec] = {}

    @property
    def site(self) -> Site:
        return Site(self.target)

    def _say(self, what: str, subject: str) -> None:
        self.calls.append((what, subject))

    # what prepare and place ask
    def find(self, name: str) -> None:
        self._say("find", name)

    def image_id(self, ref: str) -> str:
        return f"sha256:{abs(hash(ref)):x}"  # every image is present: nothing is built

    def image_labels(self, ref: str) -> dict[str, str]:
        return {}

    def host_view(self) -> HostView:
        return HostView(routes=())

    def info(self) -> dict[str, Any]:
        self._say("info", "")
        return {
            "NCPU": 4,
            "MemTotal": 8 << 30,
            "Driver": "overlay2",
            "DriverStatus": [["Backing Filesystem", "extfs"]],
        }

    def reserved_ports(self) -> set[int]:
        return set()

    def network_subnets(self) -> list[str]:
        return [n.subnet for n in self.networks.values()]

    def network(self, name: str) -> dict[str, Any] | None:
        return None if name not in self.networks else {"Internal": self.networks[name].internal}

    def create_network(self, spec: NetworkSpec) -> str:
        self._say("create_network", spec.name)
        self.networks[spec.name] = spec
        return spec.name

    def create(self, spec: ContainerSpec) -> str:
        self._say("create", spec.name)
        self.containers[spec.name] = spec
        return spec.name

    def volume(self, name: str) -> None:
        return None

    # what finish asks
    def start(self, container_id: str) -> None:
        assert container_id in self.containers, "started before it was created"
        self._say("start", container_id)

    def inject_files(self, container_id: str, files: list[tuple[str, int, bytes]]) -> None:
        self._say("inject_files", container_id)

    def logs_tail(self, container_id: str, lines: int = 20) -> str:
        return ""

    # what an undo asks
    def remove(self, container_id: str) -> None:
        self._say("remove", container_id)
        self.containers.pop(container_id, None)

    def remove_network(self, name: str) -> None:
        self._say("remove_network", name)
        self.networks.pop(name, None)

    def remove_volume(self, name: str) -> None:
        self._say("remove_volume", name)


class Quiet:
    def step(self, message: str) -> None: ...
    def note(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def detail(self, message: str) -> None: ...


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[RecordingEngine, ProvPaths]:
    engine = RecordingEngine()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PROV_SLOTS", "0")  # no background filler against the real engine
    (tmp_path / "home").mkdir()
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "DOCKER_HOST"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(service.Engine, "connect", classmethod(lambda cls, target=None: engine))
    monkeypatch.setattr(service.targets, "for_env", lambda name, paths, asked: engine.target)
    monkeypatch.setattr(service.targets, "require_supported", lambda target, what: None)
    return engine, ProvPaths(tmp_path / "ph")


def _request(tmp_path: Path, name: str = "demo") -> UpRequest:
    project = tmp_path / name
    project.mkdir(exist_ok=True)
    return UpRequest(
        name=name,
        project_dir=project,
        write_user_ssh_config=False,
        extras=Extras(agents=(), credentials="none"),
        containment=Containment(egress="none"),
    )


def test_a_new_environment_is_made_in_order(
    world: tuple[RecordingEngine, ProvPaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, paths = world
    waited: list[str] = []

    def await_ssh(engine_: object, config: Path, target: object, alias: str, *rest: object,
                  **kw: object) -> float:  # fmt: skip
        # By the time SSH is awaited the container runs and its alias exists.
        assert ("start", "prov-demo") in engine.calls
        assert f"Host {alias}" in config.read_text()
        waited.append(alias)
        return 0.05

    monkeypatch.setattr(ready, "await_ssh", await_ssh)
    [result] = service.up_many([(_request(tmp_path), Quiet())], paths)
    assert not isinstance(result, Exception), result
    assert result.action == "created" and waited == ["prov-demo"]
    made = [c for c in engine.calls if c[0] in ("create_network", "create", "start")]
    assert made == [
        ("create_network", "prov-demo-net"),
        ("create", "prov-demo"),
        ("start", "prov-demo"),
    ]
    spec = engine.containers["prov-demo"]
    assert spec.network == "prov-demo-net" and spec.port == 0  # nothing published
    assert engine.networks["prov-demo-net"].internal  # egress none: no route out
    # Bounded by default, sized from the engine host (/info: 4 CPUs, 8 GiB).
    assert spec.security.memory == 4 << 30 and spec.security.nano_cpus == 2 * 10**9
    assert spec.labels["prov.limits"] == "pids=4096,memory=4294967296,cpus=2"
    assert result.limits == "memory 4.0 GiB, 2 CPUs, 4096 processes"
    assert "not bounded" in result.disk and "overlay2 on extfs" in result.disk
    record = state.load(paths, "demo")
    assert record is not None and record.project_dir == str(tmp_path / "demo")


def test_the_engine_hosts_size_is_asked_once_and_kept(
    world: tuple[RecordingEngine, ProvPaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/info (~40 ms) is asked on the first `up` only; later ones read the cache."""
    engine, paths = world
    monkeypatch.setattr(ready, "await_ssh", lambda *a, **k: 0.05)
    service.up_many([(_request(tmp_path), Quiet())], paths)
    service.up_many([(_request(tmp_path, name="other"), Quiet())], paths)
    assert [c for c in engine.calls if c[0] == "info"] == [("info", "")]
    assert engine.containers["prov-other"].security.memory == 4 << 30


def test_a_failure_undoes_exactly_what_this_run_made(
    world: tuple[RecordingEngine, ProvPaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, paths = world

    def never_ready(*args: object, **kwargs: object) -> float:
        raise NotReady("SSH never became ready", "sshd exited", "see its log")

    monkeypatch.setattr(ready, "await_ssh", never_ready)
    [outcome] = service.up_many([(_request(tmp_path), Quiet())], paths)
    assert isinstance(outcome, NotReady)
    undone = [c for c in engine.calls if c[0].startswith("remove")]
    assert ("remove", "prov-demo") in undone
    assert ("remove_network", "prov-demo-net") in undone
    assert ("remove_volume", "prov-demo-home") in undone
    assert engine.containers == {} and engine.networks == {}
    # Nothing of it on this machine either: no keys, no record, no alias.
    assert not paths.env_dir("demo").exists()
    assert state.load(paths, "demo") is None
    assert "prov-demo" not in (paths.ssh_config.read_text() if paths.ssh_config.exists() else "")


def test_a_port_taken_before_the_start_is_tried_once_more_elsewhere(
    world: tuple[RecordingEngine, ProvPaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port prov chose, taken by something else between its check and
    Docker's start: that try is undone and the next one avoids the port."""
    from provisioner.engine.api import PortTaken

    engine, paths = world
    started = engine.start
    tries: list[int] = []

    def start_once_taken(container_id: str) -> None:
        tries.append(engine.containers[container_id].port)
        if len(tries) == 1:
            raise PortTaken("Docker could not start the container", "port is already allocated")
        started(container_id)

    monkeypatch.setattr(engine, "start", start_once_taken)
    monkeypatch.setattr(ready, "await_ssh", lambda *args, **kwargs: 0.05)
    monkeypatch.setattr(ready, "wait_published", lambda *args, **kwargs: None)
    request = UpRequest(
        name="demo",
        project_dir=tmp_path / "demo",
        write_user_ssh_config=False,
        extras=Extras(agents=(), credentials="none"),
        containment=Containment(egress="open"),  # published on the environment itself
    )
    (tmp_path / "demo").mkdir()
    [result] = service.up_many([(request, Quiet())], paths)
    assert not isinstance(result, Exception), result
    assert len(tries) == 2 and tries[0] != tries[1] and 0 not in tries
    assert ("remove", "prov-demo") in engine.calls  # the first try was undone
    assert result.port == tries[1]
