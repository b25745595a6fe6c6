"""The egress proxy's pure rules: allow-list matching, address classes, ClientHello SNI, token bucket, HTTP heads."""

from __future__ import annotations

import ipaddress
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st
from symbi_sandbox_agent.egress import http1
from symbi_sandbox_agent.egress.addresses import AddressPolicy, classify
from symbi_sandbox_agent.egress.bucket import TokenBucket
from symbi_sandbox_agent.egress.rules import AllowList, BadTarget, Target, parse_authority, parse_entry
from symbi_sandbox_agent.egress.tls import NotClientHello, parse_client_hello


def client_hello(server_name: str | None) -> bytes:
    """The ClientHello Python's own TLS client sends (a real one, not hand-made)."""
    ctx = ssl.create_default_context()
    if server_name is None:
        ctx.check_hostname = False
    out, inc = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


# --- allow-list ---------------------------------------------------------------------------------


def test_exact_wildcard_and_port_entries() -> None:
    allow = AllowList.parse(["api.example.com", "*.svc.example.org", "files.example.net:8443", " "])
    assert allow.match(Target("api.example.com", 443)) is not None
    assert allow.match(Target("api.example.com", 80)) is not None
    assert allow.match(Target("api.example.com", 22)) is None  # no port: 80 and 443 only
    assert allow.match(Target("x.api.example.com", 443)) is None  # exact means exact
    assert allow.match(Target("a.svc.example.org", 443)) is not None
    assert allow.match(Target("a.b.svc.example.org", 443)) is not None
    assert allow.match(Target("svc.example.org", 443)) is None  # the wildcard is below the name only
    assert allow.match(Target("evilsvc.example.org", 443)) is None
    assert allow.match(Target("files.example.net", 8443)) is not None
    assert allow.match(Target("files.example.net", 443)) is None


def test_names_are_normalised_and_bad_entries_refused() -> None:
    assert parse_authority("API.Example.COM.:443") == Target("api.example.com", 443)
    assert parse_authority("[::FFFF:127.0.0.2]:443") == Target("::ffff:7f00:2", 443)
    assert parse_authority("example.com", 80) == Target("example.com", 80)
    with pytest.raises(BadTarget):
        parse_authority("::1:80", 80)  # a Host header: ambiguous without brackets
    for bad in ("*", "0.0.0.0/0", "*example.com", "a.*.example.com", "*.com", "exa mple.com", "10.0.0.0/8"):
        with pytest.raises(BadTarget):
            parse_entry(bad)
    assert parse_authority("::ffff:127.0.0.2:443") == Target("::ffff:7f00:2", 443)  # unbracketed, port required
    for bad in ("example.com:0", "example.com:99999", "a:b:443", "[::1", "a..b:443"):
        with pytest.raises(BadTarget):
            parse_authority(bad)


def test_a_wildcard_never_matches_an_ip_literal() -> None:
    allow = AllowList.parse(["*.0.0.127.in-addr.arpa"])
    assert allow.match(Target("1.0.0.127.in-addr.arpa", 443)) is not None
    assert allow.match(parse_authority("127.0.0.1:443")) is None


@given(st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){1,3}", fullmatch=True))
def test_an_exact_entry_matches_only_its_name(name: str) -> None:
    allow = AllowList.parse([name])
    assert allow.match(Target(name, 443)) is not None
    assert allow.match(Target("x" + name, 443)) is None
    assert allow.match(Target("a." + name, 443)) is None


# --- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("172.16.0.1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link_local"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("::1", "loopback"),
        ("fe80::1", "link_local"),
        ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback (embedded in IPv6)"),
        ("::ffff:169.254.169.254", "metadata (embedded in IPv6)"),
        ("64:ff9b::a9fe:a9fe", "metadata (embedded in IPv6)"),
        ("2002:a9fe:a9fe::1", "metadata (embedded in IPv6)"),
        ("::ffff:8.8.8.8", "ipv4_embedded"),
        ("100.64.0.1", "shared"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_classes(address: str, kind: str | None) -> None:
    assert classify(ipaddress.ip_address(address)) == kind


def test_allow_addresses_opens_only_what_it_names() -> None:
    policy = AddressPolicy.parse(["127.0.0.2/32"])
    assert policy.refusal(ipaddress.ip_address("127.0.0.2")) is None
    assert policy.refusal(ipaddress.ip_address("127.0.0.1")) == "loopback"
    # The v6 spelling of an allowed v4 address is not allowed by it: a literal must match its own version.
    assert policy.refusal(ipaddress.ip_address("::ffff:127.0.0.2")) == "loopback (embedded in IPv6)"


# --- TLS ClientHello ----------------------------------------------------------------------------


def test_the_server_name_of_a_real_client_hello() -> None:
    hello = client_hello("api.example.com")
    assert parse_client_hello(hello) is not None
    assert parse_client_hello(hello).server_name == "api.example.com"  # type: ignore[union-attr]
    # Bytes arrive in pieces: no answer until the whole ClientHello is there.
    for cut in (1, 5, 9, len(hello) // 2, len(hello) - 1):
        assert parse_client_hello(hello[:cut]) is None
    assert parse_client_hello(client_hello(None)).server_name is None  # type: ignore[union-attr]


def test_a_client_hello_split_over_two_records() -> None:
    hello = client_hello("split.example.com")
    body = hello[5:]
    first, second = body[:40], body[40:]
    two = b"\x16\x03\x01" + len(first).to_bytes(2, "big") + first + b"\x16\x03\x01" + len(second).to_bytes(2, "big")
    assert parse_client_hello(two + second).server_name == "split.example.com"  # type: ignore[union-attr]


def test_bytes_that_are_not_a_client_hello_are_refused() -> None:
    for data in (b"GET / HTTP/1.1\r\n", b"SSH-2.0-OpenSSH\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"):
        with pytest.raises(NotClientHello):
            parse_client_hello(data)
    with pytest.raises(NotClientHello):
        parse_client_hello(b"\x16\x03\x01\x40\x00" + b"\x01" * 17000)


# --- token bucket -------------------------------------------------------------------------------


def test_the_bucket_holds_a_long_transfer_to_its_rate() -> None:
    bucket = TokenBucket.for_mbps(2)
    now, sent = 0.0, 0
    while sent < 20_000_000:
        now += bucket.take(256 * 1024, now)
        sent += 256 * 1024
    assert sent / now == pytest.approx(2_000_000, rel=0.02)
    assert bucket.burst == 200_000


def test_the_bucket_refills_and_caps_its_burst() -> None:
    bucket = TokenBucket(rate=1000, burst=500)
    assert bucket.take(500, 0.0) == 0.0
    assert bucket.take(100, 0.0) == pytest.approx(0.1)
    assert bucket.grant(10_000, 100.0) == 500  # refilled, but never above the burst
    with pytest.raises(ValueError, match="rate and a burst"):
        TokenBucket(rate=0, burst=1)


# --- HTTP heads ---------------------------------------------------------------------------------


def test_a_plain_request_must_agree_with_its_host_header() -> None:
    head = http1.parse_head(b"GET http://api.example.com/v1?q=1 HTTP/1.1\r\nHost: api.example.com\r\n")
    req = http1.plain_target(head)
    assert (req.target, req.path) == (Target("api.example.com", 80), "/v1?q=1")
    fronted = http1.parse_head(b"GET http://api.example.com/ HTTP/1.1\r\nHost: evil.example.com\r\n")
    with pytest.raises(http1.HostMismatch):
        http1.plain_target(fronted)
    for bad in (
        b"GET / HTTP/1.1\r\nHost: api.example.com\r\n",  # origin form: not a proxy request
        b"GET https://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n",
        b"GET http://u:p@api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n",
        b"GET http://api.example.com/ HTTP/1.1\r\n",  # no Host
    ):
        with pytest.raises(http1.BadRequest):
            http1.plain_target(http1.parse_head(bad))
    with pytest.raises(http1.BadRequest):
        http1.parse_head(b"\x16\x03\x01 hello")
    # The method goes into the connection's record (execution.egress): a token of at most 32 characters.
    for method in (b"G" * 40_000, b"GE(T", b"G\xe9T"):
        with pytest.raises(http1.BadRequest, match="not an HTTP method"):
            http1.parse_head(method + b" http://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n")
    assert http1.parse_head(b"propfind http://a.example/ HTTP/1.1\r\nHost: a.example\r\n").method == "PROPFIND"


def test_hop_by_hop_proxy_and_symbi_headers_are_dropped() -> None:
    head = http1.parse_head(
        b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\n"
        b"Proxy-Authorization: Basic eA==\r\nX-Symbi-Agent: someone-else\r\nKeep-Alive: 5\r\nAccept: */*\r\n"
    )
    assert http1.forwarded_headers(head) == [("Host", "a.example"), ("Accept", "*/*")]
    refused = http1.refusal(403, "not_allowed", "x is not allowed")
    assert refused.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"X-Symbi-Egress-Refused: not_allowed\r\n" in refused


def test_bad_egress_settings_stop_the_start() -> None:
    from symbi_common.errors import ConfigError
    from symbi_common.settings_sandbox import EgressSettings
    from symbi_sandbox_agent.egress.host import check_egress_settings

    check_egress_settings(
        EgressSettings(hosts={"a.test": ["192.0.2.1", "2001:db8::1"]}, allow_addresses=["10.0.0.0/8"])
    )
    with pytest.raises(ConfigError, match=r"egress\.allow_addresses"):
        check_egress_settings(EgressSettings(allow_addresses=["ten.0.0.0/8"]))
    with pytest.raises(ConfigError, match=r"egress\.hosts"):
        check_egress_settings(EgressSettings(hosts={"a.test": "not-an-address"}))
    with pytest.raises(ConfigError, match=r"egress\.ca_file"):
        check_egress_settings(EgressSettings(ca_file="/nonexistent/ca.pem"))
