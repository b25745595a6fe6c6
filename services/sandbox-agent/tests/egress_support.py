"""Stand-ins for the internet in the egress tests: a test CA (made with ``cryptography``) and small HTTPS and
HTTP servers on 127.0.0.2, which the tests' ``[egress] allow_addresses`` allow (127.0.0.1 stays refused).

The servers answer ``/hello`` with the Host header and the TLS server name they saw, ``/bytes?n=N`` with N
bytes, and any other path with its method, path and body length. Each request is answered and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from symbi_common.decisions import Decision, DecisionRequest
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.engine import PolicyEngine

UPSTREAM_ADDRESS = "127.0.0.2"
NAMES = ("allowed.test", "other.test", "loop.test", "meta.test", "api.wild.test")


@dataclass(frozen=True)
class CertFiles:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def make_ca(directory: Path) -> CertFiles:
    """A CA and a server certificate for :data:`NAMES` and 127.0.0.2, as PEM files in ``directory``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "symbi egress test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in NAMES]
    sans.append(x509.IPAddress(ipaddress.ip_address(UPSTREAM_ADDRESS)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    out = CertFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    out.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return out


@dataclass
class Upstream:
    """One server on 127.0.0.2 (TLS when it has a context); ``seen`` lists the Host headers it served."""

    port: int = 0
    seen: list[str] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            self.seen.append(headers.get("host", ""))
            url = urlsplit(target)
            if url.path == "/bytes":
                n = int(parse_qs(url.query)["n"][0])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % n)
                chunk = b"x" * 65536
                sent = 0
                while sent < n:
                    piece = chunk[: n - sent]
                    writer.write(piece)
                    sent += len(piece)
                    await writer.drain()
            else:
                answer = {
                    "method": method,
                    "path": target,
                    "host": headers.get("host", ""),
                    "tls": writer.get_extra_info("ssl_object") is not None,
                    "body": len(body),
                    "symbi_headers": sorted(k for k in headers if k.startswith("x-symbi")),
                }
                data = json.dumps(answer).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(data))
                writer.write(b"Connection: close\r\n\r\n" + data)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError, KeyError):
            pass
        finally:
            # Closed once all is sent, without waiting for the client's TLS close_notify (asyncio's server
            # would wait up to 30 s for it; many servers on the internet do not).
            for _ in range(6000):
                if not writer.transport.get_write_buffer_size() or writer.transport.is_closing():
                    break
                await asyncio.sleep(0.01)
            writer.transport.abort()


def server_context(ca: CertFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ca.cert_pem, ca.key_pem)
    return ctx


@contextlib.asynccontextmanager
async def upstream(ctx: ssl.SSLContext | None = None, bind: str = UPSTREAM_ADDRESS) -> AsyncIterator[Upstream]:
    """An HTTP (or, with ``ctx``, HTTPS) server on 127.0.0.2 (or ``bind``), on a free port."""
    up = Upstream()
    up.server = await asyncio.start_server(up._serve, bind, 0, ssl=ctx)
    up.port = up.server.sockets[0].getsockname()[1]
    try:
        yield up
    finally:
        up.server.close()


def egress_toml(path: Path, ca: CertFiles | None = None) -> Path:
    """A config file with the tests' ``[egress]`` section: the test names, 127.0.0.2 allowed."""
    hosts = {
        "allowed.test": UPSTREAM_ADDRESS,
        "api.wild.test": UPSTREAM_ADDRESS,
        "other.test": UPSTREAM_ADDRESS,
        "loop.test": "127.0.0.1",
        "meta.test": "169.254.169.254",
    }
    lines = ["[egress]", "system_resolver = false", f'allow_addresses = ["{UPSTREAM_ADDRESS}/32"]']
    if ca is not None:
        lines.append(f'ca_file = "{ca.ca_pem}"')
    lines.append("[egress.hosts]")
    lines += [f'"{k}" = "{v}"' for k, v in hosts.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class CedarPoint:
    """A decision point over real Cedar policies (compiled and validated against the schema), no bus."""

    def __init__(self, cedar: str) -> None:
        self.engine = PolicyEngine({"egress-test": compile_policies("egress-test", cedar)}, 1)

    @property
    def version(self) -> int:
        return 1

    async def decide(self, request: DecisionRequest) -> Decision:
        return self.engine.decide(request)

    async def decide_batch(self, requests: list[DecisionRequest]) -> list[Decision]:
        return self.engine.decide_batch(requests)
