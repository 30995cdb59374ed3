"""Method 4 of the guide, made real: run an agent in the container whose project
contains the current directory, or locally when none does.

NTM ignores `[agents]` in a project's .ntm/config.toml (so a cloned repository
cannot make NTM run commands), which is why the guide's per-project override
cannot work as written. Instead one global template calls `prov route`, and
the choice happens here, per pane, from the pane's working directory.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from provisioner.config import ProvPaths
from provisioner.engine import Engine, targets
from provisioner.plan import LABEL_HOME, LABEL_PROJECT, LABEL_ROLE, home_id


def choose(cwd: str, projects: dict[str, str]) -> str | None:
    """The container (key of `projects`) whose project dir is the deepest one
    containing `cwd`, or None."""
    here = PurePosixPath(cwd)
    best: tuple[int, str] | None = None
    for container, project in projects.items():
        root = PurePosixPath(project)
        if here == root or root in here.parents:
            depth = len(root.parts)
            if best is None or depth > best[0]:
                best = (depth, container)
    return best[1] if best else None


def container_for(cwd: str, asked: targets.Asked = targets.NOTHING) -> str | None:
    """The running prov container for `cwd`, if any."""
    own = home_id(ProvPaths.from_env())
    projects = {
        str(item["Names"][0]).lstrip("/"): item["Labels"][LABEL_PROJECT]
        for item in Engine.connect(targets.resolve(asked)).summaries()
        if item.get("State") == "running"
        and (item.get("Labels") or {}).get(LABEL_PROJECT)
        and item["Labels"].get(LABEL_HOME) == own
        and item["Labels"].get(LABEL_ROLE, "env") == "env"
    }
    return choose(cwd, projects)
