"""The egress proxy on the host, end to end without a container: an ordinary client → the SDK's forwarder →
the proxy's Unix socket → local HTTPS/HTTP servers on 127.0.0.2 signed by a test CA (egress_support)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from symbi_agent.forward import Forwarder
from symbi_common.decisions import AllowAll
from symbi_common.policy.hooks import Enforcer
from symbi_common.settings_sandbox import EgressSettings
from symbi_sandbox_agent.egress.decisions import Connection
from symbi_sandbox_agent.egress.host import EgressHost
from symbi_sandbox_agent.egress.internal import MODELS_HOST, Caller, InternalRequest, InternalResponse
from symbi_sandbox_agent.egress.proxy import EgressProxy
from symbi_sandbox_agent.egress.resolver import SystemResolver, Unresolved

from .egress_support import UPSTREAM_ADDRESS, CedarPoint, CertFiles, make_ca, server_context, upstream

#: Connections are allowed, except to other.test, and never to port 22 (real Cedar, schema-checked).
POLICY = """
permit(principal, action == Action::"network.connect", resource);
@reason("no connections to other.test")
forbid(principal, action == Action::"network.connect", resource) when { context has host && context.host == "other.test" };
forbid(principal, action == Action::"network.connect", resource) when { resource has port && resource.port == 22 };
"""


@dataclass
class Setup:
    ca: CertFiles
    https: int
    http: int
    port: int  # the forwarder's
    proxy: EgressProxy
    records: list[Connection]
    ctx: ssl.SSLContext

    def opener(self) -> urllib.request.OpenerDirector:
        proxies = {"http": f"http://127.0.0.1:{self.port}", "https": f"http://127.0.0.1:{self.port}"}
        return urllib.request.build_opener(
            urllib.request.ProxyHandler(proxies), urllib.request.HTTPSHandler(context=self.ctx)
        )

    async def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
        """``(status, refusal reason, body)`` of a GET through the forwarder (urllib, in a thread)."""

        def call() -> tuple[int, str, bytes]:
            req = urllib.request.Request(url, headers=headers or {})
            try:
                with self.opener().open(req, timeout=20) as r:
                    return r.status, "", r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.headers.get("X-Symbi-Egress-Refused", ""), e.read()
            except urllib.error.URLError as e:  # urllib reports a refused CONNECT as an OSError
                return 0, str(e.reason), b""

        return await asyncio.to_thread(call)

    def last(self) -> Connection:
        return self.records[-1]


class Body:
    """A streamed body that notes being closed (the model gateway settles a reservation then)."""

    def __init__(self, chunks: list[bytes], closed: list[bool]) -> None:
        self.chunks = iter(chunks)
        self.closed = closed

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self.chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self.closed.append(True)


class Recorder:
    def __init__(self) -> None:
        self.service_calls: list[tuple[Caller, InternalRequest]] = []
        self.closed: list[bool] = []

    async def handle(self, caller: Caller, request: InternalRequest) -> InternalResponse:
        self.service_calls.append((caller, request))

        if request.path.startswith("/v1/stream"):
            events = Body([b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"], self.closed)
            return InternalResponse(200, [("content-type", "text/event-stream")], events)
        data = json.dumps({"path": request.path, "body": request.body.decode(), "agent": caller.agent_id}).encode()

        async def whole() -> AsyncIterator[bytes]:
            yield data

        return InternalResponse(200, [("content-type", "application/json")], whole(), length=len(data))


async def settle(records: list[Connection], n: int) -> None:
    for _ in range(1500):
        if len(records) >= n:
            return
        await asyncio.sleep(0.02)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    ca = make_ca(tmp_path / "ca")
    async with upstream(server_context(ca)) as tls_up, upstream() as plain_up:
        settings = EgressSettings(
            hosts={
                "allowed.test": UPSTREAM_ADDRESS,
                "api.wild.test": UPSTREAM_ADDRESS,
                "other.test": UPSTREAM_ADDRESS,
                "loop.test": "127.0.0.1",
                "meta.test": "169.254.169.254",
                "mixed.test": [UPSTREAM_ADDRESS, "10.0.0.7"],
            },
            system_resolver=False,
            allow_addresses=[f"{UPSTREAM_ADDRESS}/32"],
        )
        host = EgressHost(settings)
        service = Recorder()
        host.register(MODELS_HOST, service)
        records: list[Connection] = []
        allow = (
            *tuple(
                f"{name}:{port}"
                for port in (tls_up.port, plain_up.port)
                for name in (
                    "allowed.test",
                    "loop.test",
                    "mixed.test",
                    "*.wild.test",
                    "[::ffff:127.0.0.2]",
                    "denied.by.policy",
                )
            ),
            "meta.test",
            "127.0.0.1",
            UPSTREAM_ADDRESS + f":{plain_up.port}",
        )
        enforcer = Enforcer.around(CedarPoint(POLICY))
        proxy = host.proxy(
            Caller(agent_id="agent-7", task_id="t1"), (*allow, f"other.test:{tls_up.port}"), 100, enforcer
        )
        proxy.record = records.append
        sock = str(tmp_path / "run" / "egress.sock")
        await proxy.open(sock)
        forwarder = Forwarder(sock, 0)
        port = await forwarder.start()
        ctx = ssl.create_default_context(cafile=str(ca.ca_pem))
        try:
            yield Setup(ca, tls_up.port, plain_up.port, port, proxy, records, ctx)
        finally:
            await forwarder.close()
            await proxy.close()


async def test_an_allowed_name_works_over_https_and_http(setup: Setup) -> None:
    status, _, body = await setup.get(f"https://allowed.test:{setup.https}/hello")
    assert status == 200
    answer = json.loads(body)
    assert answer["host"] == f"allowed.test:{setup.https}"
    assert answer["tls"] is True
    await settle(setup.records, 1)
    rec = setup.last()
    assert (rec.outcome, rec.method, rec.host, rec.address, rec.rule) == (
        "allowed",
        "CONNECT",
        "allowed.test",
        UPSTREAM_ADDRESS,
        "allowed.test",
    )
    assert rec.bytes_in > len(body)
    assert rec.bytes_out > 200
    assert rec.decision is not None
    assert rec.decision.action == "network.connect"
    assert rec.decision.point == "sandbox-agent.egress"
    assert rec.decision.effect == "allow"

    status, _, body = await setup.get(
        f"http://api.wild.test:{setup.http}/x?y=1",
        headers={"X-Symbi-Agent": "someone-else", "Proxy-Authorization": "x"},
    )
    assert status == 200
    answer = json.loads(body)
    assert (answer["path"], answer["tls"], answer["symbi_headers"]) == ("/x?y=1", False, [])
    await settle(setup.records, 2)
    assert setup.last().rule == "*.wild.test"
    assert setup.last().outcome == "allowed"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://nowhere.test:{https}/", "not_allowed"),
        ("https://allowed.test:1/", "not_allowed"),  # the allow-list names the port
        ("https://loop.test:{https}/", "blocked_address"),  # a name resolving to 127.0.0.1
        ("http://meta.test/latest/meta-data/", "blocked_address"),  # … and to 169.254.169.254
        ("https://mixed.test:{https}/", "blocked_address"),  # one private address among public ones
        ("https://[::ffff:127.0.0.2]:{https}/", "ip_literal"),  # an IPv6 literal of an allowed v4 address
        ("http://127.0.0.1/", "ip_literal"),
        ("https://other.test:{https}/", "policy_denied"),
    ],
)
async def test_refusals_are_typed_and_recorded(setup: Setup, url: str, reason: str) -> None:
    status, got, _ = await setup.get(url.format(https=setup.https, http=setup.http))
    assert status in (403, 502, 0)
    if status:  # plain HTTP: the refusal's header; CONNECT: urllib only says "Tunnel connection failed: 403"
        assert got == reason
    else:
        assert "403" in got
    await settle(setup.records, 1)
    rec = setup.last()
    assert (rec.outcome, rec.reason, rec.status) == ("denied", reason, 403)
    if reason == "blocked_address":
        assert rec.address in ("127.0.0.1", "169.254.169.254", "10.0.0.7")
        assert ("metadata" in rec.detail) == (rec.address == "169.254.169.254")
    if reason == "policy_denied":
        assert rec.decision is not None
        assert rec.decision.effect == "deny"


def tunnel(port: int, target: str, first: bytes) -> bytes:
    """CONNECT ``target`` through the forwarder, then send ``first``; what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        s.sendall(first)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


async def test_a_tunnel_to_an_allowed_name_cannot_speak_tls_to_another(setup: Setup) -> None:
    def other_sni() -> str:
        raw = socket.create_connection(("127.0.0.1", setup.port), timeout=10)
        target = f"allowed.test:{setup.https}"
        raw.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cafile=str(setup.ca.ca_pem))
        try:
            with ctx.wrap_socket(raw, server_hostname="other.test") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
                return "connected"
        except (ssl.SSLError, OSError) as exc:
            return type(exc).__name__

    assert await asyncio.to_thread(other_sni) != "connected"
    await settle(setup.records, 1)
    assert (setup.last().reason, setup.last().host) == ("sni_mismatch", "allowed.test")
    assert "other.test" in setup.last().detail

    # A tunnel whose first bytes are not TLS at all (e.g. plain HTTP or SSH to the pinned address).
    out = await asyncio.to_thread(tunnel, setup.port, f"allowed.test:{setup.https}", b"GET / HTTP/1.1\r\n\r\n")
    assert out == b""
    await settle(setup.records, 2)
    assert setup.last().reason == "not_tls"


async def test_domain_fronting_over_plain_http_is_refused(setup: Setup) -> None:
    status, reason, _ = await setup.get(f"http://allowed.test:{setup.http}/", headers={"Host": "evil.test"})
    assert (status, reason) == (403, "host_mismatch")
    await settle(setup.records, 1)
    assert setup.last().reason == "host_mismatch"


async def test_an_internal_service_answers_its_reserved_name(setup: Setup) -> None:
    def call(path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(
            f"http://{MODELS_HOST}{path}",
            data=body,
            headers={"X-Symbi-Agent": "forged", "Content-Type": "application/json", "Authorization": "Bearer x"},
        )
        with setup.opener().open(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read()

    status, headers, body = await asyncio.to_thread(call, "/v1/chat?x=1", b'{"q": 1}')
    assert status == 200
    assert headers["Content-Length"] == str(len(body))
    assert json.loads(body) == {"path": "/v1/chat?x=1", "body": '{"q": 1}', "agent": "agent-7"}
    status, headers, body = await asyncio.to_thread(call, "/v1/stream", b"{}")
    assert headers["Transfer-Encoding"] == "chunked"
    assert body == b"data: one\n\ndata: two\n\ndata: [DONE]\n\n"
    service: Recorder = setup.proxy.services[MODELS_HOST]  # type: ignore[assignment]
    assert service.closed == [True]  # the streamed body was closed once served
    caller, request = service.service_calls[0]
    assert caller == Caller(agent_id="agent-7", task_id="t1")
    assert "x-symbi-agent" not in request.headers
    assert "connection" not in request.headers
    assert request.headers["authorization"] == "Bearer x"
    assert request.method == "POST"
    await settle(setup.records, 2)
    assert {(r.access, r.outcome, r.status) for r in setup.records} == {("internal", "allowed", 200)}


async def test_bandwidth_is_held_to_the_agents_limit(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    async with upstream(server_context(ca)) as up:
        host = EgressHost(
            EgressSettings(
                hosts={"allowed.test": UPSTREAM_ADDRESS},
                system_resolver=False,
                allow_addresses=[f"{UPSTREAM_ADDRESS}/32"],
            )
        )
        enforcer = Enforcer.around(AllowAll())
        proxy = host.proxy(Caller(agent_id="a", task_id="t"), (f"allowed.test:{up.port}",), 2, enforcer)
        records: list[Connection] = []
        proxy.record = records.append
        sock = str(tmp_path / "run" / "egress.sock")
        await proxy.open(sock)
        forwarder = Forwarder(sock, 0)
        port = await forwarder.start()
        ctx = ssl.create_default_context(cafile=str(ca.ca_pem))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": f"http://127.0.0.1:{port}"}), urllib.request.HTTPSHandler(context=ctx)
        )
        n = 6_000_000

        def fetch() -> tuple[float, int]:
            started = time.monotonic()
            with opener.open(f"https://allowed.test:{up.port}/bytes?n={n}", timeout=60) as r:
                size = len(r.read())
            return time.monotonic() - started, size

        elapsed, size = await asyncio.to_thread(fetch)
        await forwarder.close()
        await proxy.close()
    assert size == n
    rate = n / elapsed
    # 2 MB/s within ±20% (the burst is 0.1 s worth, so 6 MB take about 2.9-3 s).
    assert 1_600_000 <= rate <= 2_400_000, f"{rate / 1e6:.2f} MB/s through a 2 MB/s limit"
    await settle(records, 1)
    assert records[-1].bytes_in >= n
    assert proxy.into.total >= n


async def test_no_network_io_no_connection(tmp_path: Path) -> None:
    host = EgressHost(EgressSettings(system_resolver=False))
    proxy = host.proxy(Caller(agent_id="a", task_id="t"), ("allowed.test",), 0, Enforcer.around(AllowAll()))
    records: list[Connection] = []
    proxy.record = records.append
    sock = str(tmp_path / "run" / "egress.sock")
    await proxy.open(sock)
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n")
    answer = await reader.read()
    writer.close()
    await proxy.close()
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"bandwidth_zero" in answer
    assert records[0].reason == "bandwidth_zero"


async def test_a_fault_while_serving_is_recorded_as_denied_never_allowed(setup: Setup) -> None:
    """Something of ours fails while a connection is served (here: the resolver): the connection is closed and
    recorded as denied (internal_error), not as allowed, which the record says until a refusal."""

    class Broken:
        async def resolve(self, host: str, port: int) -> list[Any]:
            raise RuntimeError("resolver exploded")

    setup.proxy.policy.resolver = Broken()
    status, got, _ = await setup.get(f"https://allowed.test:{setup.https}/")
    assert status in (0, 502) or "Tunnel" in got
    await settle(setup.records, 1)
    rec = setup.last()
    assert (rec.outcome, rec.reason) == ("denied", "internal_error")
    assert "resolver exploded" in rec.detail


async def test_a_name_the_idna_codec_refuses_is_unresolved() -> None:
    """A label over 63 characters makes getaddrinfo raise UnicodeError (not OSError): it is a typed refusal."""
    with pytest.raises(Unresolved, match="does not resolve"):
        await SystemResolver().resolve("a" * 64 + ".wild.test", 443)
