"""The HTTP/1.1 the proxy reads and writes: request heads, header filtering, typed refusals. Pure.

The proxy serves two forms: ``CONNECT host:port`` (a TLS tunnel) and a plain-HTTP request in absolute form
(``GET http://host[:port]/path``), which is how clients talk to an ``HTTP_PROXY``. A plain request's
``Host`` header must name the same server as its URL. Hop-by-hop headers (RFC 9110 §7.6.1, and those a
``Connection`` header lists), ``Proxy-*`` and ``X-Symbi-*`` are dropped before anything goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from symbi_sandbox_agent.egress.rules import BadTarget, Target, parse_authority

MAX_HEAD = 64 * 1024
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
REFUSED_HEADER = "X-Symbi-Egress-Refused"
#: What no request line or header line may hold (RFC 9110 §5.5: field values are visible characters, space
#: and tab): any other C0 control, and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: An HTTP method (RFC 9110 §9.1: a token), at most 32 characters: what a connection's record keeps of it.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}\Z")


class BadRequest(ValueError):
    """The bytes are not an HTTP request the proxy serves; the message says why."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        n = name.lower()
        return next((v for k, v in self.headers if k.lower() == n), None)


def parse_head(raw: bytes) -> RequestHead:
    """A request head (up to and without the blank line)."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest("the request head is not text") from None
    lines = text.split("\r\n")
    for line in lines:
        if _CONTROL.search(line):
            # A bare CR or LF would end a line for some upstream servers: a header this proxy never checked.
            raise BadRequest(f"{line[:100]!r} holds a control character (a bare CR or LF, NUL, …)")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"{lines[0][:100]!r} is not an HTTP/1.x request line")
    if not _METHOD.match(parts[0]):
        raise BadRequest(f"{parts[0][:100]!r} is not an HTTP method (a token of at most 32 characters)")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            raise BadRequest(f"{line[:100]!r} is not a header line")
        headers.append((name, value.strip()))
    return RequestHead(parts[0].upper(), parts[1], parts[2], tuple(headers))


def connect_target(head: RequestHead) -> Target:
    """The ``host:port`` of a CONNECT."""
    try:
        return parse_authority(head.target)
    except BadTarget as exc:
        raise BadRequest(f"CONNECT {head.target[:100]!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class PlainRequest:
    target: Target
    #: The origin-form path (``/v1/x?y=1``) sent upstream.
    path: str


def plain_target(head: RequestHead) -> PlainRequest:
    """Where an absolute-form plain-HTTP request goes; its ``Host`` header must agree with the URL."""
    try:
        url = urlsplit(head.target)
    except ValueError as exc:  # e.g. an unclosed or invalid [IPv6] host
        raise BadRequest(f"{head.target[:100]!r} is not a URL: {exc}") from None
    if url.scheme != "http" or not url.netloc:
        if url.scheme == "https":
            raise BadRequest("an https:// URL goes through CONNECT (set HTTPS_PROXY), not as a plain request")
        raise BadRequest(f"{head.target[:100]!r}: a request to the proxy must use an absolute http:// URL")
    if "@" in url.netloc:
        raise BadRequest("credentials in the URL are not passed on")
    try:
        target = parse_authority(url.netloc, 80)
        host = head.header("host")
        if host is None:
            raise BadRequest("a plain-HTTP request must send a Host header")
        named = parse_authority(host, 80)
    except BadTarget as exc:
        raise BadRequest(str(exc)) from None
    if named != target:
        raise HostMismatch(f"the Host header names {named}, the URL {target}")
    if sum(1 for k, _ in head.headers if k.lower() == "host") > 1:  # RFC 9112 §3.2: which one would count?
        raise HostMismatch("a request may send one Host header")
    path = url.path or "/"
    return PlainRequest(target, f"{path}?{url.query}" if url.query else path)


class HostMismatch(BadRequest):
    """A plain-HTTP request whose Host header names another server than its URL (domain fronting)."""


def forwarded_headers(head: RequestHead) -> list[tuple[str, str]]:
    """The headers that go on: without hop-by-hop ones, those ``Connection`` lists, Proxy-* and X-Symbi-*."""
    listed = {t.strip().lower() for v in (head.header("connection") or "").split(",") for t in [v] if t.strip()}
    out = []
    for name, value in head.headers:
        n = name.lower()
        if n in HOP_BY_HOP or n in listed or n.startswith(("proxy-", "x-symbi-")):
            continue
        out.append((name, value))
    return out


def encode_request(method: str, path: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers), "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def refusal(status: int, reason: str, message: str) -> bytes:
    """A typed refusal: the status, ``X-Symbi-Egress-Refused: <reason>`` and the message as the body."""
    body = f"symbi egress refused ({reason}): {message}\n".encode()
    phrase = {400: "Bad Request", 403: "Forbidden", 411: "Length Required", 502: "Bad Gateway"}.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n{REFUSED_HEADER}: {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def response_head(status: int, headers: list[tuple[str, str]], length: int | None) -> bytes:
    """The head of an internal service's response: with ``content-length`` when known, else chunked."""
    skip = HOP_BY_HOP | {"content-length"}
    lines = [f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in skip]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    lines += ["Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def parse_response(raw: bytes) -> Response:
    """A whole response read to the end of its connection (``Connection: close``), chunked or not."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise BadRequest("the answer ended inside its head")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isascii() and parts[1].isdigit()):
        raise BadRequest(f"{lines[0][:100]!r} is not an HTTP/1.x status line")
    headers = tuple((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line))
    if any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers):
        body = decode_chunked(body)
    return Response(int(parts[1]), headers, body)


def decode_chunked(data: bytes) -> bytes:
    """The body of a chunked transfer (trailers dropped); :class:`BadRequest` if it is cut short."""
    out = bytearray()
    i = 0
    while True:
        end = data.find(b"\r\n", i)
        if end < 0:
            raise BadRequest("the chunked body ended inside a chunk size")
        size_text = data[i:end].split(b";", 1)[0].strip() or b"0"
        if not all(c in b"0123456789abcdefABCDEF" for c in size_text):
            raise BadRequest(f"{size_text[:20]!r} is not a chunk size")
        size = int(size_text, 16)
        if size == 0:
            return bytes(out)
        start = end + 2
        if start + size > len(data):
            raise BadRequest("the chunked body ended inside a chunk")
        out += data[start : start + size]
        i = start + size + 2
