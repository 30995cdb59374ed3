"""The full image: Claude Code, Codex and Gemini CLI installed from the npm registry,
behind this machine's TLS-inspecting proxy. Slow: the first build takes minutes."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import docker
import pytest

from provisioner.config import AGENT_VERSIONS
from tests.integration.conftest import ALLOWED_DOMAIN, SITE, HttpsSite, Prov
from tests.integration.test_environments import _pane_output
from tests.integration.tlssite import PACKAGE, PACKAGE_VALUE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agents_env(prov: Prov) -> dict[str, object]:
    """The default egress (allowlist), plus the test site's parent name."""
    name = prov.name("agents")
    prov.project(name)
    result = prov.run(
        "up",
        name,
        "--json",
        "--allow",
        ALLOWED_DOMAIN,
        env={"PROV_AGENTS": "claude,codex,gemini"},
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def trust(prov: Prov, agents_env: dict[str, object], https_site: HttpsSite) -> str:
    """Variables that make Node (and so npm, Claude Code, Gemini CLI) and Codex trust the
    test site's CA; the CA sits in the project dir, at the same path inside."""
    ca = Path(str(agents_env["project_dir"])) / "site-ca.pem"
    ca.write_bytes(https_site.ca.read_bytes())
    return f"NODE_EXTRA_CA_CERTS={ca} SSL_CERT_FILE={ca} npm_config_cafile={ca}"


def test_versions_recorded_and_shown(
    prov: Prov, agents_env: dict[str, object], docker_client: docker.DockerClient
) -> None:
    """The pinned versions are in the image labels and the container's agents label."""
    container = docker_client.containers.get(str(agents_env["container"]))
    labels = container.image.labels
    for agent, version in AGENT_VERSIONS.items():
        assert labels[f"prov.agent.{agent}"] == version
    assert container.labels["prov.agents"] == ", ".join(
        f"{a} {v}" for a, v in sorted(AGENT_VERSIONS.items())
    ).replace(", ", ",")
    again = prov.run("up", str(agents_env["name"]), env={"PROV_AGENTS": "claude,codex,gemini"})
    assert f"claude {AGENT_VERSIONS['claude']}" in again.stderr


def test_agents_run_over_plain_ssh(prov: Prov, agents_env: dict[str, object]) -> None:
    """`ssh ALIAS 'claude --version; codex --version; gemini --version'` works as is."""
    result = prov.ssh(
        str(agents_env["ssh_alias"]),
        "claude --version && codex --version && gemini --version",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert AGENT_VERSIONS["claude"] in out
    assert AGENT_VERSIONS["codex"] in out
    assert AGENT_VERSIONS["gemini"] in out


def test_agents_run_in_an_ntm_pane_with_systemd_run_prefix(
    prov: Prov, agents_env: dict[str, object]
) -> None:
    """Typed into a pane made like NTM's, with NTM's memLimitPrefix in front of claude."""
    text = _pane_output(
        prov,
        str(agents_env["ssh_alias"]),
        "agentpane",
        str(agents_env["project_dir"]),
        "systemd-run --user --scope -q -p MemoryMax=4G claude --version && codex --version "
        "&& gemini --version",
    )
    for version in AGENT_VERSIONS.values():
        assert version in text, text


def test_node_trusts_the_hosts_extra_cas(prov: Prov, agents_env: dict[str, object]) -> None:
    """Node in a session verifies TLS through this machine's inspecting proxy."""
    script = (
        "require('https').get(process.argv[1], r => "
        "{ console.log('status', r.statusCode); process.exit(0) })"
        ".on('error', e => { console.log('error', e.message); process.exit(1) })"
    )
    # The registry the agents came from, as the image's own npm knows it.
    result = prov.ssh(
        str(agents_env["ssh_alias"]),
        f'node -e "{script}" "$(npm config get registry)"',
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "status" in result.stdout


def test_node_fetch_and_npm_go_through_the_egress_proxy(
    prov: Prov, agents_env: dict[str, object], trust: str, https_site: HttpsSite
) -> None:
    """In allowlist mode Node's fetch and https module and npm reach an allowed HTTPS
    site through the proxy (the environment has no other way out)."""
    alias = str(agents_env["ssh_alias"])
    fetch = (
        f"fetch('https://{SITE}/hello.txt').then(r => r.text())"
        ".then(t => console.log('fetch', t.trim()))"
    )
    get = (
        f"require('https').get('https://{SITE}/hello.txt', r => "
        "{ let d = ''; r.on('data', c => d += c); "
        "r.on('end', () => console.log('get', d.trim())) })"
    )
    result = prov.ssh(alias, f'{trust} node -e "{fetch}" && {trust} node -e "{get}"', timeout=60)
    assert f"fetch {PACKAGE_VALUE}" in result.stdout, result.stderr
    assert f"get {PACKAGE_VALUE}" in result.stdout, result.stderr
    # Node's "EnvHttpProxyAgent is experimental" warning is not printed on every start.
    assert "EnvHttpProxyAgent" not in result.stderr and "Warning" not in result.stderr
    npm = prov.ssh(
        alias,
        "rm -rf /tmp/npmt && mkdir /tmp/npmt && cd /tmp/npmt && "
        f"{trust} npm install --no-audit --no-fund --registry https://{SITE}/npm/ {PACKAGE} "
        f"&& node -e 'console.log(require(\"{PACKAGE}\"))'",
        timeout=120,
    )
    assert npm.stdout.strip().endswith(PACKAGE_VALUE), npm.stdout + npm.stderr
    assert f"REQ GET /npm/{PACKAGE}/-/{PACKAGE}-1.0.0.tgz" in https_site.requests()


def test_agent_clis_reach_their_api_through_the_egress_proxy(
    prov: Prov, agents_env: dict[str, object], trust: str, https_site: HttpsSite
) -> None:
    """Each agent's own HTTP client, pointed at a stub API on an allowed name, gets there
    through the proxy (the stub answers 400, so each then stops with an API error)."""
    alias = str(agents_env["ssh_alias"])
    site = f"https://{SITE}"
    codex_provider = " ".join(
        f"-c {shlex.quote(setting)}"
        for setting in (
            'model_providers.stub.name="stub"',
            f'model_providers.stub.base_url="{site}/v1"',
            'model_providers.stub.env_key="OPENAI_API_KEY"',
            'model_providers.stub.wire_api="responses"',
            "model_provider=stub",
        )
    )
    gemini_settings = '{"security": {"auth": {"selectedType": "gemini-api-key"}}}'
    runs = {  # agent: (setup, variables, command, what the stub sees)
        "claude": (
            "true",
            f"ANTHROPIC_BASE_URL={site} ANTHROPIC_API_KEY=sk-stub",
            "claude -p hi",
            "REQ POST /v1/messages",
        ),
        "codex": (
            "true",
            "OPENAI_API_KEY=sk-stub",
            f"codex exec --skip-git-repo-check {codex_provider} hi",
            "REQ POST /v1/responses",
        ),
        "gemini": (
            f"mkdir -p ~/.gemini && echo {shlex.quote(gemini_settings)} > ~/.gemini/settings.json",
            f"GEMINI_CLI_TRUST_WORKSPACE=true GOOGLE_GEMINI_BASE_URL={site} GEMINI_API_KEY=sk-stub",
            "gemini -p hi",
            "REQ POST /v1beta/models/",
        ),
    }
    for agent, (setup, variables, command, request) in runs.items():
        before = https_site.requests().count(request)
        result = prov.ssh(
            alias, f"cd /tmp && {setup} && {trust} {variables} timeout 90 {command}", timeout=120
        )
        assert https_site.requests().count(request) > before, (agent, result.stderr[-2000:])
