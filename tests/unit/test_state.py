"""prov's record of an environment: what it saves is what it loads, and a
record an earlier prov wrote still loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner import state
from provisioner.config import ProvPaths
from provisioner.errors import ConfigError


def _record() -> state.EnvRecord:
    return state.EnvRecord(
        name="demo",
        port=2222,
        bind="127.0.0.1",
        project_dir="/p/demo",
        identity_file="/ph/envs/demo/id_ed25519",
        base_image="prov-base:x",
        ssh_host="127.0.0.1",
        ssh_port=2222,
    )


def test_a_saved_record_loads_as_it_was_and_only_its_owner_reads_it(tmp_path: Path) -> None:
    paths = ProvPaths(tmp_path)
    paths.env_dir("demo").mkdir(parents=True)
    state.save(paths, _record())
    assert state.load(paths, "demo") == _record()
    assert (paths.env_dir("demo") / state.RECORD_FILE).stat().st_mode & 0o777 == 0o600


def test_a_record_with_a_field_prov_no_longer_keeps_still_loads(tmp_path: Path) -> None:
    """Records written before `authorized_key_source` was dropped hold it."""
    paths = ProvPaths(tmp_path)
    paths.env_dir("demo").mkdir(parents=True)
    state.save(paths, _record())
    path = paths.env_dir("demo") / state.RECORD_FILE
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "authorized_key_source": "prov"}))
    assert state.load(paths, "demo") == _record()


def test_a_record_without_its_name_is_a_clear_error(tmp_path: Path) -> None:
    paths = ProvPaths(tmp_path)
    paths.env_dir("demo").mkdir(parents=True)
    (paths.env_dir("demo") / state.RECORD_FILE).write_text(json.dumps({"port": 1}))
    with pytest.raises(ConfigError, match="unreadable"):
        state.load(paths, "demo")


def test_the_recorded_engine_is_empty_without_a_readable_record(tmp_path: Path) -> None:
    paths = ProvPaths(tmp_path)
    assert state.engine_of(paths, "demo") == ""
    paths.env_dir("demo").mkdir(parents=True)
    (paths.env_dir("demo") / state.RECORD_FILE).write_text("{not json")
    assert state.engine_of(paths, "demo") == ""
    from dataclasses import replace

    state.save(paths, replace(_record(), engine="ssh://builder"))
    assert state.engine_of(paths, "demo") == "ssh://builder"
