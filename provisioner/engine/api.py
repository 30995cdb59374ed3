"""The only module that talks to Docker.

The calls on every command's path (ping, inspect, list, create, put files,
start/stop/remove) go to the Engine API as plain HTTP over the local socket,
with the standard library's http.client. Importing docker-py (requests,
urllib3) costs ~50 ms more than that (measured here 2026-11-28: 45-60 ms; with
paramiko, which it loads for ssh:// engines, ~90 ms more again), a sixth of a
no-op `prov ls`. docker-py does everything else, and everything that talks to
a registry (pulls with the user's credentials, builds, imports, reading files
out of an image, logs), and every call when DOCKER_HOST names an engine that is
not a local socket (tcp://, ssh://, TLS): there it is the transport for all.

Every failure is raised as a ProvError (docker-py's with `from`), so callers
deal with one error family.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import tarfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.engine import targets, wire
from provisioner.engine.site import Site, over_ssh
from provisioner.engine.transport import (
    API_TIMEOUT,
    START_HINT,
    Call,
    DockerPyTransport,
    SocketTransport,
    Transport,
    docker_client,
)
from provisioner.errors import BuildError, ConflictError, DockerUnavailable, NotFound, ProvError
from provisioner.spec import LABEL_MANAGED, RELAY_PORT, SSHD_PORT, ContainerSpec, NetworkSpec

if TYPE_CHECKING:
    import docker

    from provisioner.engine.hostview import HostView
    from provisioner.engine.sshlink import SshLink

BUILD_LOG_TAIL = 25


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    status: str  # created, running, exited, ...
    labels: dict[str, str]
    image_id: str
    # (host ip, host port) bound to sshd now, or relayed to it by a gate
    published: tuple[tuple[str, int], ...]
    exit_code: int | None
    started_at: str
    addresses: tuple[str, ...] = ()  # IPv4 addresses on its networks
    networks: tuple[str, ...] = ()  # the names of the networks it is on

    @property
    def managed(self) -> bool:
        return self.labels.get(LABEL_MANAGED) == "true"

    @property
    def running(self) -> bool:
        return self.status == "running"


@contextmanager
def _docker_errors(action: str) -> Iterator[None]:
    """docker-py's exceptions as ProvErrors."""
    import docker.errors

    try:
        yield
    except docker.errors.NotFound as exc:
        raise NotFound(
            f"Docker could not {action}", _explain(exc), "check the name with `docker ps -a`."
        ) from exc
    except docker.errors.APIError as exc:
        raise _api_error(action, _explain(exc)) from exc
    except docker.errors.DockerException as exc:
        raise DockerUnavailable(
            "Cannot reach the Docker engine", f"While trying to {action}: {exc}", START_HINT
        ) from exc


def _pull_refusals() -> tuple[type[Exception], ...]:
    """What a registry's refusal looks like from docker-py (not found, denied,
    unreachable registry): the engine answered, the registry did not give it."""
    import docker.errors

    return (docker.errors.APIError,)


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


class PortTaken(ConflictError):
    """Docker could not publish a port: something took it after prov chose it."""


class StageImages:
    """The image each stage of a classic-builder build ends with, read off its
    output: a `Step N/M : FROM ...` line starts a stage, and ` ---> ID` follows
    each step."""

    _STEP = re.compile(r"^Step \d+/\d+ : FROM\s", re.IGNORECASE)
    _IMAGE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")

    def __init__(self) -> None:
        self._ends: list[str] = []
        self._current = ""

    def see(self, line: str) -> None:
        if self._STEP.match(line):
            if self._current:
                self._ends.append(self._current)
            self._current = ""
        elif match := self._IMAGE.match(line.rstrip()):
            self._current = match.group(1)

    @property
    def earlier(self) -> tuple[str, ...]:
        """The ends of every stage but the last (the image that gets the tag)."""
        return tuple(self._ends)


class SubnetTaken(ConflictError):
    """Docker refused a network's subnet: another network took an overlapping
    one after prov chose it (another PROV_HOME, or the user's own)."""


def _api_error(action: str, text: str) -> ProvError:
    if "Pool overlaps" in text or "overlaps with other one" in text:
        return SubnetTaken(
            f"Docker could not {action}: its subnet overlaps another network's",
            text,
            "run `prov up` again (prov chooses another subnet), or set PROV_SUBNET_POOL to "
            "a range no other network uses.",
        )
    if "port is already allocated" in text or "address already in use" in text:
        return PortTaken(
            f"Docker could not {action}: the port is already in use",
            text,
            "pick another port with --port, or stop what listens there.",
        )
    return ProvError(f"Docker could not {action}", text, "see the Docker daemon's log for details.")


def _message(body: bytes) -> str:
    """The `message` of an Engine API error body (or the body as text)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()
    if isinstance(data, dict) and "message" in data:
        return str(data["message"])
    return body.decode(errors="replace").strip()


def _quote(ref: str) -> str:
    return urllib.parse.quote(ref, safe="/:@")


class Engine:
    """A connected Docker engine."""

    def __init__(
        self,
        transport: Transport,
        target: targets.EngineTarget,
        client: docker.DockerClient | None = None,
        link: SshLink | None = None,
    ) -> None:
        self._transport = transport
        self.target = target
        self._client = client
        self.link = link  # the SSH master an engine on another machine is reached through

    @property
    def cli_host(self) -> str:
        """The engine as the docker CLI reaches it (`docker -H`): a remote one
        through the socket prov's SSH master forwards."""
        return f"unix://{self.link.socket}" if self.link is not None else self.target.host

    @property
    def site(self) -> Site:
        """Where this engine runs, as prov needs to know it (see site.py)."""
        return Site(self.target, self.link)

    @classmethod
    def connect(cls, target: targets.EngineTarget | None = None) -> Engine:
        """The engine targets.resolve() names (or `target`): its socket directly
        when local, else through docker-py."""
        target = target or targets.resolve()
        if over_ssh(target.host):
            return cls._over_ssh(target)
        if target.socket is None:
            client = docker_client(target)
            return cls(DockerPyTransport(client), target, client)
        transport = SocketTransport(target.socket, target)
        transport.negotiate()
        return cls(transport, target)

    @classmethod
    def _over_ssh(cls, target: targets.EngineTarget) -> Engine:
        """An engine on another machine: its socket, forwarded by an SSH master."""
        from provisioner.engine.sshlink import CONNECT_TIMEOUT, SshLink, links_base

        link = SshLink.for_url(target.host, links_base())
        for attempt in (1, 2):
            transport = SocketTransport(str(link.open()), target)
            try:
                # A ping takes milliseconds; a link whose packets vanish must not
                # hold the answer long (the diagnosis below takes as long again).
                transport.negotiate(timeout=CONNECT_TIMEOUT / 2)
                return cls(transport, target, link=link)
            except DockerUnavailable:
                if attempt == 2 or link.alive():
                    raise link.diagnose_socket() from None
                # The master ended between the check and the call: open() makes
                # a new one (it finds this one dead).
        raise AssertionError("unreachable")  # pragma: no cover

    def _docker(self) -> docker.DockerClient:
        """docker-py, connected on first use (builds, imports, logs), on the same
        engine as every other call."""
        if self._client is None:
            target = self.target
            if self.link is not None:
                target = targets.EngineTarget(f"unix://{self.link.socket}", target.source)
            self._client = docker_client(target)
        return self._client

    def _call(
        self,
        action: str,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = API_TIMEOUT,
        missing_ok: bool = False,
    ) -> bytes | None:
        """One API call; its body, or None for a 404 when `missing_ok`."""
        status, data = self._transport.request(
            Call(method, path, params, body, content_type, timeout)
        )
        if status < 400:
            return data
        if status == 404:
            if missing_ok:
                return None
            raise NotFound(
                f"Docker could not {action}", _message(data), "check the name with `docker ps -a`."
            )
        raise _api_error(action, _message(data))

    def _json(self, action: str, method: str, path: str, **kwargs: Any) -> Any:
        data = self._call(action, method, path, **kwargs)
        return None if data is None else json.loads(data or b"null")

    # images ---------------------------------------------------------------

    def image_id(self, ref: str) -> str | None:
        attrs = self._json(
            f"inspect image {ref}", "GET", f"/images/{_quote(ref)}/json", missing_ok=True
        )
        return None if attrs is None else str(attrs["Id"])

    def images(self, repo: str) -> list[dict[str, Any]]:
        """Docker's list entries (Id, RepoTags, Created, Size, ...) of `repo`'s images."""
        found = self._json(
            f"list the {repo} images",
            "GET",
            "/images/json",
            params={"filters": json.dumps({"reference": [repo]})},
        )
        return [dict(item) for item in found or []]

    def dangling_images(self, label: str) -> list[dict[str, Any]]:
        """Untagged images, not below any tagged one, carrying `label` (KEY=VALUE)."""
        found = self._json(
            "list untagged images",
            "GET",
            "/images/json",
            params={"filters": json.dumps({"dangling": ["true"], "label": [label]})},
        )
        return [dict(item) for item in found or []]

    def tag_image(self, image_id: str, tag: str) -> None:
        repo, _, name = tag.rpartition(":")
        self._call(
            f"tag image {tag}",
            "POST",
            f"/images/{_quote(image_id)}/tag",
            params={"repo": repo, "tag": name},
        )

    def image_parent(self, image_id: str) -> str:
        attrs = self._json(f"inspect image {image_id}", "GET", f"/images/{image_id}/json")
        return str((attrs or {}).get("Parent") or "")

    def image_ids_in_use(self) -> set[str]:
        """The images of every container on this engine, stopped ones included."""
        listed = self._json("list containers", "GET", "/containers/json", params={"all": "1"})
        return {str(item.get("ImageID", "")) for item in listed or []}

    def unique_image_sizes(self) -> dict[str, int]:
        """Bytes each image holds that no other image shares (what removing it frees)."""
        df = self._json("read disk usage", "GET", "/system/df", timeout=120.0) or {}
        sizes = {}
        for image in df.get("Images") or []:
            shared = max(0, int(image.get("SharedSize") or 0))
            sizes[str(image.get("Id", ""))] = max(0, int(image.get("Size") or 0) - shared)
        return sizes

    def remove_image(self, ref: str) -> None:
        self._call(f"remove image {ref}", "DELETE", f"/images/{_quote(ref)}", missing_ok=True)

    def image_labels(self, ref: str) -> dict[str, str]:
        attrs = self._json(f"inspect image {ref}", "GET", f"/images/{_quote(ref)}/json")
        return dict((attrs.get("Config") or {}).get("Labels") or {})

    def pull(self, ref: str, progress: Callable[[str], None]) -> str | None:
        """Pull `ref` (name[:tag] or name@digest) through docker-py, which sends the
        credentials `docker login` stored for its registry; None when pulled, else
        what the engine or registry said. An unreachable engine is raised."""
        from docker.utils import parse_repository_tag

        repository, tag = parse_repository_tag(ref)
        shown: dict[str, str] = {}
        with _docker_errors(f"pull {ref}"):
            try:
                stream = self._docker().api.pull(
                    repository, tag=tag or "latest", stream=True, decode=True
                )
                for event in stream:
                    if "error" in event:
                        return str(event.get("error") or "the pull failed")
                    layer, status = str(event.get("id", "")), str(event.get("status", ""))
                    if status and shown.get(layer) != status:
                        shown[layer] = status
                        detail = event.get("progress") or ""
                        progress(f"pulling {ref}: {layer + ' ' if layer else ''}{status} {detail}")
            except _pull_refusals() as exc:
                return _explain(exc)
        return None

    def export_image(self, ref: str, chunk_size: int) -> Iterator[bytes]:
        """`docker save` of one image, streamed."""
        with _docker_errors(f"export the image {ref}"):
            yield from self._docker().api.get_image(ref, chunk_size=chunk_size)

    def load_image(self, chunks: Iterator[bytes]) -> None:
        """`docker load` of a streamed `docker save` (sent chunked, never held whole)."""
        with _docker_errors("load an image"):
            for event in self._docker().api.load_image(chunks):  # type: ignore[no-untyped-call]
                if isinstance(event, dict) and event.get("error"):
                    raise ProvError(
                        "Docker could not load the image",
                        str(event["error"]),
                        "see the Docker daemon's log there; check its free disk space.",
                    )

    def import_rootfs(self, tar_path: Path, ref: str) -> None:
        repo, _, tag = ref.rpartition(":")
        with _docker_errors(f"import the base image {ref}"):
            self._docker().api.import_image(src=str(tar_path), repository=repo, tag=tag)

    def build(
        self,
        context: Path,
        tag: str,
        buildargs: dict[str, str],
        labels: dict[str, str],
        on_line: Callable[[str], None],
        target: str | None = None,
        dockerfile: Path | None = None,
    ) -> None:
        """Build `context` as `tag` (with `dockerfile`, default its Dockerfile),
        streaming each output line to `on_line`. The images of its earlier
        stages (a multi-stage Dockerfile) are removed after it: untagged, they
        would be left as `<none>` images."""
        log: list[str] = []
        stages = StageImages()
        with _docker_errors(f"build the image {tag}"):
            stream = self._docker().api.build(
                path=str(context),
                tag=tag,
                buildargs=buildargs,
                labels=labels,
                rm=True,
                forcerm=True,
                decode=True,
                pull=False,
                target=target,
                dockerfile=str(dockerfile) if dockerfile is not None else None,
            )
            for chunk in stream:
                if "stream" in chunk:
                    for line in str(chunk["stream"]).splitlines():
                        if line.strip():
                            log.append(line)
                            on_line(line)
                            stages.see(line)
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
        if stages.earlier:
            dangling = {
                str(i.get("Id", "")).removeprefix("sha256:")
                for i in self._json(
                    "list untagged images",
                    "GET",
                    "/images/json",
                    params={"filters": json.dumps({"dangling": ["true"]})},
                )
                or []
            }
            for short in stages.earlier:
                for full in dangling:
                    if full.startswith(short):
                        self._call("remove a build stage's image", "DELETE", f"/images/{full}")

    def read_image_file(self, image: str, candidates: tuple[str, ...]) -> str:
        """The text of the first regular file among `candidates` in `image`,
        read from a created (never started) container; "" if none exists."""
        import docker.errors

        api = self._docker().api
        with _docker_errors(f"read files of image {image}"):
            container = api.create_container(image, command=["true"])
            try:
                for path in candidates:
                    try:
                        stream, _stat = api.get_archive(container["Id"], path)
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
                api.remove_container(container["Id"], force=True)

    # containers -----------------------------------------------------------

    def find(self, name: str) -> ContainerInfo | None:
        attrs = self._json(
            f"inspect container {name}", "GET", f"/containers/{_quote(name)}/json", missing_ok=True
        )
        return None if attrs is None else _info(attrs)

    def summaries(self) -> list[dict[str, Any]]:
        """Docker's list entries for prov's containers: one API call, no inspects."""
        found = self._json(
            "list containers",
            "GET",
            "/containers/json",
            params={"all": "1", "filters": json.dumps({"label": [f"{LABEL_MANAGED}=true"]})},
        )
        return [dict(item) for item in found or []]

    def reserved_ports(self) -> set[int]:
        """Host ports any container (running or stopped) asks Docker to publish."""
        ports: set[int] = set()
        listed = self._json("list containers", "GET", "/containers/json", params={"all": "1"})
        for summary in listed or []:
            if summary.get("State") == "running":
                # A running container's list entry shows what it publishes.
                ports.update(
                    int(p["PublicPort"]) for p in summary.get("Ports") or [] if p.get("PublicPort")
                )
                continue
            attrs = self._json(
                "inspect a container",
                "GET",
                f"/containers/{summary['Id']}/json",
                missing_ok=True,  # removed since the list
            )
            bindings = ((attrs or {}).get("HostConfig") or {}).get("PortBindings") or {}
            for entries in bindings.values():
                for entry in entries or []:
                    if str(entry.get("HostPort", "")).isdigit():
                        ports.add(int(entry["HostPort"]))
        return ports

    def create(self, spec: ContainerSpec) -> str:
        """Create (not start) the container `spec` describes; its ID."""
        body = wire.container_body(spec)
        created = self._json(
            f"create container {spec.name}",
            "POST",
            "/containers/create",
            params={"name": spec.name},
            body=json.dumps(body).encode(),
        )
        container_id = str(created["Id"])
        if spec.extra_network:
            try:
                self.connect_network(spec.extra_network, container_id)
            except ProvError:
                self.remove(container_id)
                raise
        return container_id

    # networks -------------------------------------------------------------

    def network_subnets(self) -> list[str]:
        """The IPv4 subnets of every Docker network (so a new one overlaps none)."""
        listed = self._json("list networks", "GET", "/networks")
        subnets = []
        for net in listed or []:
            for config in (net.get("IPAM") or {}).get("Config") or []:
                if "." in str(config.get("Subnet", "")):
                    subnets.append(str(config["Subnet"]))
        return subnets

    def network(self, name: str) -> dict[str, Any] | None:
        """A network's inspect data, or None."""
        data = self._json(
            f"inspect network {name}", "GET", f"/networks/{_quote(name)}", missing_ok=True
        )
        return None if data is None else dict(data)

    def create_network(self, spec: NetworkSpec) -> str:
        body = wire.network_body(spec)
        created = self._json(
            f"create network {spec.name}",
            "POST",
            "/networks/create",
            body=json.dumps(body).encode(),
        )
        return str(created["Id"])

    def volume(self, name: str) -> dict[str, Any] | None:
        """Docker's view of a named volume, None if there is none."""
        data = self._json(
            f"inspect volume {name}", "GET", f"/volumes/{_quote(name)}", missing_ok=True
        )
        return None if data is None else dict(data)

    def remove_volume(self, name: str) -> None:
        self._call(f"remove volume {name}", "DELETE", f"/volumes/{_quote(name)}", missing_ok=True)

    def fill_volume(
        self,
        name: str,
        image: str,
        files: list[tuple[str, int, bytes]],
        labels: dict[str, str],
        top_mode: int = 0o700,
    ) -> None:
        """Create (or reuse) volume `name` and put root-owned `files` (name, mode,
        content) in its root, through a helper container that is created and
        removed but never started: nothing runs, and nothing is written to the
        engine host's disk outside Docker's volume."""
        body = {"Name": name, "Labels": labels}
        self._json(
            f"create volume {name}", "POST", "/volumes/create", body=json.dumps(body).encode()
        )
        helper = {
            "Image": image,
            "Cmd": ["true"],
            "Labels": labels,
            "NetworkDisabled": True,
            "HostConfig": {
                "Mounts": [{"Type": "volume", "Source": name, "Target": "/fill"}],
                "LogConfig": wire.LOG_LIMIT,
            },
        }
        created = self._json(
            f"create a helper to fill volume {name}",
            "POST",
            "/containers/create",
            body=json.dumps(helper).encode(),
        )
        try:
            # The volume's root too: by default root's alone, as the keys dir is
            # on this machine.
            self._put_tar(str(created["Id"]), "/fill", files, top_mode=top_mode)
        finally:
            self.remove(str(created["Id"]))

    def create_volume(
        self, name: str, labels: dict[str, str], options: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Create volume `name` (the local driver; `options` its mount options),
        or return the one of that name; Docker's view of it."""
        body = {"Name": name, "Labels": labels, "DriverOpts": options or {}}
        made = self._json(
            f"create volume {name}", "POST", "/volumes/create", body=json.dumps(body).encode()
        )
        return dict(made or {})

    def create_named(self, name: str, body: dict[str, Any]) -> str:
        """Create (not start) container `name` from an API body; its ID."""
        created = self._json(
            f"create container {name}",
            "POST",
            "/containers/create",
            params={"name": name},
            body=json.dumps(body).encode(),
        )
        return str(created["Id"])

    def ensure_outside_network(self, name: str, labels: dict[str, str]) -> None:
        """prov's outside network (wire.outside_network_body), made if missing.
        One of that name whose containers may reach one another (made by hand,
        or by another tool) is refused, never joined."""
        body = json.dumps(wire.outside_network_body(name, labels)).encode()
        try:
            self._json(f"create network {name}", "POST", "/networks/create", body=body)
            return
        except ProvError as exc:
            if "already exists" not in exc.seen:
                raise
        found = self.network(name)
        if found is not None and not wire.isolates(found):
            raise ProvError(
                f"The network {name} lets its containers reach one another",
                f"prov's gates share {name} and it must keep them apart, but its "
                f"{wire.ICC_OPTION} option is not false (prov did not make it so).",
                f"remove it (`docker network rm {name}`, after the containers on it) "
                "and run prov again: prov makes it anew.",
            )

    def connect_network(self, network: str, container_id: str) -> None:
        self._call(
            f"connect the container to {network}",
            "POST",
            f"/networks/{_quote(network)}/connect",
            body=json.dumps({"Container": container_id}).encode(),
        )

    def rename(self, container_id: str, name: str) -> None:
        self._call(
            f"rename the container to {name}",
            "POST",
            f"/containers/{container_id}/rename",
            params={"name": name},
        )

    def signal(self, container_id: str, signal: str) -> None:
        """Send a signal (by name, e.g. HUP) to the container's main process."""
        self._call(
            f"send {signal} to the container",
            "POST",
            f"/containers/{container_id}/kill",
            params={"signal": signal},
        )

    def remove_network(self, name: str) -> None:
        """Remove a network; a vanished one is not an error."""
        self._call(f"remove network {name}", "DELETE", f"/networks/{_quote(name)}", missing_ok=True)

    def inject_files(self, container_id: str, files: list[tuple[str, int, bytes]]) -> None:
        """Put root-owned files into a container, in the order given. Their
        directories must exist (the image makes them, with their own modes)."""
        self._put_tar(container_id, "/", files)

    def _put_tar(
        self,
        container_id: str,
        at: str,
        files: list[tuple[str, int, bytes]],
        top_mode: int | None = None,
    ) -> None:
        """`files` as a root-owned tar extracted at `at`; `top_mode`: also set the
        mode of `at` itself (a tar entry for ".")."""
        buffer = io.BytesIO()
        now = time.time()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            if top_mode is not None:
                top = tarfile.TarInfo(".")
                top.type, top.mode, top.mtime, top.uid, top.gid = (
                    tarfile.DIRTYPE,
                    top_mode,
                    now,
                    0,
                    0,
                )
                tar.addfile(top)
            for path, mode, content in files:
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode, info.mtime = len(content), mode, now
                info.uid = info.gid = 0
                tar.addfile(info, io.BytesIO(content))
        self._call(
            "put files into the container",
            "PUT",
            f"/containers/{container_id}/archive",
            params={"path": at},
            body=buffer.getvalue(),
            content_type="application/x-tar",
        )

    def read_file(self, container_id: str, path: str, limit: int = 1 << 20) -> bytes | None:
        """A small file's content from a container (running or not), None if absent."""
        data = self._call(
            f"read {path} in the container",
            "GET",
            f"/containers/{container_id}/archive",
            params={"path": path},
            missing_ok=True,
        )
        if data is None:
            return None
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            member = tar.next()
            if member is None or not member.isfile() or member.size > limit:
                return None
            handle = tar.extractfile(member)
            return handle.read() if handle is not None else None

    def start(self, container_id: str) -> None:
        try:
            self._call("start the container", "POST", f"/containers/{container_id}/start")
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
        self._signal_stop("stop", container_id, timeout)

    def restart(self, container_id: str, timeout: int = 5) -> None:
        self._signal_stop("restart", container_id, timeout)

    def _signal_stop(self, verb: str, container_id: str, timeout: int) -> None:
        """stop or restart: SIGTERM, then SIGKILL after `timeout` seconds."""
        self._call(
            f"{verb} the container",
            "POST",
            f"/containers/{container_id}/{verb}",
            params={"t": str(timeout)},
            timeout=API_TIMEOUT + timeout,
        )

    def remove(self, container_id: str) -> None:
        """Remove a container, running or not; a vanished one is not an error."""
        self._call(
            "remove the container",
            "DELETE",
            f"/containers/{container_id}",
            params={"force": "1", "v": "1"},
            missing_ok=True,
        )

    def logs(self, container_id: str, follow: bool, tail: int | None) -> Iterator[bytes]:
        """The container's output, streamed when `follow`."""
        with _docker_errors("read the container's logs"):
            stream = self._docker().api.logs(
                container_id, stream=True, follow=follow, tail="all" if tail is None else tail
            )
            yield from stream

    def state(self, container_id: str) -> ContainerInfo:
        return _info(self._json("inspect the container", "GET", f"/containers/{container_id}/json"))

    def logs_tail(self, container_id: str, lines: int = 20) -> str:
        try:
            with _docker_errors("read the container's logs"):
                raw = self._docker().api.logs(container_id, tail=lines, stdout=True, stderr=True)
        except ProvError:
            return "(logs unavailable)"
        return bytes(raw).decode(errors="replace").rstrip()

    def host_view(self) -> HostView:
        """The engine host's TCP listeners and routes (see hostview)."""
        from provisioner.engine import hostview

        if self.link is None:
            return hostview.local()
        code, output = self.link.run(hostview.REMOTE_COMMAND)
        if code != 0 or hostview.ROUTES_MARK not in output:
            raise DockerUnavailable(
                f"Cannot read the network state of the engine host {self.link.dest.display()}",
                f"`{hostview.REMOTE_COMMAND}` there exited {code}: "
                + (" ".join(output.split())[-300:] or "no output")
                + ".",
                "prov reads /proc/net there to choose a free port and subnet; check that "
                "the host is Linux and that its SSH user has a POSIX shell.",
            )
        return hostview.parse_remote(output)

    def memory_use(self, container_id: str) -> int | None:
        """Bytes of memory a running container uses, as `docker stats` counts
        it (less the page cache it could drop); None when it cannot be read.
        On this machine, from the container's cgroup files (microseconds);
        else one stats sample, which Docker 20.10 answers at its collector's
        next tick (up to 1 s, even with one-shot)."""
        if self.link is None and (used := _cgroup_memory_use(container_id)) is not None:
            return used
        try:
            stats = self._json(
                "read the container's memory use",
                "GET",
                f"/containers/{container_id}/stats",
                params={"stream": "false", "one-shot": "true"},
            )
        except ProvError:
            return None
        use = wire.memory_use(stats)
        return use[0] if use is not None else None

    def disk_use(self, container_id: str, volume: str) -> tuple[int | None, int | None]:
        """Bytes the container's own layer and the volume hold (see wire.disk_use);
        None for a figure the engine does not give. Docker measures the volumes
        of every container for it (`docker system df -v`): for `status`, not `ls`."""
        try:
            container = self._json(
                "measure the container's layer",
                "GET",
                f"/containers/{container_id}/json",
                params={"size": "1"},
            )
            df = self._json("measure the volumes", "GET", "/system/df")
        except ProvError:
            return None, None
        return wire.disk_use(container, df, volume)

    def mounts_here(self, points: dict[str, tuple[str, str]]) -> dict[str, tuple[int, int]] | None:
        """For each key's (directory, file) on the engine host: (bytes used on
        the file system mounted at the directory, bytes of the file), for those
        mounted there now. Read on this machine with statvfs and stat
        (microseconds) when the engine is here and they can be read (as root);
        None otherwise: then a container of the engine's must be asked."""
        if self.link is not None:
            return None
        found: dict[str, tuple[int, int]] = {}
        for key, (directory, file) in points.items():
            try:
                size = Path(file).stat().st_size  # raises where ismount would say False
                if os.path.ismount(directory):
                    fs = os.statvfs(directory)
                    found[key] = ((fs.f_blocks - fs.f_bfree) * fs.f_frsize, size)
            except PermissionError:  # Docker's root is root's alone: not this user's
                return None
            except OSError:  # no such file: a plain home (made before prov bounded them)
                continue
        return found

    def exec_run(self, container_id: str, argv: list[str], user: str = "0") -> tuple[int, str]:
        """Run `argv` in a running container and wait for it: (exit code, its
        stdout and stderr). Through the API itself, no docker-py (~80 ms to import)."""
        made = self._json(
            "run a command in the container",
            "POST",
            f"/containers/{container_id}/exec",
            body=json.dumps(
                {"Cmd": argv, "User": user, "AttachStdout": True, "AttachStderr": True}
            ).encode(),
        )
        exec_id = str(made["Id"])
        raw = self._call(
            "run a command in the container",
            "POST",
            f"/exec/{exec_id}/start",
            body=json.dumps({"Detach": False, "Tty": False}).encode(),
            timeout=300.0,
        )
        state = self._json("read the command's exit", "GET", f"/exec/{exec_id}/json")
        code = (state or {}).get("ExitCode")
        return (int(code) if isinstance(code, int) else -1), wire.demux(raw or b"")

    def fs_used(self, container_id: str, path: str) -> int | None:
        """Bytes used on the file system at `path` in a running container (its
        own `df`, as root); None if it cannot tell."""
        try:
            code, output = self.exec_run(container_id, ["df", "-P", "-k", path])
        except ProvError:
            return None
        return wire.df_used(output) if code == 0 else None

    def memory_available(self) -> int | None:
        """Bytes of memory the engine host could still give (MemAvailable), None
        if it cannot be read."""
        if self.link is None:
            try:
                with open("/proc/meminfo") as handle:  # noqa: PTH123 - a proc file
                    text = handle.read()
            except OSError:
                return None
        else:
            code, text = self.link.run("grep MemAvailable /proc/meminfo", timeout=15)
            if code != 0:
                return None
        for line in text.splitlines():
            if line.startswith("MemAvailable:"):
                fields = line.split()
                if len(fields) >= 2 and fields[1].isdigit():
                    return int(fields[1]) * 1024
        return None

    def put_paths(
        self, container_id: str, entries: list[tuple[Path, str]], uid: int, gid: int
    ) -> None:
        """Copy files and trees of this machine (source, absolute target) into a
        container, owned by uid:gid and private to it (dirs 0700, files 0600)."""
        buffer = io.BytesIO()

        def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
            if not info.issym():
                info.mode = 0o700 if info.isdir() else 0o600
            return info

        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for source, target in entries:
                tar.add(str(source), arcname=target.lstrip("/"), filter=owned)
        self._call(
            "copy files into the container",
            "PUT",
            f"/containers/{container_id}/archive",
            params={"path": "/"},
            body=buffer.getvalue(),
            content_type="application/x-tar",
        )

    def put_owned(
        self,
        container_id: str,
        files: list[tuple[str, bytes]],
        uid: int,
        gid: int,
        below: str,
    ) -> None:
        """Put files (absolute target, content) into a container, owned by
        uid:gid and private to it (0600), with every directory between `below`
        and each file made theirs too (0700), as a new home's files are."""
        buffer = io.BytesIO()
        now = time.time()
        dirs: dict[str, None] = {}
        for target, _content in files:
            parent = posixpath.dirname(target)
            while parent.startswith(below.rstrip("/") + "/"):
                dirs[parent] = None
                parent = posixpath.dirname(parent)
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path in sorted(dirs, key=len):
                info = tarfile.TarInfo(path.lstrip("/"))
                info.type, info.mode, info.mtime, info.uid, info.gid = (
                    tarfile.DIRTYPE, 0o700, now, uid, gid,
                )  # fmt: skip
                tar.addfile(info)
            for target, content in files:
                info = tarfile.TarInfo(target.lstrip("/"))
                info.size, info.mode, info.mtime, info.uid, info.gid = (
                    len(content), 0o600, now, uid, gid,
                )  # fmt: skip
                tar.addfile(info, io.BytesIO(content))
        self._call(
            "copy files into the container",
            "PUT",
            f"/containers/{container_id}/archive",
            params={"path": "/"},
            body=buffer.getvalue(),
            content_type="application/x-tar",
        )

    def engine_version(self) -> str:
        version = self._json("read the engine version", "GET", "/version")
        return str((version or {}).get("Version", "?"))

    def info(self) -> dict[str, Any]:
        """Docker's /info: NCPU, MemTotal, ContainersRunning, ..."""
        return dict(self._json("read the engine's info", "GET", "/info") or {})


# Where a container's memory cgroup is, by cgroup version and driver.
_CGROUP_DIRS = (
    ("/sys/fs/cgroup/memory/docker/{id}", "memory.usage_in_bytes"),  # v1, cgroupfs
    ("/sys/fs/cgroup/memory/system.slice/docker-{id}.scope", "memory.usage_in_bytes"),
    ("/sys/fs/cgroup/system.slice/docker-{id}.scope", "memory.current"),  # v2, systemd
    ("/sys/fs/cgroup/docker/{id}", "memory.current"),  # v2, cgroupfs
)


def _cgroup_memory_use(container_id: str) -> int | None:
    for folder, usage_file in _CGROUP_DIRS:
        base = Path(folder.format(id=container_id))
        try:
            usage = (base / usage_file).read_text()
            stat = (base / "memory.stat").read_text()
        except OSError:
            continue
        return wire.cgroup_memory_use(usage, stat)
    return None


def exec_argv(
    container: str, workdir: str, command: list[str], tty: bool, docker_host: str | None = None
) -> list[str]:
    """The docker CLI call that runs `command` as the agent user in `workdir`
    (on `docker_host` if given, see Engine.cli_host).

    An interactive agent needs a real terminal, which docker-py's exec API does
    not give; the docker CLI does, so prov hands over to it (guide method 1).
    """
    return [
        "docker",
        *(["-H", docker_host] if docker_host else []),
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
    by_port = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    # sshd's own port, or the port a gate relays to it
    ports = [*(by_port.get(SSHD_PORT) or []), *(by_port.get(RELAY_PORT) or [])]
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
        addresses=tuple(
            str(net.get("IPAddress"))
            for net in ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).values()
            if net.get("IPAddress")
        ),
        networks=tuple(((attrs.get("NetworkSettings") or {}).get("Networks") or {}).keys()),
    )
