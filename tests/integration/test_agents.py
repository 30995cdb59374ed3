"""The full image: Claude Code, Codex and Gemini CLI installed from the npm registry,
behind this machine's TLS-inspecting proxy. Slow: the first build takes minutes."""

from __future__ import annotations

import json

import docker
import pytest

from provisioner.config import AGENT_VERSIONS
from tests.integration.conftest import Prov
from tests.integration.test_environments import _pane_output

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agents_env(prov: Prov) -> dict[str, object]:
    name = prov.name("agents")
    prov.project(name)
    result = prov.run(
        "up", name, "--json", env={"PROV_AGENTS": "claude,codex,gemini"}, timeout=1800
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout))


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
