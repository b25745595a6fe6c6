"""Reading the server name (SNI) of a TLS ClientHello, the first bytes a client sends in a CONNECT tunnel. Pure.

The proxy holds the tunnel's first bytes until the ClientHello is complete (it may span TLS records), reads
its ``server_name`` extension, and only then connects upstream. A ClientHello without a server name, or
bytes that are not one, refuse the tunnel: the proxy cannot check whom a client talks to otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A ClientHello longer than this is refused (real ones are a few hundred bytes, with post-quantum keys ~2 KiB).
MAX_HELLO = 16 * 1024
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0


class NotClientHello(ValueError):
    """The bytes are not a TLS ClientHello, or one the proxy cannot read."""


@dataclass(frozen=True, slots=True)
class Hello:
    """A complete ClientHello: its server name (lower-cased; None if it sends none)."""

    server_name: str | None


def _records(data: bytes) -> tuple[bytes, bool]:
    """The handshake bytes of the TLS records in ``data``, and whether the last record is complete."""
    out = bytearray()
    i = 0
    while i + 5 <= len(data):
        if data[i] != _HANDSHAKE or data[i + 1] != 3:
            raise NotClientHello("the tunnel's first bytes are not a TLS handshake record")
        n = int.from_bytes(data[i + 3 : i + 5], "big")
        if i + 5 + n > len(data):
            out += data[i + 5 :]
            return bytes(out), False
        out += data[i + 5 : i + 5 + n]
        i += 5 + n
    if i < len(data):
        if data[i] != _HANDSHAKE:
            raise NotClientHello("the tunnel's first bytes are not a TLS handshake record")
        return bytes(out), False
    return bytes(out), True


def parse_client_hello(data: bytes) -> Hello | None:
    """The ClientHello in ``data``; None if more bytes are needed; :class:`NotClientHello` if it is not one."""
    if len(data) > MAX_HELLO:
        raise NotClientHello(f"no complete ClientHello in the first {MAX_HELLO} bytes")
    if data and data[0] != _HANDSHAKE:
        raise NotClientHello("the tunnel's first bytes are not a TLS handshake record")
    hs, _ = _records(data)
    if len(hs) < 4:
        return None
    if hs[0] != _CLIENT_HELLO:
        raise NotClientHello("the first handshake message is not a ClientHello")
    length = int.from_bytes(hs[1:4], "big")
    if len(hs) < 4 + length:
        return None
    return Hello(_server_name(hs[4 : 4 + length]))


def _server_name(body: bytes) -> str | None:
    try:
        i = 2 + 32  # version, random
        i += 1 + body[i]  # session id
        i += 2 + int.from_bytes(body[i : i + 2], "big")  # cipher suites
        i += 1 + body[i]  # compression methods
        if i == len(body):
            return None  # no extensions
        end = i + 2 + int.from_bytes(body[i : i + 2], "big")
        i += 2
        while i + 4 <= end:
            kind = int.from_bytes(body[i : i + 2], "big")
            n = int.from_bytes(body[i + 2 : i + 4], "big")
            ext = body[i + 4 : i + 4 + n]
            i += 4 + n
            if kind == _SERVER_NAME:
                return _host_name(ext)
    except IndexError:
        raise NotClientHello("the ClientHello is truncated") from None
    return None


def _host_name(ext: bytes) -> str:
    j = 2
    while j + 3 <= len(ext):
        kind, n = ext[j], int.from_bytes(ext[j + 1 : j + 3], "big")
        name = ext[j + 3 : j + 3 + n]
        if kind == 0:
            try:
                return name.decode("ascii").lower().removesuffix(".")
            except UnicodeDecodeError:
                raise NotClientHello("the server name is not ASCII") from None
        j += 3 + n
    raise NotClientHello("the server_name extension names no host")
