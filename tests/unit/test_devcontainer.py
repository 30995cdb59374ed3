"""devcontainer.json as prov reads it: JSONC, variables, runArgs mapped or
refused (naming the line), metadata merged, what is not honoured named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner import devcontainer as dc
from provisioner.errors import ConfigError, UsageError


def _write(project: Path, text: str, rel: str = ".devcontainer/devcontainer.json") -> Path:
    path = project / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _ctx(project: Path, **env: str) -> dc.Context:
    return dc.Context(project, "demo", {"HOME": "/home/u", **env})


def test_jsonc_with_comments_and_trailing_commas(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '{\n  // the image\n  "image": "debian:12", /* inline */\n'
        '  "containerEnv": {"A": "1",},\n}\n',
    )
    found = dc.resolve(path, _ctx(tmp_path))
    assert found.image == "debian:12"
    assert found.container_env == (("A", "1"),)
    assert found.unsupported == ()


def test_find_prefers_the_folder_then_the_root_file(tmp_path: Path) -> None:
    assert dc.find(tmp_path, None) is None
    root = _write(tmp_path, "{}", ".devcontainer.json")
    assert dc.find(tmp_path, None) == root
    folder = _write(tmp_path, "{}")
    assert dc.find(tmp_path, None) == folder
    with pytest.raises(ConfigError, match="does not exist"):
        dc.find(tmp_path, tmp_path / "nope.json")


def test_a_broken_file_names_where(tmp_path: Path) -> None:
    path = _write(tmp_path, '{\n "image": "x",\n "containerEnv": }\n')
    with pytest.raises(ConfigError) as err:
        dc.resolve(path, _ctx(tmp_path))
    assert str(path) in err.value.seen and ":3" in err.value.seen


def test_variables(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        json.dumps(
            {
                "image": "debian:12",
                "containerEnv": {"WS": "${containerWorkspaceFolder}", "H": "${localEnv:HOME}"},
                "remoteEnv": {
                    "R": "${containerEnv:WS}/bin",
                    "D": "${localEnv:MISSING:fallback}",
                    "B": "${localWorkspaceFolderBasename}",
                },
            }
        ),
    )
    found = dc.resolve(path, _ctx(tmp_path))
    assert dict(found.container_env) == {"WS": str(tmp_path), "H": "/home/u"}
    assert dict(found.remote_env) == {
        "R": f"{tmp_path}/bin",
        "D": "fallback",
        "B": tmp_path.name,
    }


@pytest.mark.parametrize(
    "args",
    [
        ["--privileged"],
        ["--cap-add=SYS_ADMIN"],
        ["--cap-add", "NET_ADMIN"],
        ["--network=host"],
        ["--net", "host"],
        ["--pid=host"],
        ["-v", "/var/run/docker.sock:/var/run/docker.sock"],
        ["--security-opt", "seccomp=unconfined"],
        ["--device=/dev/kvm"],
        ["-u", "root"],
    ],
)
def test_run_args_that_break_containment_are_refused_naming_the_line(
    tmp_path: Path, args: list[str]
) -> None:
    text = '{\n  "image": "debian:12",\n  "runArgs": ' + json.dumps(args) + "\n}\n"
    path = _write(tmp_path, text)
    with pytest.raises(UsageError) as err:
        dc.resolve(path, _ctx(tmp_path))
    assert f"{path} line 3" in err.value.what
    assert "Nothing was created" in err.value.seen


def test_root_user_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"image": "debian:12",\n"remoteUser": "root"}')
    with pytest.raises(UsageError, match="line 2"):
        dc.resolve(path, _ctx(tmp_path))
    path = _write(tmp_path, '{"image": "debian:12", "remoteUser": "vscode"}')
    found = dc.resolve(path, _ctx(tmp_path))
    assert any("vscode" in n and "agent" in n for n in found.notes)


def test_run_args_prov_maps(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        json.dumps(
            {
                "image": "debian:12",
                "runArgs": [
                    "--memory=2g",
                    "--cpus",
                    "1.5",
                    "-e",
                    "X=1",
                    "--gpus",
                    "all",
                    "-v",
                    "${localWorkspaceFolder}/data:/data:ro",
                    "--shm-size=1g",
                    "--network=bridge",
                ],
            }
        ),
    )
    found = dc.resolve(path, _ctx(tmp_path))
    assert (found.memory, found.cpus, found.gpu) == ("2g", 1.5, "all")
    assert found.env == (("X", "1"),)
    assert found.mounts == ((f"{tmp_path}/data", "/data", True),)
    assert "runArgs --shm-size 1g" in found.unsupported
    assert any(u.startswith("runArgs --network bridge") for u in found.unsupported)


def test_lifecycle_commands_forms_and_order(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        json.dumps(
            {
                "image": "debian:12",
                "postCreateCommand": {"a": "echo a", "b": ["touch", "/tmp/b"]},
                "onCreateCommand": "echo on",
                "postStartCommand": ["date"],
                "initializeCommand": "rm -rf ~",
                "postAttachCommand": "x",
            }
        ),
    )
    found = dc.resolve(path, _ctx(tmp_path))
    phases = [[c.phase for c in group] for group in found.create_commands]
    assert phases == [["onCreateCommand"], ["postCreateCommand", "postCreateCommand"]]
    assert found.create_commands[0][0].argv == ("/bin/sh", "-c", "echo on")
    assert [c.label for c in found.create_commands[1]] == ["a", "b"]
    assert found.create_commands[1][1].argv == ("touch", "/tmp/b")
    assert found.start_commands[0][0].argv == ("date",)
    # initializeCommand would run on the host: named, never run.
    assert any(u.startswith("initializeCommand") for u in found.unsupported)
    assert any(u.startswith("postAttachCommand") for u in found.unsupported)


def test_metadata_comes_first_and_features_cannot_ask_for_privileges(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        json.dumps({"image": "x:1", "containerEnv": {"A": "file"}, "postCreateCommand": "two"}),
    )
    meta = dc.metadata_entries(
        json.dumps(
            [{"id": "feat", "containerEnv": {"A": "feat", "B": "feat"}, "postCreateCommand": "one"}]
        )
    )
    found = dc.resolve(path, _ctx(tmp_path), meta)
    assert dict(found.container_env) == {"A": "file", "B": "feat"}
    # The feature's group, then the file's: one after the other, not in parallel.
    assert [[c.argv[2] for c in group] for group in found.create_commands] == [["one"], ["two"]]
    bad = dc.metadata_entries(json.dumps([{"id": "dind", "privileged": True}]))
    with pytest.raises(UsageError, match="feature dind"):
        dc.resolve(path, _ctx(tmp_path), bad)


def test_build_paths_stay_in_the_project(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM debian:12\n")
    path = _write(
        tmp_path,
        json.dumps({"build": {"dockerfile": "../Dockerfile", "context": "..", "args": {"V": "1"}}}),
    )
    found = dc.resolve(path, _ctx(tmp_path))
    assert found.build is not None
    assert found.build.dockerfile == (tmp_path / "Dockerfile").resolve()
    assert found.build.context == tmp_path.resolve()
    assert found.build.args == (("V", "1"),)
    outside = _write(tmp_path, json.dumps({"build": {"dockerfile": "Dockerfile", "context": "/"}}))
    (tmp_path / ".devcontainer" / "Dockerfile").write_text("FROM x\n")
    with pytest.raises(UsageError, match="outside the project"):
        dc.resolve(outside, _ctx(tmp_path))


def test_ports_mounts_and_unknown_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        json.dumps(
            {
                "image": "x:1",
                "forwardPorts": [8000, "localhost:9000", "db:5432"],
                "mounts": [
                    "source=${localWorkspaceFolder}/cache,target=/cache,type=bind",
                    {"source": "vol", "target": "/v", "type": "volume"},
                ],
                "workspaceFolder": "/workspaces/x",
                "hostRequirements": {"gpu": "optional"},
                "frobnicate": 1,
            }
        ),
    )
    found = dc.resolve(path, _ctx(tmp_path))
    assert found.forward_ports == (8000, 9000)
    assert found.mounts == ((f"{tmp_path}/cache", "/cache", False),)
    assert found.gpu == "optional"
    text = "\n".join(found.unsupported)
    for needle in ("db:5432", "type volume", "workspaceFolder", "frobnicate"):
        assert needle in text


def test_compose_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps({"dockerComposeFile": "c.yml", "service": "app"}))
    with pytest.raises(ConfigError, match="Docker Compose"):
        dc.resolve(path, _ctx(tmp_path))


def test_with_image_counts_the_files_entry_once(tmp_path: Path) -> None:
    """The devcontainers CLI records the file's own entry last in the image it
    built (a prov-devcontainer base): merged once. On any other base (--from),
    the image's entries come first and the file after them."""
    path = _write(
        tmp_path,
        json.dumps({"image": "x:1", "features": {"./f": {}}, "postCreateCommand": "file"}),
    )
    ctx = _ctx(tmp_path)
    first = dc.resolve(path, ctx)
    label = json.dumps([{"id": "./f", "postCreateCommand": "feat"}, {"postCreateCommand": "file"}])
    built = dc.with_image(first, ctx, label, f"{dc.DEVCONTAINER_REPO}:abc")
    assert [g[0].argv[2] for g in built.create_commands] == ["feat", "file"]
    other = dc.with_image(first, ctx, label, "user/image:1")
    assert [g[0].argv[2] for g in other.create_commands] == ["feat", "file", "file"]
    assert dc.with_image(first, ctx, None, "user/image:1") is first
