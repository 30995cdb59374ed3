"""A local base image made with debootstrap from the host's own apt mirror.

Used when the requested base (ubuntu:24.04 by default) is neither present nor
pullable: air-gapped hosts, and machines that reach an apt mirror but no
container registry. The root gets the image's packages at bootstrap time, so
the image build itself needs no network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import BuildError

# Packages docker/sshd/Dockerfile needs; bootstrapping them in keeps the build offline.
IMAGE_PACKAGES = (
    "openssh-server",
    "sudo",
    "tmux",
    "git",
    "bash",
    "ca-certificates",
    "tini",
    "iproute2",
    "iptables",
    "curl",
    "python3",
    "python3-pip",
    "python3-venv",
    "rsync",
    "netcat-openbsd",
    "e2fsprogs",  # mkfs.ext4 for the home's own file system (not in trixie's minbase)
)


@dataclass(frozen=True)
class Distro:
    id: str  # debian / ubuntu
    codename: str  # bookworm / noble

    @property
    def tag(self) -> str:
        return f"prov-base:{self.id}-{self.codename}"

    @property
    def components(self) -> str:
        # tini lives in Ubuntu's universe component.
        return "main,universe" if self.id == "ubuntu" else "main"


def parse_os_release(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return fields


def host_distro(os_release: str) -> Distro | None:
    fields = parse_os_release(os_release)
    distro_id = fields.get("ID", "")
    codename = fields.get("VERSION_CODENAME", "")
    if distro_id in ("debian", "ubuntu") and codename:
        return Distro(distro_id, codename)
    return None


def mirror_from_sources(texts: list[str], codename: str) -> str | None:
    """The first apt mirror URI that serves `codename` (deb822 or one-line format)."""
    for text in texts:
        # deb822 stanzas are separated by blank lines.
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if (
                "deb" in fields.get("types", "").split()
                and codename in fields.get("suites", "").split()
            ):
                uris = fields.get("uris", "").split()
                if uris:
                    return uris[0]
        for line in text.splitlines():
            parts = re.sub(r"\[[^]]*\]", "", line).split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == codename:
                return parts[1]
    return None


def host_mirror(codename: str) -> str | None:
    if explicit := os.environ.get("PROV_APT_MIRROR"):
        return explicit
    texts = []
    apt = Path("/etc/apt")
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]:
        if path.is_file() and path.suffix in (".list", ".sources", ""):
            try:
                texts.append(path.read_text())
            except OSError:
                continue
    return mirror_from_sources(texts, codename)


def is_milestone(line: str) -> bool:
    """debootstrap's phase lines ("I: Unpacking the base system..."), not per-package ones."""
    return line.startswith("I: ") and (line.endswith("...") or "successfully" in line)


def bootstrap(
    distro: Distro,
    mirror: str,
    import_tar: Callable[[Path], None],
    on_line: Callable[[str], None],
    on_milestone: Callable[[str], None],
) -> None:
    """Run debootstrap into a temp dir, tar it, and hand the tar to `import_tar`."""
    if shutil.which("debootstrap") is None:
        raise BuildError(
            "Cannot make a local base image: debootstrap is not installed",
            f"The base image is not present and cannot be pulled, so prov wanted to build "
            f"{distro.tag} from the apt mirror {mirror}.",
            "install it (`sudo apt-get install debootstrap`), or load a Debian/Ubuntu image "
            "with `docker load` and pass it as --base-image.",
        )
    if os.geteuid() != 0:
        raise BuildError(
            "Cannot make a local base image without root",
            "debootstrap must run as root to create device nodes and set file owners.",
            "run this first `prov up` once with sudo, or pass an existing image as --base-image.",
        )
    with tempfile.TemporaryDirectory(prefix="prov-base-") as tmp:
        root = Path(tmp) / "root"
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--components={distro.components}",
            f"--include={','.join(IMAGE_PACKAGES)}",
            distro.codename,
            str(root),
            mirror,
        ]
        tail: list[str] = []
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None  # noqa: S101 - set by stdout=PIPE
            for line in proc.stdout:
                tail = [*tail[-24:], line.rstrip()]
                (on_milestone if is_milestone(line.rstrip()) else on_line)(line.rstrip())
        if proc.returncode != 0:
            raise BuildError(
                f"debootstrap of {distro.id} {distro.codename} failed (exit {proc.returncode})",
                f"Mirror: {mirror}.",
                "check that the mirror answers (`apt-get update`), or set PROV_APT_MIRROR.",
                log_tail="\n".join(tail),
            )
        # The apt lists and caches are dead weight in the image.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / junk).glob("*.deb" if "archives" in junk else "*_*"):
                item.unlink(missing_ok=True)
        tar_path = Path(tmp) / "root.tar"
        result = subprocess.run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(tar_path), "."],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BuildError(
                "Packing the bootstrapped root failed",
                result.stderr.strip()[-500:],
                "check free disk space in the temp dir.",
            )
        import_tar(tar_path)
