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
