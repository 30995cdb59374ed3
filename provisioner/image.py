"""Build or reuse the environment image.

The tag is a content hash of docker/, the build arguments and the base
image's ID: unchanged inputs never rebuild, and any change (a Dockerfile edit,
a new base) gets a new tag.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import baseimage, host
from provisioner.config import DEFAULT_BASE_IMAGE
from provisioner.devcontainer import DEVCONTAINER_REPO, METADATA_LABEL, Build
from provisioner.engine import Engine
from provisioner.errors import BuildError

IMAGE_REPO = "prov-env"
IMAGE_LABEL = "prov.image"  # on every image prov builds, stages included
BASE_LABEL = "prov.base"  # on each of prov's layers: the image they went on


def docker_context(layer: str) -> Path:
    """docker/LAYER as shipped in the wheel, else beside the package (source tree)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_docker" / layer, here.parent / "docker" / layer):
        if (candidate / "Dockerfile").is_file():
            return candidate
    raise BuildError(
        f"prov's image assets (docker/{layer}/Dockerfile) are missing",
        f"Looked in {here / '_docker' / layer} and {here.parent / 'docker' / layer}.",
        "reinstall prov.",
    )


# Bumped whenever the way prov builds or labels a layer changes, so images
# made the old way are not mistaken for current ones.
LAYER_FORMAT = "2"


def context_files(context: Path) -> list[Path]:
    """The files Docker gets as the build context: all of them, less what
    .dockerignore excludes (read the way docker-py reads it when it builds)."""
    files = [p for p in context.rglob("*") if p.is_file()]
    ignore = context / ".dockerignore"
    if not ignore.is_file():
        return sorted(files)
    from docker.utils.build import exclude_paths

    patterns = [
        line.strip()
        for line in ignore.read_text(errors="replace").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    kept = exclude_paths(str(context), patterns)
    return sorted(p for p in files if p.relative_to(context).as_posix() in kept)


def context_hash(
    context: Path, buildargs: dict[str, str], base_id: str, labels: dict[str, str] | None = None
) -> str:
    digest = hashlib.sha256(f"prov-layer-{LAYER_FORMAT}\0".encode())
    for path in context_files(context):
        rel = path.relative_to(context).as_posix()
        executable = path.stat().st_mode & 0o111 != 0
        digest.update(f"{rel}\0{int(executable)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(json.dumps(buildargs, sort_keys=True).encode())
    digest.update(base_id.encode())
    digest.update(json.dumps(labels or {}, sort_keys=True).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    content_hash: str
    base: str
    built_now: bool
    agent_versions: dict[str, str] = field(default_factory=dict)
    # The image's devcontainer.metadata label (what a devcontainer image and its
    # features ask for), "" when it has none.
    metadata: str = ""


Progress = Callable[[str], None]


def _pulled(engine: Engine, ref: str, line: Progress) -> tuple[str | None, str]:
    """(image ID, "") after pulling `ref`; (None, what the registry said) when it
    cannot be pulled."""
    refusal = engine.pull(ref, line)
    if refusal is not None:
        return None, refusal
    image_id = engine.image_id(ref)
    return (image_id, "") if image_id else (None, "the engine reported no image after the pull")


def _present_or_pulled(engine: Engine, ref: str, line: Progress) -> tuple[str | None, str]:
    """The image ID of `ref`, pulling it first if it is not here (see _pulled)."""
    image_id = engine.image_id(ref)
    return (image_id, "") if image_id else _pulled(engine, ref, line)


def ensure_base(engine: Engine, requested: str, note: Progress, line: Progress) -> tuple[str, str]:
    """Return (ref, image id) of a usable base image, pulling or bootstrapping it.

    Once prov has bootstrapped a local base (no registry reachable), the default
    base resolves to it without asking a registry again: an offline machine
    would wait on the pull every time, and a base that changed the day a pull
    worked would make every environment's image differ from its container's."""
    image_id = engine.image_id(requested)
    if image_id:
        return requested, image_id
    try:
        os_release = Path("/etc/os-release").read_text()
    except OSError:
        os_release = ""
    distro = baseimage.host_distro(os_release) or baseimage.Distro("debian", "bookworm")
    if requested == DEFAULT_BASE_IMAGE:
        local_id = engine.image_id(distro.tag)
        if local_id:
            line(f"{requested} is not here; using the local base {distro.tag}")
            return distro.tag, local_id
    image_id, refusal = _pulled(engine, requested, line)
    if image_id:
        return requested, image_id
    if requested != DEFAULT_BASE_IMAGE:
        raise BuildError(
            f"Base image {requested} is not present and cannot be pulled",
            f"The pull said: {refusal}",
            f"load it first (`docker load -i FILE`), or leave --base-image out to use "
            f"{DEFAULT_BASE_IMAGE} (prov builds a local Debian/Ubuntu base when that cannot "
            "be pulled).",
        )
    mirror = baseimage.host_mirror(distro.codename)
    if mirror is None:
        raise BuildError(
            f"Cannot make a local base image: no apt mirror for {distro.codename} is configured",
            f"{requested} is not present and cannot be pulled.",
            "set PROV_APT_MIRROR to a Debian/Ubuntu mirror URL, or load a base image with "
            "`docker load` and pass --base-image.",
        )
    line(f"pulling {requested} failed: {refusal}")
    note(
        f"{requested} is not present and cannot be pulled: building the local base "
        f"{distro.tag} with debootstrap from {mirror} (once; about a minute)"
    )
    started = time.monotonic()
    baseimage.bootstrap(
        distro, mirror, lambda tar: engine.import_rootfs(tar, distro.tag), line, note
    )
    note(f"made the local base {distro.tag} in {time.monotonic() - started:.1f} s")
    built = engine.image_id(distro.tag)
    if not built:
        raise BuildError(
            f"Importing the local base {distro.tag} produced no image",
            "",
            "see the Docker daemon's log.",
        )
    return distro.tag, built


@dataclass(frozen=True)
class ImageRequest:
    """Everything that goes into the environment's image, layer by layer:
    base (or the user's --from image) -> sshd -> agents + CAs -> project Dockerfile."""

    base_image: str
    from_image: str | None = None
    agents: tuple[str, ...] = ()
    versions: tuple[tuple[str, str], ...] = ()
    ca_files: tuple[Path, ...] = ()
    npm_registry: str = ""
    project_dockerfile: Path | None = None
    devcontainer: DevcontainerImage | None = None


@dataclass(frozen=True)
class DevcontainerImage:
    """The image a devcontainer.json describes: its `image`, or its `build`
    (a Dockerfile in the project), with `features` built by the devcontainers CLI."""

    config: Path
    digest: str  # the file's sha256: the image's hash covers it
    project: Path
    image: str | None = None
    build: Build | None = None
    features: tuple[str, ...] = ()


def _layer(
    engine: Engine,
    what: str,
    context: Path,
    buildargs: dict[str, str],
    parent_id: str,
    base_ref: str,
    note: Progress,
    line: Progress,
    target: str | None = None,
    adds_something: Callable[[], bool] | None = None,
    before_build: Callable[[], None] | None = None,
) -> tuple[str, str, bool]:
    """Build `context` (up to the stage `target`) unless an image with the same
    content hash exists; (tag, hash, built). `adds_something`: asked before a
    build; when it says no, the parent itself gets the layer's tag (no layer
    is made, and the next run finds the tag at once)."""
    labels = {BASE_LABEL: base_ref, **({"prov.target": target} if target else {})}
    content_hash = context_hash(context, buildargs, parent_id, labels)
    tag = f"{IMAGE_REPO}:{content_hash[:16]}"
    if engine.image_id(tag):
        return tag, content_hash, False
    if before_build is not None:  # e.g. a check of the parent, once per new layer
        before_build()
    if adds_something is not None and not adds_something():
        line(f"the {what} layer would add nothing; tagging its parent as {tag}")
        engine.tag_image(parent_id, tag)
        return tag, content_hash, False
    note(f"building the {what} layer ({tag})")
    started = time.monotonic()
    # The builder's lines go to the status line (and to the log with -v); the
    # phase and its duration are printed.
    engine.build(context, tag, buildargs, {"prov.image-hash": content_hash, **labels}, line, target)
    note(f"built the {what} layer in {time.monotonic() - started:.1f} s")
    return tag, content_hash, True


def _agents_context(tmp: Path, ca_files: tuple[Path, ...], ca_cache: Path | None) -> Path:
    """docker/agents plus the CA files to trust, in a private temp copy."""
    context = tmp / "agents"
    shutil.copytree(docker_context("agents"), context)
    for index, ca in enumerate(ca_files):
        # As PEM named *.crt, the form update-ca-certificates installs.
        (context / "ca" / f"{index:02d}-{ca.stem}.crt").write_bytes(host.ca_pem(ca, ca_cache))
    return context


def _base(
    engine: Engine, request: ImageRequest, note: Progress, line: Progress
) -> tuple[str, str, Callable[[], None] | None]:
    """(ref, image id) of what prov's layers go on, and the check of a user's
    base to run when the first layer on it is built (reading a file out of an
    image costs a container: ~0.3 s)."""
    check: Callable[[], None] | None = None
    if request.devcontainer is not None and not request.from_image:
        base_ref, base_id = _devcontainer_base(engine, request.devcontainer, note, line)
        source = str(request.devcontainer.config)
        check = functools.partial(_require_debian_like, engine, base_ref, source)
    elif request.from_image:
        base_ref = request.from_image
        found_id, refusal = _present_or_pulled(engine, base_ref, line)
        if found_id is None:
            raise BuildError(
                f"--from image {base_ref} is not present and cannot be pulled",
                f"prov adds its SSH and agent layers on top of an existing image. "
                f"The pull said: {refusal}",
                "build or load it first (`docker images` should list it); for a private "
                "registry, `docker login` to it first (prov pulls with those credentials).",
            )
        base_id = found_id
        check = functools.partial(_require_debian_like, engine, base_ref)
    else:
        base_ref, base_id = ensure_base(engine, request.base_image, note, line)
    return base_ref, base_id, check


def _agents_layer(
    engine: Engine,
    request: ImageRequest,
    parent_tag: str,
    base_ref: str,
    note: Progress,
    line: Progress,
    ca_cache: Path | None,
) -> tuple[str, str, bool]:
    """The agents' layer on `parent_tag`: Node and the CLIs, plus the CAs to
    trust (without agents only the CAs, and nothing when the parent trusts
    them all already)."""
    versions = dict(request.versions)
    with tempfile.TemporaryDirectory(prefix="prov-build-") as tmp:
        context = _agents_context(Path(tmp), request.ca_files, ca_cache)
        buildargs = {
            "BASE_IMAGE": parent_tag,
            "AGENTS": ",".join(request.agents),
            "NPM_REGISTRY": request.npm_registry,
            **{
                arg: versions[agent] if agent in request.agents else ""
                for agent, arg in AGENT_BUILD_ARGS.items()
            },
        }
        what = "agents (" + (", ".join(request.agents) or "CA certificates only") + ")"
        parent = engine.image_id(parent_tag) or ""

        def adds_something() -> bool:
            """Without agents the layer only adds CAs: none if the image has them all."""
            bundle = engine.read_image_file(parent_tag, (CA_BUNDLE,))
            return not _trusts_all(bundle, _context_cas(context))

        tag, content_hash, built = _layer(
            engine,
            what,
            context,
            buildargs,
            parent,
            base_ref,
            note,
            line,
            target=None if request.agents else "prov-ca",
            adds_something=None if request.agents else adds_something,
        )
        return tag, content_hash, built


def ensure_image(
    engine: Engine,
    request: ImageRequest,
    note: Progress,
    line: Progress,
    ca_cache: Path | None = None,
) -> BuiltImage:
    base_ref, base_id, check = _base(engine, request, note, line)
    built_any = False
    tag, content_hash, built = _layer(
        engine,
        "SSH",
        docker_context("sshd"),
        {"BASE_IMAGE": base_ref},
        base_id,
        base_ref,
        note,
        line,
        before_build=check,
    )
    built_any |= built
    if request.agents or request.ca_files:
        tag, content_hash, built = _agents_layer(
            engine, request, tag, base_ref, note, line, ca_cache
        )
        built_any |= built
    if request.project_dockerfile is not None:
        dockerfile = request.project_dockerfile
        parent = engine.image_id(tag) or ""
        tag, content_hash, built = _layer(
            engine,
            f"project ({dockerfile})",
            dockerfile.parent,
            {"PROV_IMAGE": tag},
            parent,
            base_ref,
            note,
            line,
        )
        built_any |= built
    # Last: what the layers above made writable for others than root (the
    # entrypoint takes from it what the agent's UID and GID could write).
    tag, content_hash, built = _layer(
        engine,
        "layer audit",
        docker_context("audit"),
        {"BASE_IMAGE": tag},
        engine.image_id(tag) or "",
        base_ref,
        note,
        line,
    )
    built_any |= built
    labels = engine.image_labels(tag)
    installed = {
        a: labels[f"prov.agent.{a}"] for a in AGENT_BUILD_ARGS if f"prov.agent.{a}" in labels
    }
    return BuiltImage(
        tag, content_hash, base_ref, built_any, installed, labels.get(METADATA_LABEL, "")
    )


def _devcontainer_hash(dci: DevcontainerImage, parent: str) -> str:
    """What the devcontainer image is made of: the file, the folder it is in
    (local features, a Dockerfile beside it), the build context and args."""
    digest = hashlib.sha256(f"prov-devcontainer-{LAYER_FORMAT}\0{dci.digest}\0".encode())
    folders = {dci.config.parent} if dci.config.parent != dci.project else set()
    if dci.build is not None:
        folders.add(dci.build.context)
        digest.update(hashlib.sha256(dci.build.dockerfile.read_bytes()).digest())
    for folder in sorted(folders):
        digest.update(context_hash(folder, {}, "").encode())
    digest.update(f"{parent}\0{dci.features}".encode())
    return digest.hexdigest()


def _devcontainer_base(
    engine: Engine, dci: DevcontainerImage, note: Progress, line: Progress
) -> tuple[str, str]:
    """(ref, image id) of the image the devcontainer.json describes, built once
    per content: with features by the devcontainers CLI, a `build` by prov,
    an `image` pulled unless present."""
    from provisioner.engine import dccli

    if dci.image is not None and not dci.features:
        image_id, refusal = _present_or_pulled(engine, dci.image, line)
        if image_id is None:
            raise BuildError(
                f"The image {dci.image} that {dci.config} names is not present and cannot "
                "be pulled",
                f"The pull said: {refusal}",
                "load it first (`docker load -i FILE`), or `docker login` to its registry; "
                "or pass --no-devcontainer.",
            )
        return dci.image, image_id
    parent = ""
    if dci.image is not None:
        parent = engine.image_id(dci.image) or dci.image
    tag = f"{DEVCONTAINER_REPO}:{_devcontainer_hash(dci, parent)[:16]}"
    found = engine.image_id(tag)
    if found:
        return tag, found
    started = time.monotonic()
    if dci.features:
        program = dccli.find()
        if program is None:
            raise BuildError(
                f"{dci.config} asks for features, which need the devcontainers CLI",
                "Features: " + ", ".join(dci.features) + ". They are OCI artifacts (or local "
                "folders) that the CLI builds into the image; prov does not reimplement them.",
                f"install it ({dccli.INSTALL_HINT}; Node.js 18 or later) and run again, or "
                "set PROV_DEVCONTAINER_CLI to its path, or pass --no-devcontainer.",
            )
        note(f"building the devcontainer image with its features ({tag}) by {program}")
        dccli.build(program, dci.project, dci.config, tag, engine.cli_host, line)
    else:
        assert dci.build is not None  # noqa: S101 - an image without features returned above
        note(f"building the devcontainer image ({tag}) from {dci.build.dockerfile}")
        engine.build(
            dci.build.context,
            tag,
            dict(dci.build.args),
            {IMAGE_LABEL: "devcontainer", "prov.devcontainer": str(dci.config)},
            line,
            dci.build.target,
            dockerfile=dci.build.dockerfile,
        )
    note(f"built the devcontainer image in {time.monotonic() - started:.1f} s")
    built = engine.image_id(tag)
    if not built:
        raise BuildError(f"Building {tag} produced no image", "", "read the build log above.")
    return tag, built


CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


def _pem_bodies(data: bytes) -> set[bytes]:
    """The certificates in PEM text, as their base64 with no whitespace."""
    return {b"".join(body.split()) for body in _PEM_RE.findall(data)}


def _context_cas(context: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((context / "ca").glob("*.crt")))


def _trusts_all(bundle: str, cas: bytes) -> bool:
    """Whether the trust store `bundle` already holds every CA in `cas`."""
    return _pem_bodies(cas) <= _pem_bodies(bundle.encode())


AGENT_BUILD_ARGS = {
    "claude": "CLAUDE_CODE_VERSION",
    "codex": "CODEX_VERSION",
    "gemini": "GEMINI_CLI_VERSION",
}

SUPPORTED_BASES = ("debian", "ubuntu")


def _require_debian_like(engine: Engine, image: str, source: str = "--from") -> None:
    fields = baseimage.parse_os_release(engine.read_image_file(image, OS_RELEASE_PATHS))
    family = {fields.get("ID", ""), *fields.get("ID_LIKE", "").split()}
    if not family & set(SUPPORTED_BASES):
        seen = fields.get("PRETTY_NAME") or fields.get("ID") or "no /etc/os-release"
        raise BuildError(
            f"The image of {source}, {image}, is not Debian or Ubuntu based",
            f"It says: {seen}. prov's layers use apt and Debian's OpenSSH packaging.",
            "use an image built FROM debian or ubuntu (e.g. python:3.11, node:22), or add "
            "your project's packages with .prov/Dockerfile on top of prov's image instead.",
        )


OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")


def ensure_egress_image(
    engine: Engine, base_image: str, note: Progress, line: Progress
) -> tuple[str, bool]:
    """The egress proxy's image (squid and socat on prov's base), built once; (tag,
    whether it was built now)."""
    base_ref, base_id = ensure_base(engine, base_image, note, line)
    tag, _hash, built = _layer(
        engine,
        "egress proxy",
        docker_context("egress"),
        {"BASE_IMAGE": base_ref},
        base_id,
        base_ref,
        note,
        line,
    )
    return tag, built
