"""What a sandbox sends its egress proxy ends in a request the proxy serves or a typed refusal, and nothing it
sends reaches upstream as a header the proxy did not check (pure).

The request head, the CONNECT authority and the tunnel's first bytes are all the agent's choice. The proxy
answers a ``BadRequest`` (or ``NotClientHello``) with a typed refusal and records the connection; any other
exception would end the connection with neither.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from symbi_sandbox_agent.egress import http1
from symbi_sandbox_agent.egress.decisions import Refused
from symbi_sandbox_agent.egress.rules import BadTarget, parse_authority
from symbi_sandbox_agent.egress.serve import body_length
from symbi_sandbox_agent.egress.tls import NotClientHello, parse_client_hello

#: Text as the proxy decodes a head: latin-1, so every byte is one character, controls included.
LATIN1 = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40)
_HOSTS = st.sampled_from(["a.example", "[::1]", "[zz]", "[::1", "1.2.3.4", "a", "²", "xn--", "-", "a..b", ""])
_PORTS = st.sampled_from(["", ":80", ":²", ":99999", ":0", ":", ":8080", ":-1", ":١٢"])
AUTHORITIES = st.builds(lambda h, p: h + p, _HOSTS, _PORTS) | LATIN1
TARGETS = st.builds(lambda a, path: f"http://{a}{path}", AUTHORITIES, st.sampled_from(["", "/", "/x?y=1"])) | LATIN1


def _head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
    return "\r\n".join(lines).encode()  # UTF-8: the proxy reads the bytes as latin-1, whatever they are


@settings(max_examples=400, deadline=None)
@given(authority=AUTHORITIES, default=st.sampled_from([None, 80]))
def test_an_authority_is_a_target_or_refused_with_a_reason(authority: str, default: int | None) -> None:
    try:
        target = parse_authority(authority, default)
    except BadTarget:
        return
    assert 0 < target.port < 65536


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(["GET", "CONNECT", "POST", "get"]),
    target=TARGETS,
    headers=st.lists(st.tuples(st.sampled_from(["Host", "X", "Connection", "X-Symbi-A"]), LATIN1), max_size=4),
)
def test_a_request_head_is_served_or_refused_and_sends_upstream_only_what_it_checked(
    method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    try:
        head = http1.parse_head(_head(method, target, headers))
        request = http1.connect_target(head) if head.method == "CONNECT" else http1.plain_target(head)
    except http1.BadRequest:
        return
    assert request is not None
    if head.method == "CONNECT":
        return
    sent = http1.encode_request(head.method, http1.plain_target(head).path, http1.forwarded_headers(head))
    lines = sent.split(b"\r\n")
    assert lines[-2:] == [b"", b""]
    for line in lines[:-2]:  # one header per line: no CR, LF or other control byte inside any of them
        assert not any((b < 0x20 and b != 0x09) or b == 0x7F for b in line), line
    names = [line.split(b":", 1)[0].lower() for line in lines[1:-3]]
    assert not any(n.startswith((b"x-symbi-", b"proxy-")) for n in names)
    assert names.count(b"host") == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX: 1\nHost: elsewhere",  # a bare LF: a second Host upstream
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX: 1\rX-Symbi-Egress: yes",  # a bare CR
        b"GET http://a/ HTTP/1.1\r\nHost: a\nX-Symbi-Egress: yes",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX: \x00",
        b"GET http://a/\x01 HTTP/1.1\r\nHost: a",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: elsewhere",  # which Host would the server take?
        b"GET http://[::1/ HTTP/1.1\r\nHost: a",  # urlsplit's own ValueError
        b"CONNECT a:\xb2 HTTP/1.1",  # '\xb2' is a digit to str.isdigit, not to int()
    ],
)
def test_heads_that_would_smuggle_or_break_are_refused(raw: bytes) -> None:
    def served() -> object:
        head = http1.parse_head(raw)
        return http1.connect_target(head) if head.method == "CONNECT" else http1.plain_target(head)

    with pytest.raises(http1.BadRequest):
        served()


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(max_size=64)
    | st.builds(lambda n, body: bytes([0x16, 3, 1]) + n.to_bytes(2, "big") + body, st.integers(0, 70), st.binary())
    | st.builds(
        lambda body: bytes([0x16, 3, 1]) + len(body).to_bytes(2, "big") + body,
        st.builds(lambda n, rest: bytes([1]) + n.to_bytes(3, "big") + rest, st.integers(0, 80), st.binary(max_size=80)),
    )
)
def test_the_tunnels_first_bytes_are_a_client_hello_more_bytes_or_refused(data: bytes) -> None:
    try:
        hello = parse_client_hello(data)
    except NotClientHello:
        return
    assert hello is None or hello.server_name is None or hello.server_name.isprintable()


@settings(max_examples=400, deadline=None)
@given(
    status=st.sampled_from(["200", "\xb2", "2OO", "", "999999"]) | LATIN1,
    headers=st.lists(
        st.just(("Transfer-Encoding", "chunked")) | st.tuples(st.sampled_from(["Transfer-Encoding", "X"]), LATIN1),
        max_size=3,
    ),
    body=st.binary(max_size=40)
    | st.builds(
        lambda n, rest: n.encode() + b"\r\n" + rest,
        st.sampled_from(["5", "zz", "-1", "0", "\xb2", " 3 "]),
        st.binary(max_size=20),
    ),
)
def test_an_upstream_answer_is_read_or_refused_with_a_reason(
    status: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    """Upstream servers are not trusted either: whatever they answer is a response or a ``BadRequest``."""
    head = "\r\n".join([f"HTTP/1.1 {status} OK", *(f"{k}: {v}" for k, v in headers)]).encode("latin-1")
    try:
        response = http1.parse_response(head + b"\r\n\r\n" + body)
    except http1.BadRequest:
        return
    assert response.status >= 0


@pytest.mark.parametrize("length", ["\xb2", "-1", "1e3", "5 5"])
def test_a_content_length_that_is_no_number_is_refused(length: str) -> None:
    head = http1.parse_head(
        f"POST http://models.symbi.internal/v1/x HTTP/1.1\r\nContent-Length: {length}".encode("latin-1")
    )
    with pytest.raises(Refused) as refused:
        body_length(head)
    assert refused.value.status == 400
