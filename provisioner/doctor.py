"""`prov doctor`: is this machine ready for prov, and are prov's files safe?"""

from __future__ import annotations

import shutil
import stat
import subprocess
from dataclasses import dataclass

from provisioner import host, resident, sshconf
from provisioner.config import ProvPaths, user_ssh_config
from provisioner.engine import targets
from provisioner.engine.site import over_ssh
from provisioner.errors import ProvError

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass(frozen=True)
class Finding:
    name: str
    level: str  # pass / warn / fail
    detail: str


def _version(cmd: list[str]) -> str | None:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (result.stdout or result.stderr).strip().splitlines()
    return text[0] if text else ""


def _docker(asked: targets.Asked) -> Finding:
    from provisioner.engine import Engine

    try:
        target = targets.resolve(asked)
        targets.require_supported(target, "prov up")
        version = Engine.connect(target).engine_version()
    except ProvError as exc:
        return Finding("Docker engine", FAIL, exc.paragraph())
    return Finding("Docker engine", PASS, f"{target.describe()}: reachable, version {version}")


def _private_files(paths: ProvPaths) -> Finding:
    if not paths.home.exists():
        return Finding("prov's files", PASS, f"{paths.home} not created yet")
    loose = []
    if stat.S_IMODE(paths.home.stat().st_mode) & 0o077:
        loose.append(f"{paths.home} (dir, want 0700)")
    candidates = [paths.ssh_config, paths.known_hosts]
    if paths.envs.is_dir():
        for env_dir in paths.envs.iterdir():
            candidates += [p for p in env_dir.iterdir() if not p.name.endswith(".pub")]
            keys_dir = paths.keys_dir(env_dir.name)
            if keys_dir.is_dir():
                if stat.S_IMODE(keys_dir.stat().st_mode) & 0o077:
                    loose.append(f"{keys_dir} (dir, want 0700)")
                candidates += [p for p in keys_dir.iterdir() if p.name != "authorized_keys"]
    for path in candidates:
        if path.is_file() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            loose.append(f"{path} ({stat.S_IMODE(path.stat().st_mode):04o}, want 0600)")
    if loose:
        return Finding(
            "prov's files",
            FAIL,
            "readable by others: " + ", ".join(loose) + ". Fix: chmod go-rwx on each "
            "(prov also tightens its keys the next time it uses them).",
        )
    return Finding("prov's files", PASS, f"{paths.home} and its keys are private")


def _check(name: str, found: str | None, missing_level: str, missing: str) -> Finding:
    """PASS with what was found, else `missing_level` with what to do."""
    return Finding(name, PASS, found) if found else Finding(name, missing_level, missing)


def _included(paths: ProvPaths) -> str | None:
    user_config = user_ssh_config()
    try:
        data = user_config.read_bytes()
    except OSError:
        return None
    if sshconf.with_include(data, paths.ssh_config) is not None:
        return None
    return f"{user_config} includes {paths.ssh_config}"


def _aliases(paths: ProvPaths) -> Finding:
    """Does plain `ssh prov-NAME` (as NTM runs it, no -F) reach each environment?"""
    from provisioner import openssh, state

    problems, checked = [], 0
    if paths.envs.is_dir():
        for env_dir in sorted(paths.envs.iterdir()):
            try:
                record = state.load(paths, env_dir.name)
            except ProvError:
                continue
            if record is None:
                continue
            checked += 1
            host = record.ssh_host or "127.0.0.1"
            problem = openssh.alias_problem(
                sshconf.alias_for(record.name), host, record.ssh_port or record.port
            )
            if problem:
                problems.append(problem)
    if problems:
        return Finding(
            "ssh aliases",
            FAIL,
            "; ".join(problems)
            + f". Fix: add `{sshconf.include_line(paths.ssh_config)}` at the top of the "
            "~/.ssh/config of your passwd entry's home.",
        )
    return Finding("ssh aliases", PASS, f"plain ssh resolves all {checked} environment aliases")


def _exposure(paths: ProvPaths) -> Finding:
    """Environments whose agent can write what this machine later runs: the
    agents' config dirs (--credentials mount), or a project made before prov
    protected it (its hooks, git config, .envrc, editor and agent settings)."""
    from provisioner import lifecycle

    try:
        envs = lifecycle.list_envs(paths)
    except ProvError as exc:
        return Finding("what agents can write here", WARN, f"could not list: {exc.what}")
    exposed = []
    for env in envs:
        if env.container == "-" or env.home != "this":
            continue
        if env.credentials in ("mount", "-"):
            how = "mount" if env.credentials == "mount" else "of an older prov (whole dirs)"
            exposed.append(
                f"{env.name}: --credentials {how} (the agent can write the agents' "
                "settings your CLIs here run)"
            )
        if env.protected == "-" and not over_ssh(env.engine):
            exposed.append(
                f"{env.name}: project unprotected (its git hooks and config, .envrc, editor "
                "and agent settings are writable inside)"
            )
    if exposed:
        return Finding(
            "what agents can write here",
            WARN,
            "; ".join(exposed) + ". Fix: `prov up NAME --recreate` (the defaults share only "
            "the login files and protect the project; the home and the work are kept).",
        )
    return Finding(
        "what agents can write here",
        PASS,
        "no environment can write the agents' settings or what the host runs in a project",
    )


def _keeper(paths: ProvPaths) -> Finding:
    """The background keeper of the agents' logins (see keeper.py)."""
    from provisioner import keeper

    if not paths.envs.is_dir() or not any(
        keeper.logins_dir(paths, d.name).is_dir() for d in paths.envs.iterdir()
    ):
        return Finding("login keeper", PASS, "no environment has a login to keep")
    if keeper.running(paths):
        return Finding("login keeper", PASS, f"running (its log: {paths.home / 'keeper.log'})")
    return Finding(
        "login keeper",
        WARN,
        "not running, so a token refreshed in one place is not carried to the others "
        "yet. Fix: any prov command that lists environments starts it (`prov ls`).",
    )


def diagnose(
    paths: ProvPaths | None = None, asked: targets.Asked = targets.NOTHING
) -> list[Finding]:
    paths = paths or ProvPaths.from_env()
    creds = host.find_credentials()
    cas = host.extra_ca_files()
    return [
        _docker(asked),
        _check(
            "ssh client", _version(["ssh", "-V"]), FAIL, "`ssh` not found: install openssh-client."
        ),
        _check(
            "tmux",
            _version(["tmux", "-V"]),
            WARN,
            "not found locally; NTM itself needs it (apt install tmux).",
        ),
        _check(
            "ntm",
            shutil.which("ntm"),
            WARN,
            "not on PATH: `prov up` still works and prints the `ntm spawn` command; "
            "install NTM (Named Tmux Manager) from its releases to run it.",
        ),
        _check(
            "ssh Include",
            _included(paths),
            WARN,
            f"~/.ssh/config does not include {paths.ssh_config}, so plain `ssh prov-NAME` "
            "(and NTM) cannot find the aliases. Fix: run `prov up` without "
            f"--no-ssh-config, or add `{sshconf.include_line(paths.ssh_config)}` at the "
            "top of it.",
        ),
        _private_files(paths),
        _aliases(paths),
        _exposure(paths),
        _keeper(paths),
        _check(
            "agent credentials",
            ", ".join(str(c.source) for c in creds.found),
            WARN,
            "no agent login here (~/.claude/.credentials.json, ~/.codex/auth.json, "
            "~/.gemini/oauth_creds.json): log the agents in on this machine, or pass "
            "their API keys.",
        ),
        _check(
            "extra CA certificates",
            f"{len(cas)} found ({', '.join(p.name for p in cas)}); images trust them"
            if cas
            else None,
            PASS,
            "none in /usr/local/share/ca-certificates (no TLS inspection to trust)",
        ),
        Finding("resident", PASS, resident.describe()),
        _check(
            "debootstrap",
            shutil.which("debootstrap"),
            WARN,
            "not installed: needed only when the base image can neither be found nor "
            "pulled (offline hosts). Fix: apt install debootstrap.",
        ),
    ]
