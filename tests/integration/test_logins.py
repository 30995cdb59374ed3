"""The agents' logins with the default credentials (the login files, shared):
the real `claude`, `codex` and `gemini` inside use the host's login against
the tests' stub API and token endpoint, and a refresh inside (refresh tokens
rotate: each works once) leaves the host's login, and another environment's,
usable. Slow: the agents' image."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import (
    ALLOWED_DOMAIN,
    PROJECT_GID,
    PROJECT_UID,
    SITE,
    HttpsSite,
    Prov,
    allow_test_servers,
)
from tests.integration.tlssite import jwt

pytestmark = pytest.mark.slow
AGENTS = {"PROV_AGENTS": "claude,codex,gemini"}


@pytest.fixture(scope="module")
def lp(
    prov: Prov, tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Prov]:
    """A home logged in to all three agents, as `claude /login`, `codex login`
    and `gemini` leave it; Codex's access token has expired (it refreshes)."""
    home = tmp_path_factory.mktemp("logins-home")
    files = {
        ".claude/.credentials.json": {
            "claudeAiOauth": {
                "accessToken": "at-claude-host",
                "refreshToken": "rt-claude-0",
                "expiresAt": int(time.time() + 86400) * 1000,
                "scopes": ["user:inference"],
            }
        },
        ".claude.json": {"hasCompletedOnboarding": True},
        ".codex/auth.json": {
            "OPENAI_API_KEY": None,
            "tokens": {
                "id_token": jwt("id", 3600),
                "access_token": jwt("at-codex-expired", -3600),
                "refresh_token": "rt-codex-0",
                "account_id": "acc-1",
            },
            "last_refresh": "2026-01-01T00:00:00Z",
        },
        ".gemini/oauth_creds.json": {
            "access_token": "at-gemini-host",
            "refresh_token": "rt-gemini-0",
            "token_type": "Bearer",
            "expiry_date": int(time.time() + 86400) * 1000,
        },
        ".gemini/settings.json": {"security": {"auth": {"selectedType": "oauth-personal"}}},
    }
    for rel, data in files.items():
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    for path in [*home.rglob("*")]:
        os.lchown(path, PROJECT_UID, PROJECT_GID)
    allow_test_servers(home)  # the stub APIs are on a private range
    ph = home.parent / "logins-ph"
    yield replace(
        prov,
        home=home,
        prov_home=ph,
        env={**prov.env, "HOME": str(home), "PROV_HOME": str(ph), **AGENTS},
    )
    subprocess.run(["pkill", "-f", f"provisioner.keeper {ph}"], check=False)


@pytest.fixture(scope="module")
def envs(lp: Prov, https_site: HttpsSite) -> tuple[str, str]:
    made = []
    for label in ("login-a", "login-b"):
        name = lp.name(label)
        lp.project(name)
        result = lp.run("up", name, "--allow", ALLOWED_DOMAIN, timeout=1800)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "logins shared" in result.stderr
        made.append(f"prov-{name}")
    return made[0], made[1]


def _trust(lp: Prov, alias: str, https_site: HttpsSite) -> str:
    """The site's CA in the project dir (the same path inside), as Node, Bun and
    Rust's TLS read it."""
    ca = lp.projects / alias.removeprefix("prov-") / "site-ca.pem"
    ca.write_bytes(https_site.ca.read_bytes())
    return f"NODE_EXTRA_CA_CERTS={ca} SSL_CERT_FILE={ca}"


def test_each_agent_uses_the_hosts_login(
    lp: Prov, envs: tuple[str, str], https_site: HttpsSite
) -> None:
    """Claude sends the host's OAuth access token, from the shared login file, to
    its (stub) API; Gemini finds its login file in place."""
    alias = envs[0]
    trust = _trust(lp, alias, https_site)
    site = f"https://{SITE}"
    before = len(https_site.requests().splitlines())
    lp.ssh(alias, f"cd /tmp && {trust} ANTHROPIC_BASE_URL={site} timeout 90 claude -p hi",
           timeout=120)  # fmt: skip
    now = https_site.requests().splitlines()[before:]
    sent = [ln for ln in now if ln.startswith("AUTH /v1/messages")]
    assert sent and all(ln.endswith("authorization Bearer at-claude-host") for ln in sent), sent
    # Gemini checks a cached login with Google's tokeninfo endpoint before any
    # call, which no stub here can stand in for (it is a real host name): its
    # login file is shown shared in test_hostexec, and read by gemini here.
    ran = lp.ssh(
        alias,
        f"cd /tmp && {trust} GEMINI_CLI_TRUST_WORKSPACE=true CODE_ASSIST_ENDPOINT={site} "
        "timeout 90 gemini -p hi; cat ~/.gemini/oauth_creds.json",
        timeout=120,
    )
    assert "at-gemini-host" in ran.stdout


def test_a_refresh_inside_leaves_every_login_usable(
    lp: Prov, envs: tuple[str, str], https_site: HttpsSite
) -> None:
    """Codex inside refreshes its expired token at the (stub) token endpoint, whose
    refresh tokens work once: the new one lands in the host's own login file, so the
    host's next refresh works, and the other environment has it too."""
    alias, other = envs
    trust = _trust(lp, alias, https_site)
    site = f"https://{SITE}"
    base = shlex.quote("chatgpt_base_url=" + json.dumps(site + "/backend-api/"))
    ran = lp.ssh(
        alias,
        f"cd /tmp && {trust} CODEX_REFRESH_TOKEN_URL_OVERRIDE={site}/oauth/token "
        f"timeout 90 codex exec --skip-git-repo-check -c {base} hi",
        timeout=120,
    )
    log = https_site.requests()
    assert "REFRESH rt-codex-0" in log, (ran.stdout + ran.stderr)[-2000:] + log[-2000:]
    deadline = time.monotonic() + 20  # the keeper carries it within a few seconds
    while True:
        host = json.loads((lp.home / ".codex" / "auth.json").read_text())
        fresh = host["tokens"]["refresh_token"]
        if fresh != "rt-codex-0" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert fresh != "rt-codex-0" and fresh.startswith("rt-codex-"), (ran.stdout + ran.stderr)[
        -3000:
    ] + "\n".join(ln for ln in log.splitlines() if "oauth" in ln or "REFRESH" in ln)
    # The endpoint takes the host's token now, and no longer the one the host had.
    assert json.loads(https_site.get(f"/oauth/valid?token={fresh}")) == {"valid": True}
    assert json.loads(https_site.get("/oauth/valid?token=rt-codex-0")) == {"valid": False}
    deadline = time.monotonic() + 20
    while (
        json.loads(lp.ssh(other, "cat ~/.codex/auth.json").stdout)["tokens"]["refresh_token"]
        != fresh
    ):
        assert time.monotonic() < deadline, "the other environment did not get it"
        time.sleep(0.5)
    # And nothing of the agent's reached the host's settings: there are none here.
    assert not (lp.home / ".codex" / "config.toml").exists()


def test_settings_offered_inside_are_copies(lp: Prov, envs: tuple[str, str]) -> None:
    """Gemini's settings are offered as a copy: the agent rewriting them (adding a
    hook, an MCP server) changes nothing here."""
    before = (lp.home / ".gemini" / "settings.json").read_bytes()
    lp.ssh(envs[0], "echo '{\"mcpServers\": {\"x\": {\"command\": \"touch\"}}}' > "
           "~/.gemini/settings.json")  # fmt: skip
    assert (lp.home / ".gemini" / "settings.json").read_bytes() == before
    assert Path(lp.home / ".gemini" / "oauth_creds.json").is_file()
