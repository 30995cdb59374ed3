"""Which engine prov talks to: --docker-host > DOCKER_HOST > DOCKER_CONTEXT > the
current docker context > the local socket, read from a Docker config dir as the
docker CLI writes it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from provisioner import engines
from provisioner.errors import ConfigError, UsageError


def _context(config: Path, name: str, host: str) -> None:
    meta = config / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host}}})
    )


def test_resolution_order(tmp_path: Path) -> None:
    config = tmp_path / "docker"
    _context(config, "remote", "ssh://builder")
    _context(config, "other-sock", "unix:///run/other.sock")
    (config / "config.json").write_text(json.dumps({"currentContext": "other-sock"}))
    env = {"DOCKER_CONFIG": str(config)}

    def resolve(flag: str | None = None, **more: str) -> engines.EngineTarget:
        return engines.resolve({**env, **more}, flag=flag or "")

    assert resolve().host == "unix:///run/other.sock"  # the current context
    assert "docker context use" in resolve().source
    assert resolve(DOCKER_CONTEXT="remote").host == "ssh://builder"
    assert resolve(DOCKER_CONTEXT="default").host == engines.DEFAULT_HOST
    with_host = resolve(DOCKER_CONTEXT="remote", DOCKER_HOST="tcp://127.0.0.1:2375")
    assert (with_host.host, with_host.source) == ("tcp://127.0.0.1:2375", "DOCKER_HOST")
    flagged = resolve("unix:///x.sock", DOCKER_HOST="tcp://h:1")
    assert (flagged.host, flagged.source) == ("unix:///x.sock", "--docker-host")
    (config / "config.json").write_text("{}")
    assert resolve().host == engines.DEFAULT_HOST


def test_bad_settings_are_named(tmp_path: Path) -> None:
    config = tmp_path / "docker"
    config.mkdir()
    env = {"DOCKER_CONFIG": str(config)}
    with pytest.raises(ConfigError, match="'gone' does not exist"):
        engines.resolve({**env, "DOCKER_CONTEXT": "gone"}, flag="")
    with pytest.raises(UsageError, match="not an engine address"):
        engines.resolve({**env, "DOCKER_HOST": "myhost"}, flag="")
    (config / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="Docker config"):
        engines.resolve(env, flag="")


def test_local_or_remote() -> None:
    local = ("unix:///var/run/docker.sock", "tcp://127.0.0.1:2375", "tcp://localhost:2375")
    for host in local:
        assert engines.EngineTarget(host, "x").local, host
        engines.require_local(engines.EngineTarget(host, "x"), "prov up")
    for host in ("ssh://builder", "tcp://10.0.0.5:2376"):
        target = engines.EngineTarget(host, "DOCKER_CONTEXT=builder")
        assert not target.local
        with pytest.raises(UsageError) as caught:
            engines.require_local(target, "prov up")
        assert "DOCKER_CONTEXT=builder" in caught.value.what
