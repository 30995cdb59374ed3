"""The agent CLIs prov knows, and where each keeps its login and its settings.

Each CLI keeps two kinds of files in the user's home: a login (tokens the
CLI refreshes now and then) and settings, some of which the CLI executes
(hooks, MCP servers, notify commands, status lines, API key helpers). An
environment gets logins, never settings: those are only offered, copied into
the environment's home and never written back, so nothing the agent writes
reaches a file a CLI on the host reads as settings.

A login cannot simply be the host's file mounted in: refresh tokens rotate
(each works once), and Claude Code and Codex write their login file anew and
rename it over the old one, which either fails on a mounted file (Codex then
loses the refresh) or, on the host, leaves the environment's mount on the old
file. So each environment has its own login files, in prov's home on this
machine, and the keeper (keeper.py) carries the freshest token between them
and the user's own files, token fields only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Login:
    """One CLI's login file and how to tell a fresher token."""

    rel: str  # below the home
    # The keys that are the login (the token); only these ever flow between
    # files. Anything else in the file stays as each file has it.
    token_keys: tuple[str, ...]
    # Where the freshness is: a dotted path to a number or an RFC 3339 time.
    fresh: str
    # The account a token belongs to (a dotted path): a token of another
    # account is never carried (an agent could otherwise log the host into
    # an account of its choosing); "" when the file does not say.
    account: str = ""
    # Mounted as the file itself, or as its directory (a CLI that renames a
    # new file over the old one needs a directory of its own to do it in).
    mount: str = "file"


@dataclass(frozen=True)
class AgentFiles:
    name: str
    # Its login, carried by the keeper (None: the CLI has no login file here).
    login: Login | None
    # Copied into the environment's home when its container is made.
    settings: tuple[str, ...]
    # What `--credentials mount` (or `copy`) carries whole: the CLI's dirs.
    dirs: tuple[str, ...]


AGENTS: tuple[AgentFiles, ...] = (
    AgentFiles(
        "claude",
        # Claude Code renames onto it, and writes in place when that is refused
        # (as on a mounted file): the file itself can be mounted.
        login=Login(".claude/.credentials.json", ("claudeAiOauth",), "claudeAiOauth.expiresAt"),
        settings=(".claude/settings.json", ".claude/CLAUDE.md", ".claude.json"),
        dirs=(".claude", ".claude.json"),
    ),
    AgentFiles(
        "codex",
        # Codex renames onto auth.json and does not fall back: its environment's
        # ~/.codex is a directory of prov's own.
        login=Login(
            ".codex/auth.json",
            ("tokens", "last_refresh"),
            "last_refresh",
            account="tokens.account_id",
            mount="dir",
        ),
        settings=(".codex/config.toml", ".codex/AGENTS.md"),
        dirs=(".codex",),
    ),
    AgentFiles(
        "gemini",
        login=Login(
            ".gemini/oauth_creds.json",
            ("access_token", "refresh_token", "expiry_date", "token_type", "id_token", "scope"),
            "expiry_date",
        ),
        settings=(".gemini/settings.json", ".gemini/GEMINI.md", ".gemini/google_accounts.json"),
        # The guide names ~/.config/gemini; Gemini CLI itself uses ~/.gemini.
        dirs=(".gemini", ".config/gemini"),
    ),
)


@dataclass(frozen=True)
class Launch:
    """How a CLI runs unattended (its flag that skips every permission prompt),
    and NTM's short name for its panes (`--cc`, `--cod`, `--gmi`)."""

    command: str
    unattended: str
    ntm: str

    @property
    def argv(self) -> list[str]:
        return [self.command, self.unattended]


LAUNCH = {
    "claude": Launch("claude", "--dangerously-skip-permissions", "cc"),
    "codex": Launch("codex", "--dangerously-bypass-approvals-and-sandbox", "cod"),
    "gemini": Launch("gemini", "--yolo", "gmi"),
}

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
