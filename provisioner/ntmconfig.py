"""NTM's global config: point its [agents] templates into a container (guide
methods 3 and 4), edited in place with tomlkit so comments and every other
setting stay byte-for-byte as they were.

NTM renders the templates locally (Go text/template) and types the result into
a tmux pane. The model variables are kept so `--cc=2:opus` still works.
"""

from __future__ import annotations

import difflib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError

from provisioner.agents import LAUNCH
from provisioner.errors import ConfigError
from provisioner.fsutil import atomic_write, edit_in_place, read_owned

AGENT_KEYS = ("claude", "codex", "gemini")

# What follows the launcher for each agent: NTM's own default commands, with
# their template variables (see NTM-CONTRACT.md).
AGENT_TAILS = {
    "claude": " ".join(LAUNCH["claude"].argv)
    + "{{if .Model}} --model {{shellQuote .Model}}{{end}}",
    "codex": " ".join(LAUNCH["codex"].argv) + "{{if .Model}} -m {{shellQuote .Model}}{{end}}"
    "{{if .ReasoningEffort}} -c model_reasoning_effort={{shellQuote .ReasoningEffort}}{{end}}",
    "gemini": "gemini{{if .Model}} --model {{shellQuote .Model}}{{end}} "
    + LAUNCH["gemini"].unattended,
}


def exec_templates(container: str) -> dict[str, str]:
    """Method 3: every pane's agent runs in `container`, in the pane's project dir
    (mounted at the same path), as the agent user, with a TTY (panes have one)."""
    launcher = f"docker exec -it -u agent -w {{{{shellQuote .ProjectDir}}}} {container}"
    return {key: f"{launcher} {tail}" for key, tail in AGENT_TAILS.items()}


def route_templates(prov_executable: str) -> dict[str, str]:
    """Method 4: `prov route` picks the container whose project contains the pane's
    directory, or runs the agent locally when none does."""
    launcher = f"{shlex.quote(prov_executable)} route --"
    return {key: f"{launcher} {tail}" for key, tail in AGENT_TAILS.items()}


@dataclass(frozen=True)
class Edit:
    path: Path
    before: str
    after: str
    previous: dict[str, str | None]  # the entries replaced (None: there was none)

    @property
    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                self.before.splitlines(keepends=True),
                self.after.splitlines(keepends=True),
                str(self.path),
                f"{self.path} (after prov)",
            )
        )


def _parse(text: str, path: Path) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(
            f"Cannot edit NTM's config {path}: it is not valid TOML",
            str(exc),
            "fix the file (`ntm config edit`) and run again; prov changed nothing.",
        ) from exc


def set_agents(text: str, path: Path, templates: dict[str, str]) -> Edit:
    """`text` with [agents] KEY = TEMPLATE for each template; nothing else changes."""
    doc = _parse(text, path)
    agents = doc.get("agents")
    if agents is None:
        agents = tomlkit.table()
        doc["agents"] = agents
    elif not isinstance(agents, dict):
        raise ConfigError(
            f"Cannot edit NTM's config {path}",
            "`agents` is not a table.",
            "fix the file (`ntm config edit`).",
        )
    previous: dict[str, str | None] = {}
    for key, template in templates.items():
        old = agents.get(key)
        previous[key] = str(old) if old is not None else None
        agents[key] = template
    return Edit(path, text, tomlkit.dumps(doc), previous)


def restore_agents(text: str, path: Path, previous: dict[str, str | None]) -> Edit:
    """`text` with the [agents] entries put back as recorded in `previous`."""
    doc = _parse(text, path)
    agents = doc.get("agents")
    if not isinstance(agents, dict):
        return Edit(path, text, text, {})
    current = {key: (str(agents[key]) if key in agents else None) for key in previous}
    for key, old in previous.items():
        if old is None:
            agents.pop(key, None)
        else:
            agents[key] = old
    if agents:
        return Edit(path, text, tomlkit.dumps(doc), current)
    # The table was prov's: drop it, and the blank line tomlkit put before it.
    del doc["agents"]
    return Edit(path, text, tomlkit.dumps(doc).rstrip("\n") + "\n", current)


# Where prov remembers what it replaced, so --remove can put it back.
def _record_path(prov_home: Path) -> Path:
    return prov_home / "ntm-agents-before.json"


def apply(edit: Edit, prov_home: Path, remember: bool) -> Path | None:
    """Write the edit (after a backup of the old file); returns the backup path."""
    if edit.after == edit.before:
        return None
    backup = None
    if edit.path.exists():
        backup = edit.path.with_name(edit.path.name + ".prov-backup")
        atomic_write(backup, edit.before, edit.path.stat().st_mode & 0o777)
    record = _record_path(prov_home)
    if remember and not record.exists():
        # Only the first edit's "before" is the user's own; later edits by prov
        # must not overwrite it with prov's templates.
        atomic_write(record, json.dumps(edit.previous, indent=2) + "\n", 0o600)
    # In place: a symlinked config stays a symlink, and mode and owner stay.
    edit_in_place(edit.path, edit.after.encode())
    return backup


def read_config(path: Path) -> str:
    """NTM's config as it is on disk (CRLF line ends kept: no newline
    translation), "" when there is none; TOML is UTF-8, so anything else is a
    ConfigError."""
    data = read_owned(path, "NTM's config")
    if data is None:
        return ""
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"NTM's config {path} is not UTF-8",
            f"Byte {exc.start} is 0x{data[exc.start]:02x}; TOML files are UTF-8.",
            "save it as UTF-8.",
        ) from None


def remembered(prov_home: Path) -> dict[str, str | None] | None:
    try:
        data = json.loads(_record_path(prov_home).read_text())
    except FileNotFoundError:
        return None
    return {str(k): (None if v is None else str(v)) for k, v in data.items()}


def forget(prov_home: Path) -> None:
    _record_path(prov_home).unlink(missing_ok=True)


def edit_for(
    prov_home: Path, name: str | None, route: bool, remove: bool, prov_executable: str
) -> Edit | None:
    """The edit `prov ntm-config` makes to NTM's config: every agent in the
    container of `name` (method 3), or routed per project by `prov route`
    (method 4), or, with `remove`, the entries prov replaced put back (None
    when prov never changed them)."""
    from provisioner import state
    from provisioner.engine.site import over_ssh
    from provisioner.errors import UsageError
    from provisioner.host import ntm_config_path
    from provisioner.spec import container_name

    path = ntm_config_path()
    text = read_config(path)
    if remove:
        previous = remembered(prov_home)
        return None if previous is None else restore_agents(text, path, previous)
    if route == (name is not None):
        raise UsageError(
            "Say where the agents should run",
            "Pass an environment NAME, or --route for per-project routing (not both).",
            "e.g. `prov ntm-config myproject` or `prov ntm-config --route`.",
        )
    if name is None:
        return set_agents(text, path, route_templates(prov_executable))
    from provisioner.config import ProvPaths

    record = state.require(ProvPaths(prov_home), name)
    if over_ssh(record.engine):
        raise UsageError(
            f"{name} runs on a remote engine, which NTM's [agents] cannot reach",
            f"Method 3 runs `docker exec` on this machine; {name}'s container is "
            f"on {record.engine}.",
            f"hand it to NTM over SSH instead: `ntm spawn ... --ssh=prov-{name}` "
            "(what `prov up` prints).",
        )
    return set_agents(text, path, exec_templates(container_name(name)))


def save(edit: Edit, prov_home: Path, remove: bool) -> Path | None:
    """Write `edit` (remembering what it replaced, or, with `remove`, forgetting
    it); the backup made of NTM's config, if any."""
    from provisioner.fsutil import ensure_private_dir

    ensure_private_dir(prov_home)
    backup = apply(edit, prov_home, not remove)
    if remove:
        forget(prov_home)
    return backup
