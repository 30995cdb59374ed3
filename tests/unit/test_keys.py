"""Key generation, encodings, fingerprints and file permissions."""

from __future__ import annotations

import base64
import stat
import subprocess
from pathlib import Path

import pytest

from provisioner import keys
from provisioner.errors import ConfigError


def test_generated_key_matches_ssh_keygen_fingerprint(tmp_path: Path) -> None:
    """Our SHA256 fingerprint is the one OpenSSH prints for the same key."""
    pair = keys.load_or_create(tmp_path / "env", "id_ed25519", "prov-test")
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(tmp_path / "env" / "id_ed25519.pub")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split()[1] == pair.public.fingerprint
    # OpenSSH can derive the public half from our private key file.
    derived = subprocess.run(
        ["ssh-keygen", "-yf", str(tmp_path / "env" / "id_ed25519")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert derived.split()[1] == pair.public.blob_b64


def test_key_files_are_private(tmp_path: Path) -> None:
    """The state dir is 0700 and the private key 0600, as ssh demands."""
    keys.load_or_create(tmp_path / "env", "id_ed25519", "c")
    assert stat.S_IMODE((tmp_path / "env").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "env" / "id_ed25519").stat().st_mode) == 0o600


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    """A private key someone chmod-ed 0644 is put back to 0600 on next use."""
    keys.load_or_create(tmp_path / "env", "k", "c")
    (tmp_path / "env" / "k").chmod(0o644)
    (tmp_path / "env").chmod(0o755)
    keys.load_or_create(tmp_path / "env", "k", "c")
    assert stat.S_IMODE((tmp_path / "env" / "k").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "env").stat().st_mode) == 0o700


def test_key_is_stable_across_loads(tmp_path: Path) -> None:
    """A second load returns the same key: host keys survive down/up."""
    first = keys.load_or_create(tmp_path, "host", "c")
    second = keys.load_or_create(tmp_path, "host", "c")
    assert first.public.fingerprint == second.public.fingerprint
    assert first.private_openssh == second.private_openssh


def test_repr_never_shows_private_key(tmp_path: Path) -> None:
    """Private key material cannot leak through repr or str of the pair."""
    pair = keys.generate_ed25519("c")
    assert b"PRIVATE" in pair.private_openssh
    assert "PRIVATE" not in repr(pair)
    assert pair.private_openssh.decode().splitlines()[1] not in repr(pair)


def test_user_public_key_parsed(tmp_path: Path) -> None:
    """An ssh-keygen-made .pub is accepted with its comment."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@host", "-f", str(tmp_path / "k")],
        check=True,
    )
    pub = keys.read_public_key_file(tmp_path / "k.pub")
    assert pub.key_type == "ssh-ed25519"
    assert pub.comment == "me@host"


def test_private_key_passed_as_public_is_explained(tmp_path: Path) -> None:
    """Passing the private key to --key says so instead of failing obscurely."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True
    )
    with pytest.raises(ConfigError) as info:
        keys.read_public_key_file(tmp_path / "k")
    assert "private key" in info.value.paragraph() or "one key line" in info.value.paragraph()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "this is not a key",
        "ssh-ed25519 notbase64!!",
        "ssh-rsa AAAA",
        "ssh-ed25519 AAAA\nssh-ed25519 BBBB",
    ],
)
@pytest.mark.parametrize("verify", [True, False])
def test_malformed_public_key_rejected(text: str, verify: bool) -> None:
    """Anything that is not one valid OpenSSH key line is a ConfigError, also
    with the stdlib-only check prov uses for its own stored keys."""
    with pytest.raises(ConfigError):
        keys.parse_public_key(text, verify=verify)


def test_blob_of_another_type_rejected_without_cryptography() -> None:
    """The stdlib check reads the type inside the blob: an ed25519 blob labelled
    ssh-rsa, or a truncated blob, is refused."""
    blob = keys.generate_ed25519("c").public.blob_b64
    with pytest.raises(ConfigError):
        keys.parse_public_key(f"ssh-rsa {blob}", verify=False)
    truncated = base64.b64encode(base64.b64decode(blob)[:15]).decode()
    with pytest.raises(ConfigError):
        keys.parse_public_key(f"ssh-ed25519 {truncated}", verify=False)
    assert keys.parse_public_key(f"ssh-ed25519 {blob} c", verify=False).blob_b64 == blob


def test_bad_key_material_caught_by_verify() -> None:
    """A well-formed blob with an impossible key (wrong length) passes the
    structural check but not cryptography's, which user keys go through."""
    blob = base64.b64decode(keys.generate_ed25519("c").public.blob_b64)
    bad = base64.b64encode(blob[:-1]).decode()
    keys.parse_public_key(f"ssh-ed25519 {bad}", verify=False)
    with pytest.raises(ConfigError):
        keys.parse_public_key(f"ssh-ed25519 {bad}")


def test_missing_key_file_rejected(tmp_path: Path) -> None:
    """A --key path that does not exist names the path."""
    with pytest.raises(ConfigError, match="does not exist"):
        keys.read_public_key_file(tmp_path / "nope.pub")
