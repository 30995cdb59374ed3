"""Nothing the agent writes runs on the host: tried as a hostile agent would,
from inside, against every file the user's own tools on the host execute (the
agents' settings in the home, the project's git hooks and config, .envrc,
editor tasks, the agents' project settings), then checked on the host, byte
for byte. Ordinary git work and the agents' logins must go on working."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.integration.conftest import PROJECT_GID, PROJECT_UID, Prov

# What the host's CLIs read as settings and run (hooks, MCP servers, notify).
HOME_SETTINGS = {
    ".claude/settings.json": '{"hooks": {}}\n',
    ".claude.json": '{"hasCompletedOnboarding": true, "mcpServers": {}, '
    '"projects": {"/home/u/secret": {}}}\n',
    ".codex/config.toml": 'model = "gpt-5"\n',
    ".gemini/settings.json": "{}\n",
}
HOME_LOGINS = {
    ".claude/.credentials.json": '{"claudeAiOauth": {"accessToken": "at-0", '
    '"refreshToken": "rt-0", "expiresAt": 1}}\n',
    ".gemini/oauth_creds.json": '{"access_token": "g-0", "refresh_token": "gr-0"}\n',
}


def _chown_tree(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        os.lchown(p, PROJECT_UID, PROJECT_GID)


def _snapshot(root: Path, rels: list[str]) -> dict[str, str]:
    """Each path's type, mode, owner and content (or listing), as the host has it."""
    seen: dict[str, str] = {}
    for rel in rels:
        path = root / rel
        if not path.exists() and not path.is_symlink():
            seen[rel] = "missing"
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            seen[rel] = f"link {path.readlink()}"
        elif stat.S_ISDIR(st.st_mode):
            inner = sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))
            digests = [
                hashlib.sha256((path / i).read_bytes()).hexdigest()
                for i in inner
                if (path / i).is_file() and not (path / i).is_symlink()
            ]
            seen[rel] = f"dir {st.st_mode:o} {st.st_uid} {inner} {digests}"
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            seen[rel] = f"file {st.st_mode:o} {st.st_uid} {digest}"
    return seen


PROTECTED = [
    ".git/hooks", ".git/config", ".git/info", ".envrc", ".mcp.json", ".vscode", ".idea",
    ".claude", ".gemini", ".codex", ".git/HEAD",
]  # fmt: skip


@pytest.fixture(scope="module")
def hp(prov: Prov, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prov]:
    """prov with a home of its own: the agents' settings and logins written here
    must not leak into other modules' environments."""
    home = tmp_path_factory.mktemp("hostexec-home")
    os.chown(home, 0, 0)
    ph = home.parent / "hostexec-ph"
    yield replace(
        prov, home=home, prov_home=ph, env={**prov.env, "HOME": str(home), "PROV_HOME": str(ph)}
    )
    subprocess.run(["pkill", "-f", f"provisioner.keeper {ph}"], check=False)


@pytest.fixture(scope="module")
def repo(hp: Prov) -> Path:
    """A project as users have them: a git repository with a commit, editor
    settings, the agents' project settings; no .envrc and no .mcp.json."""
    name = hp.name("hostexec")
    project = hp.project(name)
    git = ["git", "-c", "safe.directory=*", "-C", str(project)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (project / "app.py").write_text("print('hello')\n")
    (project / ".vscode").mkdir()
    (project / ".vscode" / "settings.json").write_text("{}\n")
    (project / ".claude").mkdir()
    (project / ".claude" / "settings.json").write_text('{"permissions": {}}\n')
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "-c", "user.email=u@x", "-c", "user.name=u", "commit", "-qm", "one"],
                   check=True)  # fmt: skip
    _chown_tree(project)
    return project


@pytest.fixture(scope="module")
def logins(hp: Prov) -> dict[str, str]:
    """The host home's agent settings and logins, as a user has them."""
    for rel, text in {**HOME_SETTINGS, **HOME_LOGINS}.items():
        path = hp.home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for top in (".claude", ".gemini", ".codex", ".claude.json"):
        _chown_tree(hp.home / top)
    return {rel: (hp.home / rel).read_text() for rel in HOME_SETTINGS}


@pytest.fixture(scope="module")
def agent(hp: Prov, repo: Path, logins: dict[str, str]) -> str:
    name = repo.name
    result = hp.run("up", name)
    assert result.returncode == 0, result.stderr
    assert "placeholders" in result.stderr and ".envrc" in result.stderr
    return f"prov-{name}"


def _as_agent(prov: Prov, alias: str, script: str) -> subprocess.CompletedProcess[str]:
    return prov.ssh(alias, f"bash -c {shlex.quote(script)}", timeout=60)


ATTACKS = {
    "plant a hook": "echo 'touch /tmp/PWNED' > .git/hooks/pre-commit; "
    "chmod +x .git/hooks/pre-commit; echo x >> .git/hooks/pre-commit.sample",
    "fsmonitor": "git config core.fsmonitor 'touch /tmp/PWNED3'",
    "hooksPath": "git config core.hooksPath /tmp",
    "alias, pager, sshCommand": "git config alias.st '!touch /tmp/P'; git config core.pager x; "
    "git config core.sshCommand x",
    "filter driver": "git config filter.x.clean 'touch /tmp/P'",
    "append to config": "echo '[core] fsmonitor = touch /tmp/P' >> .git/config",
    "cd .git": "cd .git && echo '[core] pager = x' > config",
    "rename config": "cp .git/config /tmp/c && echo x >> /tmp/c && mv /tmp/c .git/config",
    "move .git away": "mv .git .git-gone && mkdir .git",
    "replace hooks by a link": "mv .git/hooks /tmp/h; rm -rf .git/hooks; ln -s /tmp .git/hooks",
    "hard link": "ln .git/config cfg && echo x >> cfg",
    "a .git file": "echo 'gitdir: /tmp/evil' > .git; mv -T .git x && echo 'gitdir: /tmp' > .git",
    "info": "echo '* filter=x' > .git/info/attributes",
    "envrc": "echo 'touch /tmp/PWNED' > .envrc",
    "envrc by rename": "echo x > /tmp/e && mv /tmp/e .envrc; ln -s /tmp/e e2 && mv e2 .envrc",
    "mcp": "echo '{\"mcpServers\": {}}' > .mcp.json",
    "vscode": "echo '{}' > .vscode/tasks.json; echo x >> .vscode/settings.json; rm -rf .vscode",
    "idea": "mkdir -p .idea/x; echo x > .idea/workspace.xml",
    "claude": "echo '{\"hooks\": {}}' > .claude/settings.local.json; "
    "echo x >> .claude/settings.json; mv .claude .c2",
    "gemini and codex": "echo '{}' > .gemini/settings.json; echo x > .codex/config.toml",
}


def test_the_agent_cannot_touch_what_the_host_executes(hp: Prov, agent: str, repo: Path) -> None:
    """Every attack fails inside, and the host's copies of every protected path
    are byte for byte what they were."""
    before = _snapshot(repo, PROTECTED)
    for what, script in ATTACKS.items():
        _as_agent(hp, agent, f"cd {shlex.quote(str(repo))} && {{ {script}; }} 2>/dev/null; true")
        after = _snapshot(repo, PROTECTED)
        changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        assert not changed, (what, changed)
    assert not (repo / "cfg").exists() or (repo / "cfg").read_text() == ""
    # Placeholders are empty, and the agent's git does not see them.
    assert (repo / ".envrc").read_bytes() == b"" and (repo / ".mcp.json").read_bytes() == b""
    seen = _as_agent(hp, agent, f"cd {shlex.quote(str(repo))} && git status --porcelain")
    assert ".envrc" not in seen.stdout and ".mcp.json" not in seen.stdout


def test_ordinary_git_work_goes_on(hp: Prov, agent: str, repo: Path) -> None:
    """With the protections on: identity in the home's gitconfig, add, commit,
    branch, checkout, stash, rebase, and a sub-repository of its own."""
    script = (
        f"cd {shlex.quote(str(repo))} && "
        "git config --global user.email agent@x && git config --global user.name agent && "
        "git checkout -q -b work && echo a >> app.py && git add -A && git commit -qm two && "
        "echo b > b.txt && git stash -q -u && git stash pop -q && git add b.txt && "
        "git commit -qm three && git checkout -q main && echo c > c.txt && git add c.txt && "
        "git commit -qm side && git checkout -q work && git rebase -q main && "
        "git branch --list && git log --format=%s | head -4 && "
        "mkdir -p sub && cd sub && git init -q && git commit -q --allow-empty -m sub && echo ok"
    )
    result = _as_agent(hp, agent, script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "ok"
    assert result.stdout.split("\n")[-6:-2] == ["three", "two", "side", "one"]
    log = subprocess.run(
        ["git", "-c", "safe.directory=*", "-C", str(repo), "log", "--format=%s", "work"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert log[:2] == ["three", "two"]  # the agent's commits are in the host's repository


def test_home_settings_are_copies_and_logins_are_shared(
    hp: Prov, agent: str, logins: dict[str, str], repo: Path
) -> None:
    """The agents' settings inside are copies (Claude's state without the user's
    other projects): rewriting them, adding commands, agents or plugins, changes
    nothing on the host. The login files are the host's own: a refresh written
    in place inside is the host's at once, and another environment's too; the
    agent cannot swap the file for another one."""
    inside = _as_agent(hp, agent, "cat ~/.claude.json; cat ~/.claude/settings.json")
    assert '"hasCompletedOnboarding": true' in inside.stdout
    assert "/home/u/secret" not in inside.stdout and '"hooks": {}' in inside.stdout
    _as_agent(
        hp,
        agent,
        'echo \'{"hooks": {"SessionStart": []}}\' > ~/.claude/settings.json; '
        'echo \'{"mcpServers": {"x": {}}}\' > ~/.claude.json; '
        "mkdir -p ~/.claude/commands ~/.claude/agents ~/.claude/plugins && "
        "echo x > ~/.claude/commands/c.md; echo 'notify = [\"touch\"]' >> ~/.codex/config.toml; "
        "echo '{\"hooks\": {}}' > ~/.gemini/settings.json; true",
    )
    for rel, text in logins.items():
        assert (hp.home / rel).read_text() == text, rel
    for extra in (".claude/commands", ".claude/agents", ".claude/plugins"):
        assert not (hp.home / extra).exists(), extra

    refreshed = {"accessToken": "at-1", "refreshToken": "rt-1", "expiresAt": 2000000000000}
    sneaked = {"claudeAiOauth": refreshed, "apiKeyHelper": "touch /tmp/PWNED"}
    wrote = _as_agent(
        hp,
        agent,
        f"printf '%s\\n' {shlex.quote(json.dumps(sneaked))} > ~/.claude/.credentials.json && "
        "{ mv ~/.claude/.credentials.json /tmp/x 2>&1; rm -f ~/.claude/.credentials.json 2>&1; "
        "echo '{}' > /tmp/other && mv /tmp/other ~/.claude/.credentials.json 2>&1; true; }",
    )
    assert "busy" in wrote.stdout.lower(), wrote.stdout
    host_login = hp.home / ".claude/.credentials.json"
    _until(lambda: json.loads(host_login.read_text())["claudeAiOauth"] == refreshed)
    assert "apiKeyHelper" not in host_login.read_text()  # the token, and nothing else
    other = hp.name("hostexec2")
    hp.project(other)
    assert hp.run("up", other).returncode == 0
    second = hp.ssh(f"prov-{other}", "cat ~/.claude/.credentials.json ~/.gemini/oauth_creds.json")
    assert "at-1" in second.stdout and "gr-0" in second.stdout
    # A refresh in the second environment reaches the first one, and this machine.
    fresher = '{"access_token": "g-1", "refresh_token": "gr-1", "expiry_date": 2000000000000}'
    _as_agent(hp, f"prov-{other}", f"echo {shlex.quote(fresher)} > ~/.gemini/oauth_creds.json")
    _until(lambda: "gr-1" in _as_agent(hp, agent, "cat ~/.gemini/oauth_creds.json").stdout)
    _until(lambda: "gr-1" in (hp.home / ".gemini/oauth_creds.json").read_text())
    # A refresh here, written as Claude Code writes it (a new file renamed over
    # the old), reaches both.
    again = {"claudeAiOauth": {**refreshed, "refreshToken": "rt-2", "expiresAt": 2000000001000}}
    fresh = host_login.with_name("new.json")
    fresh.write_text(json.dumps(again))
    fresh.replace(host_login)
    for alias in (agent, f"prov-{other}"):
        _until(lambda a=alias: "rt-2" in _as_agent(hp, a, "cat ~/.claude/.credentials.json").stdout)
    assert hp.run("rm", other, "--yes").returncode == 0


def _until(check: Callable[[], bool], seconds: float = 20) -> None:
    """The keeper looks every 2 s: wait for what it carries."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not carried in time"
        time.sleep(0.5)


def test_status_and_down_say_what_is_protected_and_take_the_placeholders_back(
    hp: Prov, agent: str, repo: Path
) -> None:
    """`prov status` lists the protected paths and the credentials mode; `down`
    removes the empty placeholders, leaving the project as it was."""
    name = agent.removeprefix("prov-")
    status = json.loads(hp.run("status", name, "--json", check=True).stdout)
    assert status["credentials"] == "tokens"
    for rel in (".git/hooks/", ".git/config", ".envrc", ".vscode/", ".claude/"):
        assert rel in status["protected"].split(","), rel
    down = hp.run("down", name, "--yes")
    assert down.returncode == 0 and ".envrc" in down.stderr
    assert not (repo / ".envrc").exists() and not (repo / ".mcp.json").exists()
    assert not (repo / ".idea").exists()  # made by prov, empty: gone
    assert (repo / ".vscode" / "settings.json").read_text() == "{}\n"  # the user's: kept


def test_credentials_mount_says_what_it_exposes(hp: Prov) -> None:
    """--credentials mount (whole dirs) is there by name, with the risk said at up."""
    name = hp.name("mountcreds")
    hp.project(name)
    result = hp.run("up", name, "--credentials", "mount")
    assert result.returncode == 0, result.stderr
    assert "the next `claude`, `codex` or `gemini` you start here runs what it wrote" in (
        result.stderr
    )
    doctor = hp.run("doctor")
    assert f"{name}: --credentials mount" in doctor.stdout + doctor.stderr
    assert hp.run("rm", name, "--yes").returncode == 0


def test_branch_mode_brings_commits_home_and_nothing_else(hp: Prov) -> None:
    """--clone / --branch: two environments on one project, each in a clone of
    its own on its own branch at the project's path; the host's tree is never
    written, `git fetch prov-NAME` brings the agent's commits (and no hook or
    config of its clone), `ls` shows the branch and how far it is ahead, and
    `rm` takes the remote back out, leaving .git/config byte for byte."""
    name = hp.name("branchy")
    project = hp.project(name)
    git = ["git", "-c", "safe.directory=*", "-C", str(project)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (project / "app.py").write_text("v1\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "-c", "user.email=u@x", "-c", "user.name=u", "commit", "-qm", "one"],
                   check=True)  # fmt: skip
    _chown_tree(project)
    config_before = (project / ".git" / "config").read_bytes()
    tree_before = _snapshot(project, ["app.py", ".git/hooks", ".git/HEAD"])
    other = hp.name("branchy2")
    assert hp.run("up", name, "--project", str(project), "--clone").returncode == 0
    made = hp.run("up", other, "--project", str(project), "--branch", "feature/two")
    assert made.returncode == 0, made.stderr
    work = _as_agent(
        hp,
        f"prov-{name}",
        f"cd {shlex.quote(str(project))} && git branch --show-current && echo v2 > app.py && "
        "git -c user.email=a@x -c user.name=a commit -qam two && "
        "git config core.fsmonitor 'touch /tmp/PWNED' && "
        "echo 'touch /tmp/PWNED' > .git/hooks/post-merge && chmod +x .git/hooks/post-merge && "
        "test ! -w /opt/prov/origin.git/config && echo ok",
    )
    assert work.stdout.split() == [f"prov/{name}", "ok"], work.stdout + work.stderr
    second = _as_agent(hp, f"prov-{other}", f"cd {shlex.quote(str(project))} && "
                       "git branch --show-current && cat app.py")  # fmt: skip
    assert second.stdout.split() == ["feature/two", "v1"]  # its own tree, not the first's
    assert _snapshot(project, ["app.py", ".git/hooks", ".git/HEAD"]) == tree_before
    listed = {e["name"]: e for e in json.loads(hp.run("ls", "--json", check=True).stdout)}
    assert listed[name]["branch"] == f"prov/{name} +1"
    assert listed[other]["branch"] == "feature/two +0"

    # ssh reads the passwd entry's ~/.ssh/config: point git's ssh at this home's.
    ssh = {"GIT_SSH_COMMAND": f"ssh -F {hp.home / '.ssh' / 'config'} -o BatchMode=yes"}
    fetch = subprocess.run([*git, "fetch", "-q", f"prov-{name}"], capture_output=True, text=True,
                           env={**hp.env, **ssh}, check=False)  # fmt: skip
    assert fetch.returncode == 0, fetch.stderr
    shown = subprocess.run([*git, "show", f"prov-{name}/prov/{name}:app.py"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert shown.stdout == "v2\n"
    config = (project / ".git" / "config").read_bytes()
    assert b"fsmonitor" not in config and config.startswith(config_before)
    assert _snapshot(project, ["app.py", ".git/hooks", ".git/HEAD"]) == tree_before
    for env in (name, other):
        assert hp.run("rm", env, "--yes").returncode == 0
    assert (project / ".git" / "config").read_bytes() == config_before
