"""The agent CLIs prov knows, and where each keeps its login and its settings.

Each CLI keeps two kinds of files in the user's home: a login (tokens the
CLI refreshes now and then) and settings, some of which the CLI executes
(hooks, MCP servers, notify commands, status lines, API key helpers). An
environment gets the login files themselves, mounted one by one, so that a
token refreshed inside is the host's and every other environment's at once
(refresh tokens rotate: a copy would leave the others with a dead login).
All three CLIs end up rewriting their login file in place, on the same inode,
which a single-file mount needs: Codex and Gemini truncate and write it;
Claude Code writes a temp file and renames it over, and when the rename is
refused (EBUSY on a mount point) writes in place. Settings are only offered: copied into the
environment's home, never written back, so nothing the agent writes there
reaches a file a CLI on the host reads as settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class AgentFiles:
    name: str
    # Paths below the home: shared with the environment, written in place.
    login: tuple[str, ...]
    # Copied into the environment's home when its container is made.
    settings: tuple[str, ...]
    # What `--credentials mount` (or `copy`) carries whole: the CLI's dirs.
    dirs: tuple[str, ...]


AGENTS: tuple[AgentFiles, ...] = (
    AgentFiles(
        "claude",
        login=(".claude/.credentials.json",),
        settings=(".claude/settings.json", ".claude/CLAUDE.md", ".claude.json"),
        dirs=(".claude", ".claude.json"),
    ),
    AgentFiles(
        "codex",
        login=(".codex/auth.json",),
        settings=(".codex/config.toml", ".codex/AGENTS.md"),
        dirs=(".codex",),
    ),
    AgentFiles(
        "gemini",
        login=(".gemini/oauth_creds.json", ".gemini/google_accounts.json"),
        settings=(".gemini/settings.json", ".gemini/GEMINI.md"),
        # The guide names ~/.config/gemini; Gemini CLI itself uses ~/.gemini.
        dirs=(".gemini", ".config/gemini"),
    ),
)

# Keys of ~/.claude.json left out of the environment's copy: the user's other
# projects (their paths and per-project state) and MCP servers (commands, and
# often secrets in their environment), which are not the agent's business.
CLAUDE_STATE_PRIVATE = ("projects", "mcpServers", "githubRepoPaths")


def offered_copy(rel: str, data: bytes) -> bytes:
    """The environment's copy of a settings file: as it is, except Claude's
    state file without what is private to the user's other work."""
    if rel != ".claude.json":
        return data
    try:
        state = json.loads(data)
    except ValueError:
        return b"{}\n"
    if not isinstance(state, dict):
        return b"{}\n"
    kept = {k: v for k, v in state.items() if k not in CLAUDE_STATE_PRIVATE}
    return (json.dumps(kept, indent=2) + "\n").encode()
