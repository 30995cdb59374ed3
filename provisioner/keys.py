"""SSH keys: client and host key pairs, OpenSSH encodings, fingerprints, 0600 files.

Private key bytes live only in `KeyPair.private_openssh`, which is left out of
`repr`, so a key can never end up in a log line or a traceback by accident.
cryptography (~0.1 s to import) is loaded only to make a key or to check a
key the user hands in; prov's own stored keys are read with the stdlib.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.errors import ConfigError
from provisioner.fsutil import atomic_write, ensure_private_dir, read_user_file

CLIENT_KEY_NAME = "id_ed25519"
HOST_KEY_NAME = "ssh_host_ed25519_key"


@dataclass(frozen=True)
class PublicKey:
    """One OpenSSH public key line: `TYPE BASE64 [COMMENT]`."""

    key_type: str
    blob_b64: str
    comment: str = ""

    @property
    def line(self) -> str:
        return f"{self.key_type} {self.blob_b64}" + (f" {self.comment}" if self.comment else "")

    @property
    def fingerprint(self) -> str:
        """OpenSSH's `SHA256:...` fingerprint, as `ssh-keygen -lf` prints it."""
        digest = hashlib.sha256(base64.b64decode(self.blob_b64)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class KeyPair:
    public: PublicKey
    private_openssh: bytes = field(repr=False)


def parse_public_key(text: str, source: str = "public key", verify: bool = True) -> PublicKey:
    """Parse one OpenSSH public key line; `verify` also checks the key material
    with cryptography (for keys from the user, not for prov's own files)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise ConfigError(
            f"Cannot use {source} as an SSH public key",
            f"Expected exactly one key line, found {len(lines)}.",
            "pass the .pub file of a key pair, e.g. --key ~/.ssh/id_ed25519.pub.",
        )
    parts = lines[0].split(None, 2)
    if len(parts) < 2:
        raise ConfigError(
            f"Cannot use {source} as an SSH public key",
            "The line does not have the form 'TYPE BASE64 [COMMENT]'.",
            "pass the .pub file of a key pair (not the private key).",
        )
    if not _blob_names(parts[1], parts[0]) or (verify and not _loads(parts[0], parts[1])):
        kind = "a private key" if "PRIVATE KEY" in text else "not a valid OpenSSH public key"
        raise ConfigError(
            f"Cannot use {source} as an SSH public key",
            f"It is {kind}.",
            "pass the .pub file of a key pair, e.g. --key ~/.ssh/id_ed25519.pub.",
        )
    return PublicKey(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


def _blob_names(blob_b64: str, key_type: str) -> bool:
    """The base64 blob decodes and starts with the key type it claims (RFC 4253 6.6)."""
    try:
        blob = base64.b64decode(blob_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    size = int.from_bytes(blob[:4], "big")
    return len(blob) > 4 + size and blob[4 : 4 + size] == key_type.encode()


def _loads(key_type: str, blob_b64: str) -> bool:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        load_ssh_public_key(f"{key_type} {blob_b64}".encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def read_public_key_file(path: Path) -> PublicKey:
    if not path.exists():
        raise ConfigError(
            f"Public key file {path} does not exist",
            "",
            "pass an existing .pub file to --key, or leave --key out to let prov make a key.",
        )
    return parse_public_key(read_user_file(path, "--key", limit=64 * 1024), str(path))


def generate_ed25519(comment: str) -> KeyPair:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    private = ed25519.Ed25519PrivateKey.generate()
    private_bytes = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_line = (
        private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    key_type, blob = public_line.split()[:2]
    return KeyPair(PublicKey(key_type, blob, comment), private_bytes)


def load_or_create(directory: Path, filename: str, comment: str) -> KeyPair:
    """Return the key pair stored as `directory/filename[.pub]`, creating it once.

    The directory is made 0700 and the private key 0600 (tightened if a user
    loosened them), so the key is usable by OpenSSH, which refuses loose keys.
    """
    ensure_private_dir(directory)
    private_path = directory / filename
    public_path = directory / (filename + ".pub")
    if private_path.exists() and public_path.exists():
        if private_path.stat().st_mode & 0o077:
            private_path.chmod(0o600)
        public = parse_public_key(public_path.read_text(), str(public_path), verify=False)
        return KeyPair(public, private_path.read_bytes())
    pair = generate_ed25519(comment)
    # Private first: a crash in between leaves no public key pointing at nothing.
    atomic_write(private_path, pair.private_openssh, 0o600)
    atomic_write(public_path, pair.public.line + "\n", 0o644)
    return pair


def read_public(directory: Path, filename: str) -> PublicKey | None:
    """The stored public half of `directory/filename`, or None; never creates
    a key (read-only commands must not replace a lost key silently)."""
    try:
        text = (directory / (filename + ".pub")).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return parse_public_key(text, str(directory / (filename + ".pub")), verify=False)
