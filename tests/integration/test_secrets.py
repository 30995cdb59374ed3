"""Secrets the agent uses but cannot read, attacked as the agent would: the
environment's proxy puts the real value into requests to the secret's host
only (TLS opened with the environment's own CA, the real host's certificate
checked against this machine's trust), and the agent finds the placeholder
wherever it looks. Against the tests' HTTPS site (tlssite), which logs the
auth headers it gets."""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import (
    ALLOWED_DOMAIN,
    DENIED_DOMAIN,
    DENIED_SITE,
    SITE,
    HttpsSite,
    Prov,
    files_holding,
)

KEY = "sk-real-KEY-6a1f0c9e2b7d4a58"  # x-api-key for SITE
TOKEN = "ghp_realTOKEN8c3e5b1a9f"  # Authorization: Bearer, for SITE
BUILTIN = "sk-ant-real-BUILTIN-77d2e1"  # ANTHROPIC_API_KEY set on this machine
VALUES = (KEY, TOKEN, BUILTIN)


@pytest.fixture(scope="module")
def trusting(prov: Prov, https_site: HttpsSite, tmp_path_factory: pytest.TempPathFactory) -> Prov:
    """prov run by a user whose machine trusts the site's CA (SSL_CERT_FILE: the
    system's bundle and the site's CA), as it trusts the real API hosts."""
    bundle = tmp_path_factory.mktemp("trust") / "bundle.pem"
    bundle.write_bytes(
        Path("/etc/ssl/certs/ca-certificates.crt").read_bytes() + https_site.ca.read_bytes()
    )
    return replace(
        prov, env={**prov.env, "SSL_CERT_FILE": str(bundle), "ANTHROPIC_API_KEY": BUILTIN}
    )


@pytest.fixture(scope="module")
def injected(trusting: Prov, https_site: HttpsSite) -> tuple[str, str]:
    """An environment with two secrets for SITE and the built-in Anthropic key;
    DENIED_DOMAIN allowed too (DENIED_SITE is a host with no secret). Its
    `up` output, for the check that prov prints no value."""
    name = trusting.name("secrets")
    # The site's CA, for the agent's own tunnels to a host with no secret.
    (trusting.project(name) / "site-ca.pem").write_bytes(https_site.ca.read_bytes())
    result = trusting.run(
        "up",
        name,
        "--allow",
        ALLOWED_DOMAIN,
        "--allow",
        DENIED_DOMAIN,
        "--secret",
        f"API_KEY={KEY}@{SITE}:x-api-key",
        "--secret",
        f"GH_TOKEN={TOKEN}@{SITE}",
        check=True,
    )
    return f"prov-{name}", result.stdout + result.stderr


def _post(
    prov: Prov, alias: str, url: str, *headers: str, trust: str = ""
) -> subprocess.CompletedProcess[str]:
    """curl inside, through the proxy (HTTPS_PROXY), trusting what the environment
    trusts (or only `trust`)."""
    args = " ".join(f'-H "{h}"' for h in headers)  # "": the shell expands $VARIABLES
    if trust:
        args += f" --cacert {trust}"
    return prov.ssh(alias, f"curl -sS -m 20 -X POST -d x {args} {shlex.quote(url)}")


def _site_ca(prov: Prov, alias: str) -> Path:
    return prov.projects / alias.removeprefix("prov-") / "site-ca.pem"


def _auth_since(site: HttpsSite, before: int) -> list[str]:
    return [ln for ln in site.requests().splitlines()[before:] if ln.startswith("AUTH ")]


def test_inside_only_placeholders(trusting: Prov, injected: tuple[str, str]) -> None:
    alias, _ = injected
    env = trusting.ssh(alias, "env").stdout
    assert "API_KEY=prov-placeholder-api-key" in env
    assert "GH_TOKEN=prov-placeholder-gh-token" in env
    assert "ANTHROPIC_API_KEY=prov-placeholder-anthropic-api-key" in env
    assert not any(v in env for v in VALUES)


def test_the_site_gets_the_real_values_in_their_headers(
    trusting: Prov, injected: tuple[str, str], https_site: HttpsSite
) -> None:
    """What the agent sends in the secret's header (the placeholder, or anything)
    is replaced; the header it did not send is added."""
    alias, _ = injected
    before = len(https_site.requests().splitlines())
    sent = _post(trusting, alias, f"https://{SITE}/v1/messages", "x-api-key: $API_KEY")
    assert "prov test stub" in sent.stdout, sent.stderr
    _post(trusting, alias, f"https://{SITE}/v1/other", "x-api-key: made-up-by-the-agent")
    auth = _auth_since(https_site, before)
    assert f"AUTH /v1/messages x-api-key {KEY}" in auth, auth
    assert f"AUTH /v1/messages authorization Bearer {TOKEN}" in auth, auth
    assert f"AUTH /v1/other x-api-key {KEY}" in auth, auth
    # Exactly one of each: the agent's own header is gone, not kept beside.
    assert len([ln for ln in auth if ln.startswith("AUTH /v1/other x-api-key")]) == 1, auth
    assert not any("placeholder" in ln or "made-up" in ln for ln in auth), auth


def test_another_host_gets_no_value(
    trusting: Prov, injected: tuple[str, str], https_site: HttpsSite
) -> None:
    """A key for host A, sent by the agent to host B, arrives as the placeholder;
    B is a plain tunnel, nothing is added."""
    alias, _ = injected
    before = len(https_site.requests().splitlines())
    sent = _post(
        trusting,
        alias,
        f"https://{DENIED_SITE}/v1/messages",
        "x-api-key: $API_KEY",
        "authorization: Bearer $GH_TOKEN",
        trust=str(_site_ca(trusting, alias)),
    )
    assert "prov test stub" in sent.stdout, sent.stderr
    auth = _auth_since(https_site, before)
    assert auth == [
        "AUTH /v1/messages authorization Bearer prov-placeholder-gh-token",
        "AUTH /v1/messages x-api-key prov-placeholder-api-key",
    ], auth


def test_tricks_to_get_the_value_elsewhere_fail(
    trusting: Prov, injected: tuple[str, str], https_site: HttpsSite
) -> None:
    """The agent asks for the secret's host over plain HTTP; tunnels to host B
    while naming the secret's host in TLS (and in Host:); tunnels to the secret's
    host while naming B. None of these carries a value anywhere."""
    alias, _ = injected
    before = len(https_site.requests().splitlines())
    plain = trusting.ssh(alias, f"curl -sS -m 20 -o /dev/null -w '%{{http_code}}' http://{SITE}/")
    assert plain.stdout.strip() == "403", plain.stdout + plain.stderr
    script = f"""
import os, socket, ssl, urllib.parse
proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"]).hostname
ctx = ssl.create_default_context()
ctx.load_verify_locations("{_site_ca(trusting, alias)}")
for connect, sni in (("{DENIED_SITE}", "{SITE}"), ("{SITE}", "{DENIED_SITE}")):
    s = socket.create_connection((proxy, 3128), timeout=10)
    s.sendall(f"CONNECT {{connect}}:443 HTTP/1.1\\r\\nHost: {{connect}}:443\\r\\n\\r\\n".encode())
    print(connect, sni, s.recv(200).split(b"\\r\\n")[0].decode(), flush=True)
    try:
        t = ctx.wrap_socket(s, server_hostname=sni)
        ask = f"POST /v1/trick HTTP/1.1\\r\\nHost: {{sni}}\\r\\nContent-Length: 0\\r\\n\\r\\n"
        t.sendall(ask.encode())
        print("answered", t.recv(100).split(b"\\r\\n")[0].decode(), flush=True)
    except (OSError, ssl.SSLError) as exc:
        print("refused", type(exc).__name__, flush=True)
"""
    tried = trusting.ssh(alias, f"python3 -c {shlex.quote(script)}")
    assert tried.returncode == 0, tried.stdout + tried.stderr
    # The site's one certificate names both hosts, so each tunnel's TLS works:
    # the agent reaches the site, with nothing added.
    assert tried.stdout.count("answered") == 2, tried.stdout
    auth = _auth_since(https_site, before)
    assert auth == [], auth
    assert not any(v in tried.stdout for v in VALUES)


def test_the_proxy_never_shows_its_configuration(trusting: Prov, injected: tuple[str, str]) -> None:
    """squid's cache manager (which would print its configuration, values
    included) is refused however it is asked for."""
    alias, _ = injected
    tries = [
        "curl -sS -m 10 --noproxy '*' $HTTPS_PROXY/squid-internal-mgr/config",
        "curl -sS -m 10 --noproxy '*' $HTTPS_PROXY/squid-internal-mgr/menu",
        "curl -sS -m 10 -x $HTTPS_PROXY cache_object://localhost/config",
        "curl -sS -m 10 http://$(hostname)-egress:3128/squid-internal-mgr/config",
        f"curl -sS -m 10 https://{SITE}/squid-internal-mgr/config",
    ]
    for command in tries:
        got = trusting.ssh(alias, command)
        assert not any(v in got.stdout + got.stderr for v in VALUES), command
        assert "request_header_add" not in got.stdout, command


def test_nothing_of_the_environment_holds_a_value(
    trusting: Prov, injected: tuple[str, str], docker_client: docker.DockerClient
) -> None:
    """Root's view inside (every process's environment, every file), Docker's view
    of both containers (inspect, logs), prov's own output and files the
    environment sees: none holds a value. The proxy's configuration does, and
    only it."""
    alias, up_output = injected
    env = docker_client.containers.get(alias)
    gate = docker_client.containers.get(f"{alias}-egress")
    # Every process of the environment, read from this machine (the agent's own
    # and root's): environment and command line.
    pids = [row[1] for row in env.top(ps_args="-eo user,pid")["Processes"]]
    assert len(pids) >= 3, pids
    for pid in pids:
        for part in ("environ", "cmdline"):
            seen = Path(f"/proc/{pid}/{part}").read_bytes().decode(errors="replace")
            assert not any(v in seen for v in VALUES), (pid, part)
    # Every file, as root inside; the patterns come base64-encoded to a file
    # grep skips, so that no command line here holds a value either.
    found = files_holding(env, VALUES)
    assert found.strip() == "grep exit 1", found[-2000:]
    for container in (env, gate):
        seen = json.dumps(container.attrs) + container.logs().decode(errors="replace")
        assert not any(v in seen for v in VALUES), container.name
    for command in (("egress", alias.removeprefix("prov-"), "--json"), ("ls", "--json")):
        shown = trusting.run(*command, check=True)
        assert not any(v in shown.stdout + shown.stderr for v in VALUES)
    assert not any(v in up_output for v in VALUES)
    assert f"API_KEY@{SITE}:x-api-key" in up_output
    conf = gate.exec_run(["cat", "/etc/prov-egress/squid.conf"]).output.decode()
    assert KEY in conf and TOKEN in conf and BUILTIN in conf


def test_egress_lists_secrets_and_their_requests(trusting: Prov, injected: tuple[str, str]) -> None:
    alias, _ = injected
    _post(trusting, alias, f"https://{SITE}/v1/count")
    report = json.loads(
        trusting.run("egress", alias.removeprefix("prov-"), "--json", check=True).stdout
    )
    by_name = {s["name"]: s for s in report["secrets"]}
    assert set(by_name) == {"API_KEY", "GH_TOKEN", "ANTHROPIC_API_KEY"}
    assert by_name["API_KEY"]["host"] == SITE and by_name["API_KEY"]["header"] == "x-api-key"
    log = subprocess.run(["docker", "logs", alias + "-egress"], capture_output=True, text=True)
    assert by_name["API_KEY"]["requests"] >= 1, log.stdout[-3000:] + log.stderr[-2000:]
    assert by_name["ANTHROPIC_API_KEY"]["host"] == "api.anthropic.com"
    text = trusting.run("egress", alias.removeprefix("prov-"), check=True).stdout
    assert "GH_TOKEN" in text and not any(v in text for v in VALUES)


def test_secrets_are_kept_private_and_for_the_next_up(
    trusting: Prov, injected: tuple[str, str], docker_client: docker.DockerClient
) -> None:
    """The host's copy is 0600 (and the CA's key is in the private env dir); a
    second `up` without --secret keeps them (unchanged environment)."""
    alias, _ = injected
    name = alias.removeprefix("prov-")
    env_dir = trusting.prov_home / "envs" / name
    store = env_dir / "secrets.json"
    assert store.stat().st_mode & 0o777 == 0o600
    assert env_dir.stat().st_mode & 0o777 == 0o700
    before = docker_client.containers.get(alias).id
    trusting.up(name, "--allow", ALLOWED_DOMAIN, "--allow", DENIED_DOMAIN)
    assert docker_client.containers.get(alias).id == before
    env = trusting.ssh(alias, "env").stdout
    assert "API_KEY=prov-placeholder-api-key" in env


def test_secret_needs_the_proxy(trusting: Prov) -> None:
    name = trusting.name("secret-open")
    trusting.project(name)
    result = trusting.run("up", name, "--egress", "open", "--secret", f"K={KEY}@{SITE}")
    assert result.returncode == 2 and "--secret needs the egress proxy" in result.stderr
    assert KEY not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_new_value_reaches_the_proxy_and_leaves_the_environment_be(
    trusting: Prov, injected: tuple[str, str], https_site: HttpsSite,
    docker_client: docker.DockerClient,
) -> None:  # fmt: skip
    """A rotated token (same name and host): the proxy is made again with it; the
    environment, its sessions and its placeholder stay."""
    alias, _ = injected
    name = alias.removeprefix("prov-")
    before = docker_client.containers.get(alias).id
    rotated = "ghp_rotatedTOKEN0d9e8f7a"
    trusting.up(
        name,
        "--allow", ALLOWED_DOMAIN, "--allow", DENIED_DOMAIN,
        "--secret", f"GH_TOKEN={rotated}@{SITE}",
    )  # fmt: skip
    assert docker_client.containers.get(alias).id == before
    mark = len(https_site.requests().splitlines())
    _post(trusting, alias, f"https://{SITE}/v1/rotated")
    auth = _auth_since(https_site, mark)
    assert f"AUTH /v1/rotated authorization Bearer {rotated}" in auth, auth
    assert f"AUTH /v1/rotated x-api-key {KEY}" in auth, auth  # the others kept
