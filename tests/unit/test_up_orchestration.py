"""The orchestration of `up` (service.up_many) against an engine that records
what it is asked and answers as Docker would: the order of the work (network,
then container, started only once it exists; the alias and the record after
SSH works), and a failure that undoes exactly what this run made. Readiness
(sshd and the system ssh) is the one seam replaced: it has its own tests, and
integration tests drive the whole of `up` for real."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from provisioner import limits, ready, service, state
from provisioner.config import Containment, Extras, ProvPaths, UpRequest
from provisioner.engine import ContainerInfo
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
        self.files: dict[str, bytes] = {}  # what the containers' entrypoints wrote
        self.containers: dict[str, ContainerSpec] = {}
        self.networks: dict[str, NetworkSpec] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.mounted: set[str] = set()  # disk volumes whose file system is mounted
        self.keeper: dict[str, Any] | None = None  # the disk keeper's body, once made

    @property
    def site(self) -> Site:
        return Site(self.target)

    def _say(self, what: str, subject: str) -> None:
        self.calls.append((what, subject))

    # what prepare and place ask
    def find(self, name: str) -> Any:
        self._say("find", name)
        if name == "prov-diskd" and self.keeper is not None:
            return ContainerInfo("prov-diskd", name, "running", {}, "sha256:k", (), None, "")
        return None

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

    def volume(self, name: str) -> dict[str, Any] | None:
        return self.volumes.get(name)

    def create_volume(
        self, name: str, labels: dict[str, str], options: dict[str, str] | None = None
    ) -> dict[str, Any]:
        self._say("create_volume", name)
        made = {"Name": name, "Labels": labels, "Options": options or {}}
        self.volumes[name] = {**made, "Mountpoint": f"/var/lib/docker/volumes/{name}/_data"}
        return self.volumes[name]

    def create_named(self, name: str, body: dict[str, Any]) -> str:
        self._say("create_named", name)
        self.keeper = body
        return name

    def exec_run(self, container_id: str, argv: list[str], user: str = "0") -> tuple[int, str]:
        """The disk keeper's script: mounts, or releases, a disk volume's directory."""
        assert container_id == "prov-diskd" and user == "0"
        action, directory, *size = argv[4:]
        disk = directory.split("/")[-2]
        self._say(f"keeper {action}", disk)
        if action == "release":
            self.mounted.discard(disk)
            return 0, ""
        self.mounted.add(disk)
        return 0, "size=" + ("1073741824" if size == ["auto"] else size[0])

    # what finish asks
    def start(self, container_id: str) -> None:
        assert container_id in self.containers, "started before it was created"
        self._say("start", container_id)

    def inject_files(self, container_id: str, files: list[tuple[str, int, bytes]]) -> None:
        self._say("inject_files", container_id)

    def logs_tail(self, container_id: str, lines: int = 20) -> str:
        return ""

    def read_file(self, container_id: str, path: str) -> bytes | None:
        self._say("read_file", path)
        return self.files.get(path)

    # what an undo asks
    def remove(self, container_id: str) -> None:
        self._say("remove", container_id)
        self.containers.pop(container_id, None)

    def remove_network(self, name: str) -> None:
        self._say("remove_network", name)
        self.networks.pop(name, None)

    def remove_volume(self, name: str) -> None:
        assert name not in self.mounted, "removed a disk volume whose file system is mounted"
        self._say("remove_volume", name)
        self.volumes.pop(name, None)


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
    monkeypatch.setattr(service.targets, "for_env", lambda name, recorded, asked: engine.target)
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
    made = [
        c
        for c in engine.calls
        if c[0]
        in ("create_volume", "create_named", "keeper mount", "create_network", "create", "start")
    ]
    assert made == [
        # The home's own file system, made and mounted before anything uses it.
        ("create_volume", "prov-demo-disk"),
        ("create_named", "prov-diskd"),  # the engine's disk keeper, made once
        ("keeper mount", "prov-demo-disk"),
        ("create_volume", "prov-demo-home"),
        ("create_network", "prov-demo-net"),
        ("create", "prov-demo"),
        ("start", "prov-demo"),
    ]
    home = engine.volumes["prov-demo-home"]
    assert home["Options"] == {
        "type": "none",
        "o": "bind",
        "device": "/var/lib/docker/volumes/prov-demo-disk/_data/mnt",
    }
    assert home["Labels"]["prov.disk"] == str(1 << 30)
    spec = engine.containers["prov-demo"]
    assert spec.network == "prov-demo-net" and spec.port == 0  # nothing published
    assert engine.networks["prov-demo-net"].internal  # egress none: no route out
    # Bounded by default, sized from the engine host (/info: 4 CPUs, 8 GiB).
    assert spec.security.memory == 4 << 30 and spec.security.nano_cpus == 2 * 10**9
    assert spec.labels["prov.limits"] == "pids=4096,memory=4294967296,cpus=2"
    assert result.limits == "memory 4.0 GiB, 2 CPUs, 4096 processes"
    assert result.disk == (
        "home: a file system of its own, 1.0 GiB; /tmp, /var/tmp: 1.0 GiB each, in memory"
    )
    assert spec.environment["PROV_HOME_BOUND"] == "1"
    assert dict(spec.scratch) == {"/tmp": 1 << 30, "/var/tmp": 1 << 30, "/run/lock": 1 << 20}
    record = state.load(paths, "demo")
    assert record is not None and record.project_dir == str(tmp_path / "demo")


def test_the_session_file_goes_in_before_the_container_starts(
    world: tuple[RecordingEngine, ProvPaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Create, copy, start: the session variables' root-only file is in the
    container before its entrypoint (and so any login) runs."""
    engine, paths = world
    monkeypatch.setattr(ready, "await_ssh", lambda *a, **k: 0.05)
    request = replace(
        _request(tmp_path), extras=Extras(agents=(), credentials="none", env=(("FOO", "bar"),))
    )
    [result] = service.up_many([(request, Quiet())], paths)
    assert not isinstance(result, Exception), result
    order = [c for c in engine.calls if c[0] in ("create", "inject_files", "start")]
    assert order == [
        ("create", "prov-demo"),
        ("inject_files", "prov-demo"),
        ("start", "prov-demo"),
    ]


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


def test_up_says_what_the_first_start_took_back_from_the_layer(
    world: tuple[RecordingEngine, ProvPaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entrypoint's record of the layer's paths it made root's is read once
    the new environment is ready, and `up` says it beside the disk's bounds."""
    engine, paths = world
    monkeypatch.setattr(ready, "await_ssh", lambda *a, **k: 0.05)
    engine.files[limits.LAYER_TAKEN_PATH] = b"1000:1000\n/home/node\n/opt/shared\n"
    [result] = service.up_many([(_request(tmp_path), Quiet())], paths)
    assert not isinstance(result, Exception), result
    assert result.disk.endswith(
        "; container layer: 2 paths the image let the agent's UID write there "
        "(/home/node, /opt/shared), which no size bounds, are root's now"
    )
    assert ("read_file", limits.LAYER_TAKEN_PATH) in engine.calls


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
    # Its home's file system: unmounted, then its volume removed (the fake refuses
    # the other order), after the home volume that binds it.
    tail = [c for c in engine.calls if c[1] in ("prov-demo-home", "prov-demo-disk")][-3:]
    assert tail == [
        ("remove_volume", "prov-demo-home"),
        ("keeper release", "prov-demo-disk"),
        ("remove_volume", "prov-demo-disk"),
    ]
    assert engine.containers == {} and engine.networks == {} and engine.volumes == {}
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


class Warned(Quiet):
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def _refuse_helpers(engine: RecordingEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(container_id: str, argv: list[str], user: str = "0") -> tuple[int, str]:
        engine._say("keeper refused", argv[4])
        return 32, "mount: /volumes/x/mnt: failed to setup loop device: no loop device."

    monkeypatch.setattr(engine, "exec_run", refused)


def test_an_engine_that_refuses_the_homes_file_system_gets_a_plain_home_and_says_so(
    world: tuple[RecordingEngine, ProvPaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default, an engine without loop devices (rootless Docker) still gets a
    working environment: a plain home volume, with `up` saying it is not bounded."""
    engine, paths = world
    _refuse_helpers(engine, monkeypatch)
    monkeypatch.setattr(ready, "await_ssh", lambda *a, **k: 0.05)
    reporter = Warned()
    [result] = service.up_many([(_request(tmp_path), reporter)], paths)
    assert not isinstance(result, Exception), result
    assert "prov-demo-disk" not in engine.volumes and "prov-demo-home" not in engine.volumes
    assert engine.containers["prov-demo"].environment["PROV_HOME_BOUND"] == "0"
    assert result.disk.startswith("home: not bounded (this engine refused its file system")
    assert engine.keeper is not None and engine.keeper["HostConfig"]["NetworkMode"] == "none"
    assert any(
        "the home is not bounded" in w and "failed to setup loop device" in w
        for w in reporter.warnings
    )


def test_a_disk_size_asked_for_that_the_engine_refuses_fails_and_leaves_nothing(
    world: tuple[RecordingEngine, ProvPaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--disk 2g the engine cannot give: a clear error, no container, no volume."""
    from dataclasses import replace

    from provisioner.errors import ProvError

    engine, paths = world
    _refuse_helpers(engine, monkeypatch)
    request = _request(tmp_path)
    request = replace(request, containment=replace(request.containment, disk=2 << 30))
    [outcome] = service.up_many([(request, Quiet())], paths)
    assert isinstance(outcome, ProvError)
    assert outcome.what.startswith("Cannot bound demo's home to --disk 2048m")
    assert "--disk none" in outcome.hint
    assert engine.containers == {} and engine.volumes == {}
    assert not paths.env_dir("demo").exists()


def test_disk_none_gets_the_plain_home_volume_docker_makes(
    world: tuple[RecordingEngine, ProvPaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    engine, paths = world
    monkeypatch.setattr(ready, "await_ssh", lambda *a, **k: 0.05)
    request = _request(tmp_path)
    request = replace(request, containment=replace(request.containment, disk=0))
    [result] = service.up_many([(request, Quiet())], paths)
    assert not isinstance(result, Exception), result
    assert not [c for c in engine.calls if c[0].startswith("keeper")]
    assert result.disk.startswith("home: not bounded (as asked (--disk none))")
