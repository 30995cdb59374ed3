"""The real `claude -p`, `codex exec` and `gemini -p` with their API keys held by
the proxy: the tests' HTTPS site stands in for each API host and sees the real
key in the CLI's own header, while the CLI, inside, holds the placeholder only:
in its environment, its files and its memory (read while it waits for the
site's answer, as a core dump would hold it). Slow: the agents' image."""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import (
    ALLOWED_DOMAIN,
    DENIED_DOMAIN,
    DENIED_SITE,
    SITE,
    HttpsSite,
    Prov,
    allow_test_servers,
    files_holding,
)

pytestmark = pytest.mark.slow
AGENTS = {"PROV_AGENTS": "claude,codex,gemini"}
CLAUDE_KEY = "sk-ant-api03-REALclaude5f1e"
OPENAI_KEY = "sk-proj-REALcodex9b2c7d"
GEMINI_KEY = "AIzaREALgemini3e8a41f0"
VALUES = (CLAUDE_KEY, OPENAI_KEY, GEMINI_KEY)
# Gemini CLI asks for its auth type to be chosen; the key is the one chosen here.
GEMINI_SETTINGS = '{"security": {"auth": {"selectedType": "gemini-api-key"}}}'


@pytest.fixture(scope="module")
def keyed(
    prov: Prov,
    https_site: HttpsSite,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
) -> Iterator[tuple[Prov, str]]:
    """A user with no agent logins, only API keys; the site's names as the API
    hosts (Codex's on a name of its own), the site trusted by this machine."""
    home = tmp_path_factory.mktemp("keys-home")
    bundle = home / "bundle.pem"
    bundle.write_bytes(
        Path("/etc/ssl/certs/ca-certificates.crt").read_bytes() + https_site.ca.read_bytes()
    )
    allow_test_servers(home)  # the stub APIs are on a private range
    ph = home.parent / "keys-ph"
    user = replace(
        prov,
        home=home,
        prov_home=ph,
        env={
            **prov.env,
            "HOME": str(home),
            "PROV_HOME": str(ph),
            "SSL_CERT_FILE": str(bundle),
            **AGENTS,
        },
    )
    name = user.name("keyed")
    user.project(name)
    result = user.run(
        "up",
        name,
        "--allow", ALLOWED_DOMAIN, "--allow", DENIED_DOMAIN,
        "--secret", f"ANTHROPIC_API_KEY={CLAUDE_KEY}@{SITE}:x-api-key",
        "--secret", f"GEMINI_API_KEY={GEMINI_KEY}@{SITE}:x-goog-api-key",
        "--secret", f"OPENAI_API_KEY={OPENAI_KEY}@{DENIED_SITE}",
        timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(v in result.stdout + result.stderr for v in VALUES)
    yield user, f"prov-{name}"


def _auth(site: HttpsSite, before: int) -> list[str]:
    return [ln for ln in site.requests().splitlines()[before:] if ln.startswith("AUTH ")]


def test_each_cli_sends_the_real_key_it_never_had(
    keyed: tuple[Prov, str], https_site: HttpsSite
) -> None:
    user, alias = keyed
    before = len(https_site.requests().splitlines())
    claude = user.ssh(
        alias, f"cd /tmp && ANTHROPIC_BASE_URL=https://{SITE} timeout 90 claude -p hi", timeout=120
    )
    auth = _auth(https_site, before)
    sent = [ln for ln in auth if ln.startswith("AUTH /v1/messages") and " x-api-key " in ln]
    assert sent and all(ln.endswith(f" {CLAUDE_KEY}") for ln in sent), (
        claude.stdout + claude.stderr
    )[-2000:] + "\n".join(auth)

    before = len(https_site.requests().splitlines())
    provider = " ".join(
        f"-c {shlex.quote(setting)}"
        for setting in (
            'model_providers.stub.name="stub"',
            f'model_providers.stub.base_url="https://{DENIED_SITE}/v1"',
            'model_providers.stub.env_key="OPENAI_API_KEY"',
            'model_providers.stub.wire_api="responses"',
            "model_provider=stub",
        )
    )
    codex = user.ssh(
        alias,
        f"cd /tmp && timeout 90 codex exec --skip-git-repo-check {provider} hi",
        timeout=120,
    )
    auth = _auth(https_site, before)
    sent = [ln for ln in auth if " authorization " in ln]
    assert sent and all(ln.endswith(f"Bearer {OPENAI_KEY}") for ln in sent), (
        (codex.stdout + codex.stderr)[-2000:] + "\n".join(auth) + _proxy_log(alias)
    )

    before = len(https_site.requests().splitlines())
    gemini = user.ssh(
        alias,
        "cd /tmp && mkdir -p ~/.gemini && echo "
        f"{shlex.quote(GEMINI_SETTINGS)} > ~/.gemini/settings.json && "
        f"GEMINI_CLI_TRUST_WORKSPACE=true GOOGLE_GEMINI_BASE_URL=https://{SITE} "
        "timeout 90 gemini -p hi",
        timeout=120,
    )
    auth = _auth(https_site, before)
    sent = [ln for ln in auth if " x-goog-api-key " in ln]
    assert sent and all(ln.endswith(f" {GEMINI_KEY}") for ln in sent), (
        gemini.stdout + gemini.stderr
    )[-2000:] + "\n".join(auth)
    # What each site got was its own: no request to Codex's host held another key.
    log = https_site.requests()
    assert CLAUDE_KEY not in "".join(ln for ln in log.splitlines() if "/v1/responses" in ln)


def _proxy_log(alias: str) -> str:
    """The end of the environment's proxy log, to explain a failure."""
    return "\nproxy:\n" + docker.from_env().containers.get(f"{alias}-egress").logs(tail=40).decode()


def _memory(pid: int) -> Iterator[bytes]:
    """Every readable mapping of a process (what a core dump would hold), read
    from this machine as root."""
    with (
        Path(f"/proc/{pid}/maps").open() as maps,
        Path(f"/proc/{pid}/mem").open("rb", buffering=0) as mem,
    ):
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or "[vvar]" in line or "[vsyscall]" in line:
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            yield chunk


def test_the_cli_holds_only_the_placeholder_while_it_works(
    keyed: tuple[Prov, str], https_site: HttpsSite, docker_client: docker.DockerClient
) -> None:
    """Claude waits on the site (a slow answer) while its memory, environment and
    every file inside are searched for the key: none holds it; the placeholder
    is there (so the search does see what the CLI holds)."""
    user, alias = keyed
    env = docker_client.containers.get(alias)
    user.ssh(
        alias,
        f"cd /tmp && (ANTHROPIC_BASE_URL=https://{SITE}/slow timeout 60 claude -p hi "
        ">/dev/null 2>&1 &)",
    )
    pid = 0
    deadline = time.monotonic() + 60
    while not pid:
        assert time.monotonic() < deadline, "claude did not start"
        for row in env.top(ps_args="-eo pid,args")["Processes"]:
            if re.search(r"(^|/)claude( |$)", row[1]) and "timeout" not in row[1]:
                pid = int(row[0])
        time.sleep(0.5)
    # Until its request is at the site (it then holds what it sends).
    while "REQ POST /slow/v1/messages" not in https_site.requests():
        assert time.monotonic() < deadline, "claude's request did not arrive"
        time.sleep(0.5)
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    placeholder, size = False, 0
    for chunk in _memory(pid):
        size += len(chunk)
        placeholder |= b"prov-placeholder-anthropic-api-key" in chunk
        assert not any(v.encode() in chunk for v in VALUES)
    assert placeholder and size > 10_000_000, size  # the dump did see the CLI's heap
    assert b"prov-placeholder-anthropic-api-key" in environ
    assert not any(v.encode() in environ for v in VALUES)
    files = files_holding(env, VALUES)
    assert files.strip() == "grep exit 1", files[-2000:]
