"""Whose container is this? prov touches only containers it made, and only
those of the PROV_HOME it runs with: another home's keys and alias live
elsewhere, so changing its containers from here would break it."""

from __future__ import annotations

from provisioner.config import ProvPaths
from provisioner.engine import ContainerInfo
from provisioner.errors import ConflictError
from provisioner.plan import home_id


def require_ours(info: ContainerInfo, paths: ProvPaths) -> None:
    """Refuse a container prov did not make, or that another PROV_HOME made."""
    if not info.managed:
        raise ConflictError(
            f"A container named {info.name} already exists and was not made by prov",
            f"It has status {info.status!r} and no prov labels; prov never touches "
            "containers it did not create.",
            f"choose another environment name, or remove it yourself (`docker rm -f {info.name}`).",
        )
    if not info.owned_by(home_id(paths)):
        raise ConflictError(
            f"Container {info.name} belongs to another prov home",
            f"Another PROV_HOME (or an older prov) made it, not this one ({paths.home}); "
            "its keys and alias live there.",
            "run prov with that PROV_HOME to manage it (`prov ls --all` lists it), choose "
            f"another name here, or remove it yourself (`docker rm -f {info.name}`) if stale.",
        )
