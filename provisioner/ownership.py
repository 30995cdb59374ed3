"""Whose container is this? prov touches only containers it made, and only
those of the PROV_HOME it runs with: another home's keys and alias live
elsewhere, so changing its containers from here would break it."""

from __future__ import annotations

from provisioner import keys
from provisioner.config import ProvPaths
from provisioner.engine import ContainerInfo
from provisioner.errors import ConflictError
from provisioner.plan import LABEL_HOME, LABEL_HOST_KEY, LABEL_NAME, home_id


def is_ours(labels: dict[str, str], paths: ProvPaths) -> bool:
    """Whether this PROV_HOME made the container with these labels. One made by
    a prov from before homes were recorded counts as ours when it serves the
    host key kept here (so an upgrade can `up --recreate` it)."""
    if labels.get("prov.managed") != "true":
        return False
    if LABEL_HOME in labels:
        return labels[LABEL_HOME] == home_id(paths)
    name = labels.get(LABEL_NAME, "")
    if not name or "/" in name:
        return False
    host_key = keys.read_public(paths.env_dir(name), keys.HOST_KEY_NAME)
    return host_key is not None and host_key.fingerprint == labels.get(LABEL_HOST_KEY)


def require_ours(info: ContainerInfo, paths: ProvPaths) -> None:
    """Refuse a container prov did not make, or that another PROV_HOME made."""
    if not info.managed:
        raise ConflictError(
            f"A container named {info.name} already exists and was not made by prov",
            f"It has status {info.status!r} and no prov labels; prov never touches "
            "containers it did not create.",
            f"choose another environment name, or remove it yourself (`docker rm -f {info.name}`).",
        )
    if not is_ours(info.labels, paths):
        raise ConflictError(
            f"Container {info.name} belongs to another prov home",
            f"Another PROV_HOME (or an older prov) made it, not this one ({paths.home}); "
            "its keys and alias live there.",
            "run prov with that PROV_HOME to manage it (`prov ls --all` lists it), choose "
            f"another name here, or remove it yourself (`docker rm -f {info.name}`) if stale.",
        )
