"""Secrets the proxy injects: parsing, the proxy's configuration, the CA, the
plan's view of them, and what `prov egress` reads from the proxy's log. Pure."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from provisioner import injection
from provisioner.config import Containment, Extras
from provisioner.egress import read_proxy_log
from provisioner.errors import ConfigError, UsageError
from provisioner.plan import Placement
from tests.unit.test_plan import _plan

VALUE = "sk-ant-REAL-0123456789abcdef"


def test_parse_secret_defaults_to_bearer_and_keeps_the_value_out_of_repr() -> None:
    s = injection.parse_secret(f"GITHUB_TOKEN={VALUE}@API.GitHub.com")
    assert (s.name, s.host, s.header) == ("GITHUB_TOKEN", "api.github.com", "authorization")
    assert s.sent == f"Bearer {VALUE}"
    assert s.placeholder == "prov-placeholder-github-token"
    assert VALUE not in repr(s) and VALUE not in repr(Extras(secrets=(s,)))
    k = injection.parse_secret(f"MY_KEY={VALUE}@api.example.com:X-Api-Key")
    assert (k.header, k.sent) == ("x-api-key", VALUE)
    # A value may hold '@' (the host is after the last one).
    assert injection.parse_secret("A=us@er@h.example.com").value == "us@er"


@pytest.mark.parametrize(
    "text",
    [
        f"NOEQUALS{VALUE}",
        f"K={VALUE}",  # no host
        f"1K={VALUE}@h.example.com",
        f"K={VALUE}@https://h.example.com",
        f"K={VALUE}@h.example.com:443",
        f"K={VALUE}@localhost",  # not a dotted name
        'K=has"quote@h.example.com',
        "K=has space@h.example.com",
        "K=per%cent@h.example.com",
        "K=@h.example.com",
    ],
)
def test_bad_secrets_are_refused_without_showing_the_value(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        injection.parse_secret(text)
    assert VALUE not in caught.value.paragraph()


def test_secret_file_skips_comments_and_blank_lines() -> None:
    found = injection.parse_secret_file(f"# mine\n\nA={VALUE}@a.example.com\n", "f")
    assert [s.name for s in found] == ["A"]


def test_builtins_and_merge() -> None:
    found = injection.builtins({"ANTHROPIC_API_KEY": VALUE, "OPENAI_API_KEY": "", "X": "y"})
    assert [(s.name, s.host, s.header) for s in found] == [
        ("ANTHROPIC_API_KEY", "api.anthropic.com", "x-api-key")
    ]
    mine = injection.parse_secret("ANTHROPIC_API_KEY=other@gw.example.com:x-api-key")
    merged = injection.merge(found, [mine])
    assert merged == (mine,)


def test_secrets_kept_0600_and_a_damaged_store_is_an_error(tmp_path: Path) -> None:
    store = tmp_path / "env" / "secrets.json"
    assert injection.load_secrets(store) == ()
    kept = (injection.parse_secret(f"A={VALUE}@a.example.com:x-key"),)
    injection.save_secrets(store, kept)
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert injection.load_secrets(store) == kept
    store.write_text("{not json")
    with pytest.raises(ConfigError) as caught:
        injection.load_secrets(store)
    assert "damaged" in str(caught.value.what)


def _conf(*secrets: injection.Secret, upstream: bool = True) -> str:
    return injection.squid_conf("10.1.0.3", "10.1.0.2", ("github.com",), secrets, upstream)


def test_proxy_conf_opens_tls_only_for_a_secrets_host_and_only_over_https() -> None:
    key = injection.parse_secret(f"ANTHROPIC_API_KEY={VALUE}@api.anthropic.com:x-api-key")
    tok = injection.parse_secret(f"GH={VALUE}x@api.github.com")
    conf = _conf(key, tok).splitlines()
    # Opened only when both the CONNECT and the TLS name are a secret's host.
    assert "ssl_bump bump secret_dst secret_sni" in conf
    assert conf.index("ssl_bump peek step1") < conf.index("ssl_bump bump secret_dst secret_sni")
    assert conf[-1] != "ssl_bump bump all" and "ssl_bump splice all" in conf
    assert "acl secret_sni ssl::server_name api.anthropic.com api.github.com" in conf
    # Each value goes to its own host, replacing what the agent sent, over HTTPS only.
    assert "request_header_access x-api-key deny secret_0" in conf
    assert f'request_header_add x-api-key "{VALUE}" secret_0 https' in conf
    assert f'request_header_add authorization "Bearer {VALUE}x" secret_1 https' in conf
    assert "acl secret_0 dstdomain -n api.anthropic.com" in conf
    assert "http_access deny !https !CONNECT secret_dst" in conf
    assert conf.index("http_access deny !https !CONNECT secret_dst") < conf.index(
        "http_access allow client"
    )
    # A secret's host is let through like an allowed name (and checked the same way).
    assert "http_access deny !allowed !secret_dst" in conf
    # Its manager (which shows the configuration) and error-page data are off.
    assert "http_access deny manager" in conf and "cachemgr_passwd disable all" in conf
    assert "email_err_data off" in conf
    assert conf.index("http_access deny manager") < conf.index("http_access allow client")
    assert "tls_outgoing_options cafile=/etc/prov-egress/upstream-cas.pem default-ca=off" in conf
    assert "tls_outgoing_options" not in _conf(key, upstream=False)
    # The log format holds no header (the one %{...} is the refusal's reason note).
    log = next(line for line in conf if line.startswith("logformat"))
    log = log.replace("%{reason}note", "")
    assert "%>h" not in log and "%<h" not in log and "%{" not in log


def test_host_trust_is_this_machines_bundle_plus_prov_s_extra_cas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    extra = b"-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n"
    assert injection.host_trust(extra) == bundle.read_bytes().rstrip() + b"\n" + extra


def test_allowlist_in_the_conf_has_no_domain_under_another() -> None:
    conf = injection.squid_conf(
        "10.1.0.3", "10.1.0.2", ("codeload.github.com", "github.com", "a.b.example.org"), ()
    )
    assert "acl allowed dstdomain -n .a.b.example.org .github.com\n" in conf


def test_the_proxy_refuses_other_ports_and_private_addresses_before_allowing() -> None:
    """80/443 for plain HTTP and CONNECT alike; a name not allowed is refused before any
    lookup; an allowed name that resolves to a private, loopback, link-local or metadata
    address is refused unless --allow-net names its range."""
    conf = injection.squid_conf("10.1.0.3", "10.1.0.2", ("example.com",), ()).splitlines()
    rules = [line for line in conf if line.startswith("http_access")]
    assert rules == [
        "http_access deny manager",
        "http_access deny !client",
        "http_access deny !Safe_ports said_port",
        "http_access deny CONNECT !SSL_ports said_port",
        "http_access deny !allowed",
        "http_access deny private_dst said_private",
        "http_access allow client",
        "http_access deny all",
    ]
    assert "acl Safe_ports port 80 443" in conf
    private = next(line for line in conf if line.startswith("acl private_dst dst "))
    for net in ("127.0.0.0/8", "169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"):
        assert f" {net}" in private
    # squid keeps IPv4 addresses as IPv4-mapped IPv6: that range would refuse every one.
    assert "::ffff:0:0/96" not in private
    opened = injection.squid_conf(
        "10.1.0.3", "10.1.0.2", ("example.com",), (), allow_nets=("10.20.0.0/16",)
    ).splitlines()
    assert "acl allowed_nets dst 10.20.0.0/16" in opened
    assert "http_access deny private_dst !allowed_nets said_private" in opened
    assert any(line.endswith("%<st %{reason}note") for line in opened)


def test_the_ca_is_a_ca_and_its_key_is_not_shown() -> None:
    ca = injection.make_ca("demo")
    assert b"PRIVATE KEY" not in ca.cert_pem and b"PRIVATE KEY" in ca.key_pem
    assert "PRIVATE" not in repr(ca)
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0


def test_conf_dir_is_readable_by_the_proxy_only_through_the_private_env_dir(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "envs" / "demo" / "egress"
    assert injection.write_conf_dir(folder, {"squid.conf": b"a"})
    assert not injection.write_conf_dir(folder, {"squid.conf": b"a"})  # unchanged
    assert injection.write_conf_dir(folder, {"squid.conf": b"b"})
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "squid.conf").stat().st_mode) == 0o644
    assert [p.name for p in folder.iterdir()] == ["squid.conf"]


def test_the_plan_gives_the_ca_to_the_environment_and_its_key_to_the_proxy_only() -> None:
    secret = injection.parse_secret(f"ANTHROPIC_API_KEY={VALUE}@api.anthropic.com:x-api-key")
    ca = injection.make_ca("demo")
    plan, _, _ = _plan(
        Path("/p/demo"),
        Path("/p"),
        containment=Containment(),
        secrets=(secret,),
        egress_ca=ca,
        upstream_cas=b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
        session_env=((secret.name, secret.placeholder),),
    )
    c = plan.container
    assert plan.egress is not None
    assert c.labels["prov.secrets"] == "ANTHROPIC_API_KEY@api.anthropic.com:x-api-key"
    files = {f.name: f.content for f in c.key_files}
    assert files["egress-ca.pem"] == ca.cert_pem
    # Nothing of the environment's holds the value or the CA's key.
    env_side = repr(c) + repr(c.environment) + repr(c.labels) + repr(c.files)
    env_side += b"".join(f.content for f in c.key_files).decode()
    env_side += b"".join(f.content for f in c.files).decode()
    assert VALUE not in env_side and "BEGIN PRIVATE KEY" not in env_side
    assert secret.placeholder in b"".join(f.content for f in c.files).decode()
    # The proxy's files do, and they are not in its environment or labels.
    conf = {f.name: f.content for f in plan.egress.files}
    assert set(conf) == {"squid.conf", "ca.pem", "ca.key", "upstream-cas.pem"}
    assert VALUE.encode() in conf["squid.conf"] and conf["ca.key"] == ca.key_pem
    gate = plan.egress.container
    assert VALUE not in repr(gate) + repr(gate.environment) + repr(gate.labels)
    assert VALUE not in repr(plan)
    assert plan.egress.secrets == (secret,)


def test_remote_proxy_reads_its_conf_from_a_volume() -> None:
    secret = injection.parse_secret(f"K={VALUE}@api.example.com")
    plan, _, _ = _plan(
        Path("/p/demo"),
        Path("/p"),
        containment=Containment(),
        placement=Placement(False, project_copied=True, proxy_command="ssh -W %h:%p eng"),
        secrets=(secret,),
        egress_ca=injection.make_ca("demo"),
    )
    assert plan.egress is not None
    gate = plan.egress.container
    assert gate.mounts == () and gate.ro_volumes == (("prov-demo-egress", "/etc/prov-egress"),)


def test_proxy_log_counts_opened_requests_and_words_refusals() -> None:
    log = "\n".join(
        [
            "prov 1764700000.100 10.1.0.2 TCP_TUNNEL/200 CONNECT api.anthropic.com:443 - 10",
            "prov 1764700000.200 10.1.0.2 TCP_MISS/200 POST "
            "https://api.anthropic.com/v1/messages 1.2.3.4 900",
            "prov 1764700000.300 10.1.0.2 TCP_MISS/401 GET https://api.anthropic.com/v1/x - 9",
            "prov 1764700001.000 10.1.0.2 TCP_DENIED/403 CONNECT evil.example:443 - 0",
            "prov 1764700002.000 10.1.0.2 TCP_DENIED/403 CONNECT github.com:22 - 0",
            "2026/12/02 10:00:00| squid says something",
            "prov garbage",
        ]
    )
    read = read_proxy_log(log)
    assert read.opened == {"api.anthropic.com": 2}
    assert read.allowed == {"api.anthropic.com": 3}
    assert read.recent[0] == "2025-12-02 18:26:40 allowed CONNECT api.anthropic.com:443 (200)"
    assert len(read.recent) == 5 and read.recent[-1].startswith("2025-12-02 18:26:42 refused")
    assert read.denials == (
        "2025-12-02 18:26:41 refused CONNECT evil.example:443",
        "2025-12-02 18:26:42 refused CONNECT github.com:22 (port 22 is not allowed)",
    )


def test_proxy_log_words_why_it_refused() -> None:
    """The reason squid's rules noted (new proxies) is shown in words."""
    log = "\n".join(
        [
            "prov 1764700001.000 10.1.0.2 TCP_DENIED/403 GET http://a.example.com:2375/ - 0 port",
            "prov 1764700002.000 10.1.0.2 TCP_DENIED/403 CONNECT a.example.com:443 - 0 "
            "private-address",
            "prov 1764700003.000 10.1.0.2 TCP_MISS/200 GET http://a.example.com/x 1.2.3.4 5 -",
        ]
    )
    read = read_proxy_log(log)
    assert read.denials == (
        "2025-12-02 18:26:41 refused GET http://a.example.com:2375/ (port 2375 is not allowed)",
        "2025-12-02 18:26:42 refused CONNECT a.example.com:443 (its address is private, "
        "loopback or link-local; --allow-net RANGE allows it)",
    )
    assert read.allowed == {"a.example.com": 1}


def test_allow_nets_from_the_option_and_the_user_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--allow-net and the user file's ranges (beside its domain names) are the proxy's
    exceptions; anything else on a line is refused with the line's number."""
    from provisioner import egress
    from provisioner.errors import ConfigError

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "prov").mkdir()
    (tmp_path / "prov" / "egress-allow").write_text("example.org\n10.20.0.5/16\n192.168.1.7\n")
    assert egress.user_allowlist() == ("example.org",)
    assert egress.allowed_nets(("172.18.0.0/16",)) == (
        "10.20.0.0/16",
        "172.18.0.0/16",
        "192.168.1.7/32",
    )
    (tmp_path / "prov" / "egress-allow").write_text("example.org\n10.20.0.0/33\n")
    with pytest.raises(ConfigError, match="line 2"):
        egress.allowed_nets(())


def test_the_user_files_address_lines_name_where_the_proxy_finds_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line "ADDRESS NAME..." (as in /etc/hosts) goes into the proxy's own hosts
    file, which squid reads instead of the container's; it allows neither the name
    nor the address (the deny rules come first and are unchanged). A range or a
    bad name on such a line is refused with its number."""
    from provisioner import egress
    from provisioner.errors import ConfigError

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "prov").mkdir()
    user = tmp_path / "prov" / "egress-allow"
    user.write_text(
        "example.org\n10.20.0.0/16\n10.20.0.5  Mirror.Corp.Example  pkgs.corp.example\n"
    )
    assert egress.user_hosts() == ("10.20.0.5 mirror.corp.example pkgs.corp.example",)
    assert egress.user_allowlist() == ("example.org",)
    assert egress.allowed_nets(()) == ("10.20.0.0/16",)
    for bad in ("10.20.0.0/16 mirror.corp.example", "10.20.0.5 not_a_name"):
        user.write_text(f"example.org\n{bad}\n")
        with pytest.raises(ConfigError, match="line 2"):
            egress.user_hosts()
    plain = injection.squid_conf("10.1.0.3", "10.1.0.2", ("example.com",), ())
    mapped = injection.squid_conf("10.1.0.3", "10.1.0.2", ("example.com",), (), hosts_file=True)
    assert "hosts_file" not in plain
    assert mapped.replace("hosts_file /etc/prov-egress/hosts\n", "") == plain
