"""The engine layer: the only part of prov that talks to Docker.

- targets: which engine (resolution, named engines), in pure code;
- transport: how requests reach it (a Unix socket, or docker-py);
- sshlink: an engine on another machine, over the user's own OpenSSH;
- api: the Engine prov calls (images, containers, networks, volumes);
- transfer: images copied from this machine's engine to another.

A new backend (Podman, a Kubernetes node) adds a target scheme and a
transport here; nothing outside this package knows where the engine is.
"""

from provisioner.engine.api import ContainerInfo, Engine, exec_argv

__all__ = ["ContainerInfo", "Engine", "exec_argv"]
