"""Where an engine runs, asked by name (engine/site.py): this machine's engine
mounts local paths and probes its own ports; one over SSH gets files in
volumes, the project by rsync, no logins by default, and goes through its host."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.engine.site import Site, over_ssh
from provisioner.engine.targets import EngineTarget


class FakeLink:
    """The parts of an SshLink a Site asks, answering as an engine host would."""

    class dest:  # mirrors SshLink.dest
        @staticmethod
        def display() -> str:
            return "ops@builder"

    def proxy_command(self) -> str:
        return "ssh -W %h:%p builder"

    def banner(self, host: str, port: int) -> str:
        return f"SSH-2.0-there {host}:{port}"

    def reach(self, host: str, port: int) -> str | None:
        return None

    def run(self, command: str) -> tuple[int, str]:
        return 0, f"ran {command}"

    def jump_log_size(self) -> int:
        return 7

    def jump_said(self, since: int) -> str:
        return f"since {since}"


def test_this_machines_engine() -> None:
    site = Site(EngineTarget("unix:///var/run/docker.sock", "the local socket"))
    assert site.mounts_local_paths and site.builds_here and site.ports_here
    assert site.pins_published_port and not site.files_in_volumes
    assert site.default_credentials == "tokens"
    assert site.sync_mode("none") == ""  # mounted: nothing to sync
    assert (site.host_name, site.where(), site.proxy_command()) == ("", "", None)
    assert site.banner is None and site.reach is None
    assert (site.jump_mark(), site.jump_said(0)) == (0, "")
    with pytest.raises(ValueError):
        site.run("true")


def test_an_engine_over_ssh() -> None:
    link: Any = FakeLink()
    site = Site(EngineTarget("ssh://ops@builder", "--engine builder"), link)
    assert not (site.mounts_local_paths or site.builds_here or site.ports_here)
    assert site.files_in_volumes and not site.pins_published_port
    assert site.default_credentials == "none"
    assert (site.sync_mode(None), site.sync_mode("none")) == ("rsync", "none")
    assert site.host_name == "ssh://ops@builder"
    assert site.where() == " on the engine host ssh://ops@builder"
    assert site.display() == "ops@builder"
    assert site.proxy_command() == "ssh -W %h:%p builder"
    assert site.banner is not None and site.banner("10.0.0.2", 22).startswith("SSH-2.0")
    assert site.reach is not None and site.reach("10.0.0.2", 22) is None
    assert site.run("stat x") == (0, "ran stat x")
    assert site.jump_said(site.jump_mark()) == "since 7"


def test_over_ssh() -> None:
    assert over_ssh("ssh://host") and not over_ssh("unix:///run/docker.sock")
    assert not over_ssh("tcp://10.0.0.1:2375")
