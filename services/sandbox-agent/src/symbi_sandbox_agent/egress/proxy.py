"""The egress proxy of one sandbox: a Unix socket in its channel directory, the sandbox's only way out.

The sandbox has no network (``network_mode none``); its forwarder (``python -m symbi_agent.forward``) carries
``HTTP(S)_PROXY`` connections from ``127.0.0.1`` inside the container to ``egress.sock``. Each connection
is one request: ``CONNECT host:port`` (a TLS tunnel) or an absolute-form plain-HTTP request. The proxy
checks the agent's allow-list, resolves the name itself, refuses blocked addresses, asks Cedar
(``network.connect``), pins the connection to the checked address, checks that a tunnel's TLS server name
is the CONNECT's host and that a plain request's ``Host`` is its URL's, holds the traffic to the agent's
token buckets and records one :class:`~.decisions.Connection` when the connection ends (docs/network.md).
A plain request for a name registered as an internal service is answered by that service (:mod:`.serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from symbi_common.decisions import DecisionRequest
from symbi_common.policy.hooks import Verdict

from symbi_sandbox_agent.egress import http1, serve
from symbi_sandbox_agent.egress.addresses import Address, AddressPolicy
from symbi_sandbox_agent.egress.decisions import Connection, Refused, connect_request
from symbi_sandbox_agent.egress.internal import Caller, InternalService
from symbi_sandbox_agent.egress.pipe import Meter, splice
from symbi_sandbox_agent.egress.resolver import Resolver, Unresolved
from symbi_sandbox_agent.egress.rules import AllowList, Target
from symbi_sandbox_agent.egress.tls import NotClientHello, parse_client_hello

log = structlog.get_logger(__name__)

Decide = Callable[[DecisionRequest], Awaitable[Verdict]]
Record = Callable[[Connection], None]
HEAD_TIMEOUT_S = 30.0
HELLO_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"


@dataclass(slots=True)
class EgressPolicy:
    """The rules of one run: the agent's allow-list, the host's address policy, how names resolve."""

    allow: AllowList
    addresses: AddressPolicy
    resolver: Resolver
    decide: Decide
    connect_timeout_s: float = CONNECT_TIMEOUT_S

    async def authorize(self, caller: Caller, target: Target, access: str, conn: Connection) -> Address:
        """The address a connection to ``target`` is pinned to, or :class:`Refused` saying why not."""
        entry = self.allow.match(target)
        if entry is None:
            raise Refused(403, "not_allowed", f"{target} is not in the agent's network allow-list")
        conn.rule = entry.pattern
        literal = target.literal
        if literal is not None:
            if not self.addresses.explicitly_allowed(literal):
                raise Refused(403, "ip_literal", f"{target}: IP literals are refused; name the server")
            addresses: list[Address] = [literal]
        else:
            try:
                addresses = await self.resolver.resolve(target.host, target.port)
            except Unresolved as exc:
                raise Refused(502, "unresolved", str(exc)) from None
        for address in addresses:  # any blocked address refuses the name: rebinding cannot pick one later
            why = self.addresses.refusal(address)
            if why is not None:
                conn.address = str(address)
                raise Refused(403, "blocked_address", f"{target.host} resolves to {address} ({why})")
        address = addresses[0]
        conn.address = str(address)
        verdict = await self.decide(connect_request(caller.agent_id, target, str(address), access))
        conn.decision = verdict.record
        if verdict.undecided:
            raise Refused(403, "policy_undecided", f"network.connect to {target}: {verdict.record.reason}")
        if not verdict.allowed:
            raise Refused(403, "policy_denied", f"policy denied network.connect to {target}: {verdict.record.reason}")
        return address

    async def open(self, address: Address, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(str(address), port, limit=256 * 1024), self.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise Refused(502, "upstream_failed", f"{address} port {port} did not answer: {exc!r}") from None


@dataclass
class EgressProxy:
    """One run's proxy: serves its ``egress.sock`` until :meth:`close`."""

    caller: Caller
    policy: EgressPolicy
    record: Record
    out: Meter
    into: Meter
    services: Mapping[str, InternalService] = field(default_factory=dict)
    #: False when the agent's network IO limit is 0: every connection is refused.
    enabled: bool = True
    server: asyncio.AbstractServer | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def open(self, path: str, owner: tuple[int, int] | None = None) -> None:
        """Listen on ``path`` (its directory is made ``0700`` for ``owner`` if it is not there)."""
        directory = Path(path).parent
        if not directory.exists():
            directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.mkdir(mode=0o700)
            if owner is not None:
                os.chown(directory, *owner)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.server = await asyncio.start_unix_server(self._accept, path=path, limit=http1.MAX_HEAD)
        if owner is not None:
            os.chown(path, *owner)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        """Stop listening and end every connection (each is recorded as it ends). Idempotent."""
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= MAX_CONNECTIONS:
            writer.write(http1.refusal(403, "bad_request", f"at most {MAX_CONNECTIONS} connections at once"))
            writer.close()
            return
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def connect(self, access: str = "gateway") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection into this proxy from the daemon itself (the SDK's ``http.request``): the same rules,
        recorded with ``access``."""
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=theirs, limit=http1.MAX_HEAD)
        task = asyncio.get_running_loop().create_task(self._serve_internal(reader, writer, access))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.open_connection(sock=ours, limit=256 * 1024)

    async def _serve_internal(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, access: str) -> None:
        try:
            await self.handle(reader, writer, access)
        finally:
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, access: str = "proxy") -> None:
        """Serve one connection of the sandbox: read its request, decide, carry it, record it."""
        started = time.monotonic()
        conn = Connection(host="", port=0, method="", access=access)
        try:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT_S):  # no task per connection, unlike wait_for
                    raw = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return  # nothing was asked: nothing to record
            try:
                head = http1.parse_head(raw[:-4])
                conn.method = head.method
                if head.method == "CONNECT":
                    await self._tunnel(head, reader, writer, conn)
                else:
                    await self._plain(head, reader, writer, conn)
            except http1.BadRequest as exc:
                reason = "host_mismatch" if isinstance(exc, http1.HostMismatch) else "bad_request"
                raise Refused(403 if reason == "host_mismatch" else 400, reason, str(exc)) from None
        except Refused as exc:
            answered = conn.status != 0  # a tunnel already established: no HTTP answer fits in it any more
            conn.outcome, conn.reason, conn.detail, conn.status = "denied", exc.reason, str(exc), exc.status
            conn.decision = exc.decision or conn.decision
            if not answered and not writer.is_closing():
                writer.write(http1.refusal(exc.status, exc.reason, str(exc)))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            conn.detail = conn.detail or "the sandbox closed the connection"
        except Exception as exc:  # a fault of ours, not a decision: never recorded as allowed
            log.exception("egress connection failed", host=conn.host[:253], access=access)
            conn.outcome, conn.reason, conn.detail = "denied", "internal_error", f"{type(exc).__name__}: {exc}"[:500]
        finally:
            if conn.method:
                conn.duration_s = round(time.monotonic() - started, 4)
                self.record(conn)

    async def _tunnel(
        self, head: http1.RequestHead, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> None:
        target = http1.connect_target(head)
        conn.host, conn.port = target.host, target.port
        self._check_enabled()
        address = await self.policy.authorize(self.caller, target, conn.access, conn)
        writer.write(ESTABLISHED)
        conn.status = 200
        await writer.drain()
        hello = await self._client_hello(reader, target)
        upstream = await self.policy.open(address, target.port)
        upstream[1].write(hello)
        await self.out.pay(len(hello))
        conn.bytes_out += len(hello)
        try:
            await splice((reader, writer), upstream, self.out, self.into, conn)
        finally:
            upstream[1].close()

    async def _client_hello(self, reader: asyncio.StreamReader, target: Target) -> bytes:
        """The tunnel's first bytes, up to a whole ClientHello whose server name is ``target``'s host."""
        data = b""
        deadline = time.monotonic() + HELLO_TIMEOUT_S
        while True:
            try:
                hello = parse_client_hello(data)
            except NotClientHello as exc:
                raise Refused(403, "not_tls", f"CONNECT {target}: {exc}") from None
            if hello is not None:
                break
            left = deadline - time.monotonic()
            try:
                chunk = await asyncio.wait_for(reader.read(16 * 1024), max(left, 0.001))
            except TimeoutError:
                raise Refused(403, "not_tls", f"CONNECT {target}: no ClientHello in {HELLO_TIMEOUT_S} s") from None
            if not chunk:
                raise ConnectionError("the sandbox closed the tunnel before its ClientHello")
            data += chunk
        name = hello.server_name
        if name is None and target.literal is None:
            raise Refused(403, "not_tls", f"CONNECT {target}: the ClientHello names no server (SNI)")
        if name is not None and name != target.host:
            raise Refused(403, "sni_mismatch", f"CONNECT {target} but the TLS server name is {name[:100]!r}")
        return data

    async def _plain(
        self, head: http1.RequestHead, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> None:
        request = http1.plain_target(head)
        target = request.target
        conn.host, conn.port = target.host, target.port
        service = self.services.get(target.host)
        if service is not None:
            conn.rule, conn.access = "internal", "internal"
            conn.status, conn.bytes_out, conn.bytes_in = await serve.internal(
                service, self.caller, head, request.path, reader, writer, self.into
            )
            return
        self._check_enabled()
        address = await self.policy.authorize(self.caller, target, conn.access, conn)
        upstream = await self.policy.open(address, target.port)
        conn.status = 200  # from here the upstream answers
        first = http1.encode_request(head.method, request.path, http1.forwarded_headers(head))
        upstream[1].write(first)
        await self.out.pay(len(first))
        conn.bytes_out += len(first)
        try:
            await splice((reader, writer), upstream, self.out, self.into, conn)
        finally:
            upstream[1].close()

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise Refused(403, "bandwidth_zero", "the agent's network IO limit is 0 MB/s: it has no network")
