"""The image tag: a content hash of the image inputs."""

from __future__ import annotations

from pathlib import Path

from provisioner.image import context_hash, docker_context


def test_hash_is_stable_and_input_sensitive(tmp_path: Path) -> None:
    """Same inputs, same tag; any file, mode, build arg or base change gives a new one."""
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    (tmp_path / "entry.sh").write_text("#!/bin/sh\n")
    base = context_hash(tmp_path, {"A": "1"}, "sha256:base")
    assert context_hash(tmp_path, {"A": "1"}, "sha256:base") == base
    assert context_hash(tmp_path, {"A": "2"}, "sha256:base") != base
    assert context_hash(tmp_path, {"A": "1"}, "sha256:other") != base
    (tmp_path / "entry.sh").chmod(0o755)
    moded = context_hash(tmp_path, {"A": "1"}, "sha256:base")
    assert moded != base
    (tmp_path / "entry.sh").write_text("#!/bin/sh\necho\n")
    assert context_hash(tmp_path, {"A": "1"}, "sha256:base") != moded


def test_sshd_context_is_found() -> None:
    """The sshd layer's Dockerfile ships with prov."""
    assert (docker_context("sshd") / "Dockerfile").is_file()
    assert (docker_context("sshd") / "entrypoint.sh").is_file()


def test_hash_covers_exactly_what_dockerignore_lets_through(tmp_path: Path) -> None:
    """Editing an ignored file (the project's sources) changes nothing; editing a file
    Docker gets changes the hash."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY tool /tool\n")
    (tmp_path / "tool").write_text("v1")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("print(1)")
    (tmp_path / ".dockerignore").write_text("# sources are mounted, not built in\nsrc\n")
    first = context_hash(tmp_path, {}, "base")
    (tmp_path / "src" / "main.py").write_text("print(2)")
    (tmp_path / "src" / "new.py").write_text("x = 1")
    assert context_hash(tmp_path, {}, "base") == first
    (tmp_path / "tool").write_text("v2")
    assert context_hash(tmp_path, {}, "base") != first


def _npm_fetch():  # type: ignore[no-untyped-def]
    import importlib.util

    path = Path(__file__).parents[2] / "docker" / "agents" / "npm-fetch.py"
    spec = importlib.util.spec_from_file_location("npm_fetch", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_npm_fetch_picks_the_newest_release_of_a_prefix() -> None:
    fetch = _npm_fetch()
    versions = ["22.9.0", "22.10.1", "22.12.0-rc.1", "23.0.0", "21.7.3", "22.2.0"]
    assert fetch.choose(versions, "22") == "22.10.1"
    assert fetch.choose(versions, "22.9") == "22.9.0"
    assert fetch.choose(versions, "22.2.0") == "22.2.0"
    assert fetch.choose(versions, "24") is None


def test_npm_fetch_checks_integrity() -> None:
    import base64
    import hashlib

    import pytest

    fetch = _npm_fetch()
    data = b"tarball bytes"
    good = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    fetch.verify(data, {"integrity": good})
    with pytest.raises(ValueError, match="sha512"):
        fetch.verify(data + b"!", {"integrity": good})
    fetch.verify(data, {"shasum": hashlib.sha1(data).hexdigest()})  # noqa: S324 - npm's format
    with pytest.raises(ValueError, match="no checksum"):
        fetch.verify(data, {})


def test_stage_images_read_off_a_classic_build() -> None:
    """The image each earlier stage of a multi-stage build ends with (what would
    be left untagged), not the last stage's, which gets the tag."""
    from provisioner.engine.api import StageImages

    stages = StageImages()
    for line in [
        "Step 1/9 : ARG BASE_IMAGE",
        "Step 2/9 : FROM ${BASE_IMAGE} AS prov-ca",
        " ---> 1111aaaa2222",
        "Step 3/9 : RUN update-ca-certificates",
        " ---> Running in 9999ffff0000",
        "Removing intermediate container 9999ffff0000",
        " ---> 3333bbbb4444",
        "Step 4/9 : FROM prov-ca AS prov-node",
        " ---> 3333bbbb4444",
        "Step 5/9 : RUN sh build.sh node",
        " ---> Using cache",
        " ---> 5555cccc6666",
        "Step 6/9 : FROM prov-ca",
        " ---> 3333bbbb4444",
        "Step 7/9 : COPY --from=prov-node /opt /usr/local/",
        " ---> 7777dddd8888",
        "Successfully built 7777dddd8888",
    ]:
        stages.see(line)
    assert stages.earlier == ("3333bbbb4444", "5555cccc6666")


def test_a_layer_of_cas_the_image_has_already_adds_nothing() -> None:
    """The CA-only layer is skipped when the parent's trust store holds every
    CA (whatever the line breaks), and built when one is missing."""
    from provisioner.image import _trusts_all

    body = "MIIBszCCAVmgAwIBAgIU" + "A" * 70
    ca = f"-----BEGIN CERTIFICATE-----\n{body[:64]}\n{body[64:]}\n-----END CERTIFICATE-----\n"
    other = ca.replace("MIIB", "MIIC")
    bundle = f"# distro CA\n-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
    assert _trusts_all(bundle, ca.encode())
    assert not _trusts_all(bundle, (ca + other).encode())
    assert _trusts_all(bundle, b"")
