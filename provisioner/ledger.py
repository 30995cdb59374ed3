"""What one `up` made for an environment, and its undo.

Filled in as each thing is created (under prov's lock, while it places the
environment), so that a failure, or Ctrl-C, removes exactly what this run
made and nothing that was there before it: nothing half-made is left.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner import homedisk, host, prepare, protect, slots, sshconf
from provisioner.config import ProvPaths
from provisioner.engine import Engine
from provisioner.fsutil import file_lock
from provisioner.plan import (
    container_name,
    egress_volume_name,
    home_volume_name,
    keys_volume_name,
    network_name,
    project_volume_name,
)


@dataclass
class Made:
    """The ledger of what this run created for one environment, filled in as
    each thing is created, so that a failure undoes exactly that."""

    prepared: prepare.Prepared
    action: str | None = None  # set once _converge has decided
    container_id: str | None = None  # the environment's container, new or existing
    proxy_id: str | None = None  # a proxy this run created (or a slot it claimed)
    slot: str = ""  # a slot claimed (proxy_id is its proxy, started already; its network)
    network_created: bool = False


def abandon(engine: Engine, made: Made, paths: ProvPaths) -> None:
    """Nothing half-made: a container this run created goes away again (also one
    Docker made while we were interrupted, before we had its ID), and so do the
    alias, the keys and a --create-dir project dir of an environment that never
    came up."""
    prepared = made.prepared
    name = prepared.name
    if made.proxy_id is not None and not made.slot:
        engine.remove(made.proxy_id)
    container = created_here(engine, container_name(name), made.action, made.container_id)
    if container is not None:
        engine.remove(container)
    if made.slot:  # a claimed slot, with its network (after the containers on it)
        slots.discard(engine, paths, made.slot, container=made.proxy_id or "")
    if made.network_created:  # after its containers: Docker refuses it while in use
        engine.remove_network(network_name(name))
    if (container is not None and prepared.record is None) or (
        prepared.home.made and prepared.existing is None
    ):
        # The home volume came with the container of an environment that
        # never came up (or this run made it, bounded): nothing of the
        # agent's is in it yet.
        engine.remove_volume(home_volume_name(name))
    if prepared.home.made and prepared.existing is None:
        homedisk.release(engine, name)
    if prepared.record is None and engine.site.files_in_volumes:
        engine.remove_volume(keys_volume_name(name))
        engine.remove_volume(egress_volume_name(name))
        if container is not None:
            engine.remove_volume(project_volume_name(name))
    if prepared.record is None and (container is not None or prepared.fresh):
        alias = sshconf.alias_for(name)
        with file_lock(paths.lock):
            sshconf.delete_entry(paths.ssh_config, alias)
            sshconf.unpin_host_key(paths.known_hosts, alias)
    if prepared.fresh:  # an environment this run meant to make: its keys and dir go too
        if prepared.guards:
            protect.remove_placeholders(prepared.project.path, paths.placeholders_ledger(name))
        if prepared.granted:
            prepare.revoke_grant(paths, name, prepared.project)
        prepare.forget_keys(paths, name)
        host.remove_created(prepared.project)


def created_here(
    engine: Engine, name: str, action: str | None, container_id: str | None
) -> str | None:
    """The ID of a container this `up` created and must remove on failure, if any."""
    if container_id is not None:
        return container_id if action in ("created", "recreated") else None
    if action is not None:
        return None
    # Interrupted before _converge returned: a never-started container of ours
    # with this name can only be the one it was creating.
    made = engine.find(name)
    if made is not None and made.managed and made.status == "created":
        return made.id
    return None
