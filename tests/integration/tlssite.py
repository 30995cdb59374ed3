"""An 'outside' HTTPS site for egress tests, served from a container on prov's
egress network: a test CA and a server certificate for its names, a dumb-HTTP
git repository, a pip index with one wheel, an npm registry with one package,
and an API stub that logs what agent CLIs send it. Every request is logged on
the container's stdout ("REQ METHOD PATH"), so a test can see what arrived.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PACKAGE = "provtest"
PACKAGE_VALUE = "through-the-proxy"

SERVER = r"""
import http.server, json, os, ssl, sys

class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def _log(self):
        print("REQ", self.command, self.path, flush=True)
        for name in ("authorization", "x-api-key", "x-goog-api-key"):
            for value in self.headers.get_all(name) or ():
                print("AUTH", self.path, name, value, flush=True)

    def do_GET(self):
        self._log()
        # npm asks for /npm/NAME: its metadata is NAME.json next to NAME/.
        plain = self.path.split("?", 1)[0]
        if plain == "/oauth/valid":  # would the endpoint take this refresh token now?
            token = self.path.partition("token=")[2]
            return self._json(200, {"valid": token in VALID})
        meta = os.path.join("/srv/site", plain.lstrip("/") + ".json")
        if plain.startswith("/npm/") and os.path.isfile(meta):
            body = open(meta, "rb").read()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def do_HEAD(self):
        self._log()
        super().do_HEAD()

    def _json(self, status, data):
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self._log()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.split("?", 1)[0] == "/oauth/token":
            return self._refresh(raw)
        if self.path.startswith("/slow/"):  # a client kept waiting (to look at it meanwhile)
            import time
            time.sleep(20)
        self._json(400, {"error": {"type": "invalid_request_error",
                                   "message": "prov test stub"}})

    def _refresh(self, raw):
        # An OAuth token endpoint whose refresh tokens rotate: each works once.
        try:
            form = json.loads(raw)
        except ValueError:
            import urllib.parse
            form = dict(urllib.parse.parse_qsl(raw.decode()))
        token = form.get("refresh_token", "")
        print("REFRESH", token, flush=True)
        if token not in VALID:
            return self._json(401, {"error": "invalid_grant",
                                    "error_description": "refresh token was already used"})
        VALID.discard(token)
        serial = len(ISSUED) + 1
        fresh = f"{token.rsplit('-', 1)[0]}-{serial}"
        ISSUED.append(fresh)
        VALID.add(fresh)
        self._json(200, {"access_token": jwt(f"at-{serial}", 3600), "id_token": jwt("id", 3600),
                         "refresh_token": fresh, "token_type": "Bearer", "expires_in": 3600})

JWT_FUNCTION

# Refresh tokens the stub accepts (each once); the tests start with these.
VALID = set(os.environ.get("STUB_REFRESH_TOKENS", "rt-codex-0 rt-claude-0").split())
ISSUED = []

os.chdir("/srv/site")
server = http.server.ThreadingHTTPServer(("", 443), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("/srv/cert.pem", "/srv/key.pem")
server.socket = context.wrap_socket(server.socket, server_side=True)
print("READY", flush=True)
server.serve_forever()
"""


def jwt(subject: str, lifetime: int) -> str:
    """An unsigned JWT with the claims the CLIs read (they do not verify it):
    the stub issues these, and tests write them into logins."""
    import base64
    import time

    def enc(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {
        "sub": subject,
        "exp": int(time.time()) + lifetime,
        "email": "agent@prov.test",
        "https://api.openai.com/auth": {"chatgpt_account_id": "acc-1", "chatgpt_plan_type": "pro"},
    }
    return enc({"alg": "none", "typ": "JWT"}) + "." + enc(claims) + ".sig"


def server_script() -> str:
    """The server, with `jwt` as defined here (the container has only /srv)."""
    import inspect

    return SERVER.replace("JWT_FUNCTION", inspect.getsource(jwt))


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def make_certs(directory: Path, names: list[str]) -> Path:
    """A CA (ca.pem, returned) and a certificate for `names` signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("prov test CA"))
        .issuer_name(_name("prov test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_path


def _wheel(site: Path) -> None:
    files = {
        f"{PACKAGE}/__init__.py": f"VALUE = {PACKAGE_VALUE!r}\n".encode(),
        f"{PACKAGE}-1.0.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 1.0\n".encode()
        ),
        f"{PACKAGE}-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: prov-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{PACKAGE}-1.0.dist-info/RECORD,,")
    files[f"{PACKAGE}-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel_name = f"{PACKAGE}-1.0-py3-none-any.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    (site / "files").mkdir()
    (site / "files" / wheel_name).write_bytes(buffer.getvalue())
    sha = hashlib.sha256(buffer.getvalue()).hexdigest()
    index = site / "simple" / PACKAGE
    index.mkdir(parents=True)
    (index / "index.html").write_text(
        f'<html><body><a href="/files/{wheel_name}#sha256={sha}">{wheel_name}</a></body></html>\n'
    )


def _npm_package(site: Path, base_url: str) -> None:
    package_json = json.dumps({"name": PACKAGE, "version": "1.0.0", "main": "index.js"})
    members = {
        "package/package.json": package_json.encode(),
        "package/index.js": f"module.exports = {json.dumps(PACKAGE_VALUE)};\n".encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, data in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    tgz = buffer.getvalue()
    tarballs = site / "npm" / PACKAGE / "-"
    tarballs.mkdir(parents=True)
    (tarballs / f"{PACKAGE}-1.0.0.tgz").write_bytes(tgz)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    metadata = {
        "name": PACKAGE,
        "dist-tags": {"latest": "1.0.0"},
        "versions": {
            "1.0.0": {
                "name": PACKAGE,
                "version": "1.0.0",
                "main": "index.js",
                "dist": {
                    "tarball": f"{base_url}/npm/{PACKAGE}/-/{PACKAGE}-1.0.0.tgz",
                    "shasum": hashlib.sha1(tgz).hexdigest(),  # noqa: S324 - npm's format
                    "integrity": integrity,
                },
            }
        },
    }
    (site / "npm" / f"{PACKAGE}.json").write_text(json.dumps(metadata))


def _git_repo(site: Path) -> None:
    work = site.parent / "work"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q", "-b", "main", str(work))
    (work / "README").write_text(PACKAGE_VALUE + "\n")
    run("git", "-C", str(work), "add", "README")
    run(
        "git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t",
        "commit", "-q", "-m", "one",
    )  # fmt: skip
    run("git", "clone", "-q", "--bare", str(work), str(site / "repo.git"))
    run("git", "-C", str(site / "repo.git"), "update-server-info")


def build(directory: Path, names: list[str]) -> Path:
    """Everything the server needs under `directory`; returns the CA file."""
    site = directory / "site"
    site.mkdir(parents=True)
    ca = make_certs(directory, names)
    (site / "hello.txt").write_text(PACKAGE_VALUE + "\n")
    _wheel(site)
    _npm_package(site, f"https://{names[0]}")
    _git_repo(site)
    (directory / "server.py").write_text(server_script())
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    directory.chmod(0o755)
    return ca
