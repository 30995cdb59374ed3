"""The only module that talks to Docker (docker-py).

Every docker-py exception is caught here and re-raised as a ProvError with
`from`, so callers deal with one error family.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _import_docker() -> None:
    """Import docker-py without the paramiko it loads for ssh:// engines.

    docker-py treats paramiko as optional (ImportError is its signal), and the
    import costs ~0.25 s on every command; prov's engine is local unless
    DOCKER_HOST says ssh://. Commands that log in import paramiko themselves.
    """
    if os.environ.get("DOCKER_HOST", "").startswith("ssh://") or "paramiko" in sys.modules:
        return  # the plain import below loads docker-py as usual
    sys.modules["paramiko"] = None  # type: ignore[assignment]
    try:
        import docker  # noqa: F401
    finally:
        del sys.modules["paramiko"]


_import_docker()

import docker
import docker.errors
from docker.types import DeviceRequest
from docker.types import Mount as DockerMount

from provisioner.errors import BuildError, ConflictError, DockerUnavailable, NotFound, ProvError
from provisioner.plan import LABEL_MANAGED, SSHD_PORT, ContainerSpec

BUILD_LOG_TAIL = 25


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    status: str  # created, running, exited, ...
    labels: dict[str, str]
    image_id: str
    published: tuple[tuple[str, int], ...]  # (host ip, host port) bound to sshd now
    exit_code: int | None
    started_at: str

    @property
    def managed(self) -> bool:
        return self.labels.get(LABEL_MANAGED) == "true"

    @property
    def running(self) -> bool:
        return self.status == "running"


@contextmanager
def _docker_errors(action: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.NotFound as exc:
        raise NotFound(
            f"Docker could not {action}", _explain(exc), "check the name with `docker ps -a`."
        ) from exc
    except docker.errors.APIError as exc:
        text = _explain(exc)
        if "port is already allocated" in text or "address already in use" in text:
            raise ConflictError(
                f"Docker could not {action}: the port is already in use",
                text,
                "pick another port with --port, or stop what listens there.",
            ) from exc
        raise ProvError(
            f"Docker could not {action}", text, "see the Docker daemon's log for details."
        ) from exc
    except docker.errors.DockerException as exc:
        raise DockerUnavailable(
            "Cannot reach the Docker engine",
            f"While trying to {action}: {exc}",
            "start dockerd (e.g. `sudo scripts/start-dockerd.sh`) and check `docker info` works "
            "for this user.",
        ) from exc


def _explain(exc: docker.errors.APIError) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


class Engine:
    """A connected Docker engine."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def connect(cls) -> Engine:
        try:
            client = docker.from_env(timeout=120)
            client.ping()
        except docker.errors.DockerException as exc:
            raise DockerUnavailable(
                "Cannot reach the Docker engine",
                f"docker-py said: {exc}",
                "start dockerd (e.g. `sudo scripts/start-dockerd.sh`), check that "
                "`docker info` works for this user, or set DOCKER_HOST.",
            ) from exc
        return cls(client)

    # images ---------------------------------------------------------------

    def image_id(self, ref: str) -> str | None:
        with _docker_errors(f"inspect image {ref}"):
            try:
                return str(self._client.images.get(ref).id)
            except docker.errors.ImageNotFound:
                return None

    def image_labels(self, ref: str) -> dict[str, str]:
        with _docker_errors(f"inspect image {ref}"):
            return dict(self._client.images.get(ref).labels or {})

    def try_pull(self, ref: str) -> bool:
        """Pull `ref`; False when no registry can provide it (offline hosts)."""
        repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
        try:
            self._client.images.pull(repo, tag=tag or "latest")
        except docker.errors.DockerException:
            return False
        return True

    def import_rootfs(self, tar_path: Path, ref: str) -> None:
        repo, _, tag = ref.rpartition(":")
        with _docker_errors(f"import the base image {ref}"):
            self._client.api.import_image(src=str(tar_path), repository=repo, tag=tag)

    def build(
        self,
        context: Path,
        tag: str,
        buildargs: dict[str, str],
        labels: dict[str, str],
        on_line: Callable[[str], None],
    ) -> None:
        """Build `context` as `tag`, streaming each output line to `on_line`."""
        log: list[str] = []
        with _docker_errors(f"build the image {tag}"):
            stream = self._client.api.build(
                path=str(context),
                tag=tag,
                buildargs=buildargs,
                labels=labels,
                rm=True,
                forcerm=True,
                decode=True,
                pull=False,
            )
            for chunk in stream:
                if "stream" in chunk:
                    for line in str(chunk["stream"]).splitlines():
                        if line.strip():
                            log.append(line)
                            on_line(line)
                elif "error" in chunk:
                    log.append(str(chunk["error"]))
                    raise BuildError(
                        f"Building the image {tag} failed",
                        f"Docker said: {str(chunk['error']).strip()}",
                        "read the build log above; fix docker/ or the base image and run again.",
                        log_tail="\n".join(log[-BUILD_LOG_TAIL:]),
                    )
        if self.image_id(tag) is None:
            raise BuildError(
                f"Building the image {tag} produced no image",
                "",
                "read the build log above.",
                log_tail="\n".join(log[-BUILD_LOG_TAIL:]),
            )

    def read_image_file(self, image: str, candidates: tuple[str, ...]) -> str:
        """The text of the first regular file among `candidates` in `image`,
        read from a created (never started) container; "" if none exists."""
        with _docker_errors(f"read files of image {image}"):
            container = self._client.api.create_container(image, command=["true"])
            try:
                for path in candidates:
                    try:
                        stream, _stat = self._client.api.get_archive(container["Id"], path)
                    except docker.errors.NotFound:
                        continue
                    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                        member = tar.next()
                        if member is not None and member.isfile():
                            handle = tar.extractfile(member)
                            if handle is not None:
                                return handle.read().decode(errors="replace")
                return ""
            finally:
                self._client.api.remove_container(container["Id"], force=True)

    # containers -----------------------------------------------------------

    def find(self, name: str) -> ContainerInfo | None:
        with _docker_errors(f"inspect container {name}"):
            try:
                return _info(self._client.api.inspect_container(name))
            except docker.errors.NotFound:
                return None

    def summaries(self) -> list[dict[str, Any]]:
        """Docker's list entries for prov's containers: one API call, no inspects."""
        with _docker_errors("list containers"):
            found = self._client.api.containers(
                all=True, filters={"label": f"{LABEL_MANAGED}=true"}
            )
            return [dict(item) for item in found]

    def reserved_ports(self) -> set[int]:
        """Host ports any container (running or stopped) asks Docker to publish."""
        ports: set[int] = set()
        with _docker_errors("list containers"):
            for summary in self._client.api.containers(all=True):
                attrs = self._client.api.inspect_container(summary["Id"])
                bindings = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
                for entries in bindings.values():
                    for entry in entries or []:
                        if str(entry.get("HostPort", "")).isdigit():
                            ports.add(int(entry["HostPort"]))
        return ports

    def create(self, spec: ContainerSpec) -> str:
        mounts = [
            DockerMount(target=m.target, source=str(m.source), type="bind", read_only=m.read_only)
            for m in spec.mounts
        ]
        with _docker_errors(f"create container {spec.name}"):
            container = self._client.containers.create(
                spec.image,
                name=spec.name,
                hostname=spec.hostname,
                labels=spec.labels,
                environment=spec.environment,
                ports={SSHD_PORT: (spec.bind, spec.port)},
                mounts=mounts,
                detach=True,
                restart_policy={"Name": "unless-stopped"},
                device_requests=(
                    [DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])]
                    if spec.gpus is not None
                    else None
                ),
                init=False,  # the image runs tini as PID 1 itself
            )
        return str(container.id)

    def inject_files(self, container_id: str, files: list[tuple[str, int, bytes]]) -> None:
        """Put root-owned files into a created (not yet started) container."""
        buffer = io.BytesIO()
        now = time.time()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            dirs = sorted({str(Path(p).parent) for p, _, _ in files})
            for directory in dirs:
                info = tarfile.TarInfo(directory.lstrip("/"))
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
                tar.addfile(info)
            for path, mode, content in files:
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode, info.mtime = len(content), mode, now
                info.uid = info.gid = 0
                tar.addfile(info, io.BytesIO(content))
        with _docker_errors("put keys into the container"):
            ok = self._client.api.put_archive(container_id, "/", buffer.getvalue())
        if not ok:
            raise ProvError(
                "Docker refused to put keys into the container", "", "see the Docker daemon's log."
            )

    def start(self, container_id: str) -> None:
        try:
            with _docker_errors("start the container"):
                self._client.api.start(container_id)
        except ProvError as exc:
            if "capabilities: [[gpu]]" in exc.seen or "nvidia" in exc.seen.lower():
                raise ProvError(
                    "This Docker engine cannot give containers GPUs",
                    exc.seen,
                    "install the NVIDIA driver and the NVIDIA Container Toolkit on this "
                    "host (then restart dockerd), or leave --gpus out.",
                ) from exc
            raise

    def stop(self, container_id: str, timeout: int = 5) -> None:
        with _docker_errors("stop the container"):
            self._client.api.stop(container_id, timeout=timeout)

    def remove(self, container_id: str) -> None:
        """Remove a container, running or not; a vanished one is not an error."""
        with _docker_errors("remove the container"):
            try:
                self._client.api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                return

    def restart(self, container_id: str, timeout: int = 5) -> None:
        with _docker_errors("restart the container"):
            self._client.api.restart(container_id, timeout=timeout)

    def logs(self, container_id: str, follow: bool, tail: int | None) -> Iterator[bytes]:
        """The container's output, streamed when `follow`."""
        with _docker_errors("read the container's logs"):
            stream = self._client.api.logs(
                container_id, stream=True, follow=follow, tail="all" if tail is None else tail
            )
            yield from stream

    def state(self, container_id: str) -> ContainerInfo:
        with _docker_errors("inspect the container"):
            return _info(self._client.api.inspect_container(container_id))

    def logs_tail(self, container_id: str, lines: int = 20) -> str:
        try:
            raw = self._client.api.logs(container_id, tail=lines, stdout=True, stderr=True)
        except docker.errors.DockerException:
            return "(logs unavailable)"
        return bytes(raw).decode(errors="replace").rstrip()

    def engine_version(self) -> str:
        with _docker_errors("read the engine version"):
            return str(self._client.version().get("Version", "?"))


def exec_argv(container: str, workdir: str, command: list[str], tty: bool) -> list[str]:
    """The docker CLI call that runs `command` as the agent user in `workdir`.

    An interactive agent needs a real terminal, which docker-py's exec API does
    not give; the docker CLI does, so prov hands over to it (guide method 1).
    """
    return [
        "docker",
        "exec",
        "-it" if tty else "-i",
        "-u",
        "agent",
        "-w",
        workdir,
        container,
        *command,
    ]


def _info(attrs: dict[str, Any]) -> ContainerInfo:
    state = attrs.get("State") or {}
    ports = ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(SSHD_PORT) or []
    published = tuple(
        (str(p.get("HostIp", "")), int(p["HostPort"])) for p in ports if p.get("HostPort")
    )
    return ContainerInfo(
        id=str(attrs["Id"]),
        name=str(attrs.get("Name", "")).lstrip("/"),
        status=str(state.get("Status", "unknown")),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
        image_id=str(attrs.get("Image", "")),
        published=published,
        exit_code=state.get("ExitCode") if state.get("Status") == "exited" else None,
        started_at=str(state.get("StartedAt", "")),
    )
