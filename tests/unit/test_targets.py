"""Which engine prov talks to: --docker-host > DOCKER_HOST > DOCKER_CONTEXT > the
current docker context > the local socket, read from a Docker config dir as the
docker CLI writes it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from provisioner.engine import targets
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

    def resolve(flag: str | None = None, **more: str) -> targets.EngineTarget:
        return targets.resolve(targets.Asked.of(flag, None), {**env, **more})

    assert resolve().host == "unix:///run/other.sock"  # the current context
    assert "docker context use" in resolve().source
    assert resolve(DOCKER_CONTEXT="remote").host == "ssh://builder"
    assert resolve(DOCKER_CONTEXT="default").host == targets.DEFAULT_HOST
    with_host = resolve(DOCKER_CONTEXT="remote", DOCKER_HOST="tcp://127.0.0.1:2375")
    assert (with_host.host, with_host.source) == ("tcp://127.0.0.1:2375", "DOCKER_HOST")
    flagged = resolve("unix:///x.sock", DOCKER_HOST="tcp://h:1")
    assert (flagged.host, flagged.source) == ("unix:///x.sock", "--docker-host")
    (config / "config.json").write_text("{}")
    assert resolve().host == targets.DEFAULT_HOST


def test_bad_settings_are_named(tmp_path: Path) -> None:
    config = tmp_path / "docker"
    config.mkdir()
    env = {"DOCKER_CONFIG": str(config)}
    with pytest.raises(ConfigError, match="'gone' does not exist"):
        targets.resolve(targets.NOTHING, {**env, "DOCKER_CONTEXT": "gone"})
    with pytest.raises(UsageError, match="not an engine address"):
        targets.resolve(targets.NOTHING, {**env, "DOCKER_HOST": "myhost"})
    (config / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="Docker config"):
        targets.resolve(targets.NOTHING, env)


def test_local_ssh_or_refused() -> None:
    """Environments run on this machine's engine or one reached over SSH; a remote
    tcp:// engine is refused with the way out (ssh://)."""
    local = ("unix:///var/run/docker.sock", "tcp://127.0.0.1:2375", "tcp://localhost:2375")
    for host in local:
        assert targets.EngineTarget(host, "x").local, host
        targets.require_supported(targets.EngineTarget(host, "x"), "prov up")
    remote = targets.EngineTarget("ssh://builder", "DOCKER_CONTEXT=builder")
    assert not remote.local
    targets.require_supported(remote, "prov up")
    target = targets.EngineTarget("tcp://10.0.0.5:2376", "DOCKER_CONTEXT=builder")
    assert not target.local
    with pytest.raises(UsageError) as caught:
        targets.require_supported(target, "prov up")
    assert "DOCKER_CONTEXT=builder" in caught.value.what
    assert "ssh://" in caught.value.hint


def test_named_engines_are_kept_in_a_file_edited_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prov engine add/rm` edit ~/.config/prov/engines.toml keeping the user's comments;
    --engine NAME resolves to it and outranks DOCKER_HOST; --engine with --docker-host,
    or an unknown name, is refused."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = targets.engines_file()
    path.parent.mkdir(parents=True)
    path.write_text("# my engines\n")
    targets.add_named("builder", "ssh://me@builder")
    targets.add_named("local2", "unix:///run/other.sock")
    assert targets.named() == {"builder": "ssh://me@builder", "local2": "unix:///run/other.sock"}
    with pytest.raises(UsageError, match="exists already"):
        targets.add_named("builder", "ssh://other")
    with pytest.raises(UsageError, match="Invalid engine name"):
        targets.add_named("Bad.Name", "ssh://x")
    env = {"XDG_CONFIG_HOME": str(tmp_path), "DOCKER_HOST": "tcp://127.0.0.1:2375"}
    builder = targets.Asked(engine="builder")
    chosen = targets.resolve(builder, env)
    assert (chosen.host, chosen.source) == ("ssh://me@builder", "engine 'builder'")
    assert targets.resolve(targets.NOTHING, env).source == "DOCKER_HOST"
    assert targets.explicit(builder, {}) and not targets.explicit(targets.NOTHING, {})
    with pytest.raises(UsageError, match="both name an engine"):
        targets.resolve(targets.Asked("unix:///x.sock", "builder"), env)
    with pytest.raises(UsageError, match="No engine named 'nope'"):
        targets.resolve(targets.Asked(engine="nope"), env)
    with pytest.raises(UsageError, match="--engine auto chooses"):
        targets.resolve(targets.Asked.of(None, " auto "), env)
    targets.remove_named("builder")
    assert path.read_text().startswith("# my engines\n")
    assert targets.named() == {"local2": "unix:///run/other.sock"}


def test_an_environment_stays_on_the_engine_it_was_made_on_unless_one_is_named() -> None:
    """for_env takes the record's engine as a value: nothing explicit (or
    `--engine auto`) keeps it; --docker-host or DOCKER_HOST names another."""
    bare: dict[str, str] = {"DOCKER_CONFIG": "/nonexistent"}
    kept = targets.for_env("demo", "ssh://builder", targets.NOTHING, bare)
    assert (kept.host, kept.source) == ("ssh://builder", "where 'demo' was made")
    auto = targets.for_env("demo", "ssh://builder", targets.Asked(engine="auto"), bare)
    assert auto.host == "ssh://builder"
    named = targets.for_env("demo", "ssh://builder", targets.Asked.of("unix:///run/o.sock", None))
    assert named.host == "unix:///run/o.sock"
    env = targets.for_env("demo", "ssh://builder", targets.NOTHING, {"DOCKER_HOST": "tcp://h:2375"})
    assert env.host == "tcp://h:2375"
    assert targets.for_env("demo", "", targets.NOTHING, bare).host.startswith("unix://")
