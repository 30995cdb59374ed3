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
