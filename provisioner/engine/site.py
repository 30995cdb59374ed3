"""Where an engine runs, as the rest of prov needs to know it.

An engine is on this machine or on another one reached over the user's SSH
(sshlink). What differs is asked here, by name, and nowhere else: whether
this machine's paths can be mounted, how files and the project get there,
the default for agent logins, how to probe a port there, what the alias goes
through. `Engine.site` is this value; nothing outside the engine package
tests where an engine is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from provisioner.engine.targets import EngineTarget

if TYPE_CHECKING:
    from provisioner.engine.sshlink import SshLink

Probe = Callable[[str, int], str]
Reach = Callable[[str, int], "str | None"]  # None: connected, else what was said


@dataclass(frozen=True)
class Site:
    target: EngineTarget
    link: SshLink | None = None

    # -- this machine's files ------------------------------------------------

    @property
    def mounts_local_paths(self) -> bool:
        """Bind mounts of this machine's paths work there (the project, the
        agents' logins, --mount, the protected paths, branch mode's .git)."""
        return self.link is None

    @property
    def files_in_volumes(self) -> bool:
        """The keys and the proxy's configuration go there in volumes (never as
        files of this machine), and the home volume must be seen to exist."""
        return self.link is not None

    @property
    def builds_here(self) -> bool:
        """Images are built on this engine (else here, and copied there)."""
        return self.link is None

    @property
    def default_credentials(self) -> str:
        """The agents' logins by default: shared here, none on another machine."""
        return "tokens" if self.link is None else "none"

    def sync_mode(self, asked: str | None) -> str:
        """How the project gets there: "" (mounted, here), else rsync or none."""
        return "" if self.link is None else (asked or "rsync")

    @property
    def ports_here(self) -> bool:
        """Its published ports are this machine's (a probe connects from here)."""
        return self.link is None

    @property
    def pins_published_port(self) -> bool:
        """A published port is this machine's, so ~/.ssh/known_hosts may pin it."""
        return self.link is None

    # -- reaching it -----------------------------------------------------------

    def describe(self) -> str:
        return self.target.describe()

    @property
    def host_name(self) -> str:
        """ "" here; the engine host where its ports are published, elsewhere."""
        return "" if self.link is None else self.target.host

    def where(self) -> str:
        """ " on the engine host HOST" for messages, "" here."""
        return f" on the engine host {self.target.host}" if self.link is not None else ""

    def display(self) -> str:
        """The engine host as ssh names it (user@host)."""
        return self.link.dest.display() if self.link is not None else "this machine"

    def proxy_command(self) -> str | None:
        """The alias's ProxyCommand to the engine host; None here (direct)."""
        return self.link.proxy_command() if self.link is not None else None

    @property
    def banner(self) -> Probe | None:
        """How to read an SSH banner at HOST:PORT there; None: connect from here."""
        return self.link.banner if self.link is not None else None

    @property
    def reach(self) -> Reach | None:
        """How to open a TCP connection there; None: connect from here."""
        return self.link.reach if self.link is not None else None

    def run(self, command: str) -> tuple[int, str]:
        """A shell command on the engine host (another machine's only)."""
        if self.link is None:
            raise ValueError("run() is for an engine on another machine")
        return self.link.run(command)

    def jump_mark(self) -> int:
        """Where the jump's log ends now (see jump_said); 0 here."""
        return self.link.jump_log_size() if self.link is not None else 0

    def jump_said(self, since: int) -> str:
        """What the SSH jump to the engine host logged since `since` ("" here)."""
        return self.link.jump_said(since) if self.link is not None else ""


def over_ssh(host: str) -> bool:
    """Whether an engine URL (a record's, a flag's) names one over SSH."""
    return host.startswith("ssh://")
