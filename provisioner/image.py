"""Build or reuse the environment image.

The tag is a content hash of docker/, the build arguments and the base
image's ID: unchanged inputs never rebuild, and any change (a Dockerfile edit,
a new base) gets a new tag.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provisioner import baseimage
from provisioner.config import DEFAULT_BASE_IMAGE
from provisioner.engine import Engine
from provisioner.errors import BuildError

IMAGE_REPO = "prov-env"


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


def context_hash(context: Path, buildargs: dict[str, str], base_id: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        rel = path.relative_to(context).as_posix()
        executable = path.stat().st_mode & 0o111 != 0
        digest.update(f"{rel}\0{int(executable)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(json.dumps(buildargs, sort_keys=True).encode())
    digest.update(base_id.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    content_hash: str
    base: str
    built_now: bool


Progress = Callable[[str], None]


def ensure_base(engine: Engine, requested: str, note: Progress, line: Progress) -> tuple[str, str]:
    """Return (ref, image id) of a usable base image, pulling or bootstrapping it."""
    image_id = engine.image_id(requested)
    if image_id:
        return requested, image_id
    if engine.try_pull(requested):
        pulled = engine.image_id(requested)
        if pulled:
            return requested, pulled
    if requested != DEFAULT_BASE_IMAGE:
        raise BuildError(
            f"Base image {requested} is not present and cannot be pulled",
            "No registry that has it is reachable from the Docker engine.",
            f"load it first (`docker load -i FILE`), or leave --base-image out to use "
            f"{DEFAULT_BASE_IMAGE} (prov builds a local Debian/Ubuntu base when that cannot "
            "be pulled).",
        )
    try:
        os_release = Path("/etc/os-release").read_text()
    except OSError:
        os_release = ""
    distro = baseimage.host_distro(os_release) or baseimage.Distro("debian", "bookworm")
    local_id = engine.image_id(distro.tag)
    if local_id:
        line(f"{requested} cannot be pulled here; using the local base {distro.tag}")
        return distro.tag, local_id
    mirror = baseimage.host_mirror(distro.codename)
    if mirror is None:
        raise BuildError(
            f"Cannot make a local base image: no apt mirror for {distro.codename} is configured",
            f"{requested} is not present and cannot be pulled.",
            "set PROV_APT_MIRROR to a Debian/Ubuntu mirror URL, or load a base image with "
            "`docker load` and pass --base-image.",
        )
    note(
        f"{requested} is not present and cannot be pulled: building the local base "
        f"{distro.tag} with debootstrap from {mirror} (once; about a minute)"
    )
    baseimage.bootstrap(
        distro, mirror, lambda tar: engine.import_rootfs(tar, distro.tag), line, note
    )
    built = engine.image_id(distro.tag)
    if not built:
        raise BuildError(
            f"Importing the local base {distro.tag} produced no image",
            "",
            "see the Docker daemon's log.",
        )
    return distro.tag, built


def ensure_image(engine: Engine, base_image: str, note: Progress, line: Progress) -> BuiltImage:
    base_ref, base_id = ensure_base(engine, base_image, note, line)
    context = docker_context("sshd")
    buildargs = {"BASE_IMAGE": base_ref}
    content_hash = context_hash(context, buildargs, base_id)
    tag = f"{IMAGE_REPO}:{content_hash[:16]}"
    if engine.image_id(tag):
        return BuiltImage(tag, content_hash, base_ref, built_now=False)
    note(f"building image {tag} from {base_ref}")
    # "Step N/M" lines are the build's milestones; the rest is detail.
    engine.build(
        context,
        tag,
        buildargs,
        {"prov.image-hash": content_hash, "prov.base": base_ref},
        lambda text: (note if text.startswith("Step ") else line)(text),
    )
    return BuiltImage(tag, content_hash, base_ref, built_now=True)
