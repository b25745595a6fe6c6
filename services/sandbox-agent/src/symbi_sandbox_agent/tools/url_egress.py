"""A streamable-HTTP tool server's URL under the host's egress rules. I/O.

The daemon reaches such a server itself (it has no sandbox of its own), so the same address rules as the
sandboxes' egress proxy apply (``symbi_sandbox_agent.egress.addresses``): loopback, private, link-local,
metadata, shared and reserved addresses are refused unless ``[egress] allow_addresses`` names them; names
are resolved by the proxy's resolver (``[egress] hosts``, then the system's). The URL is checked when the
server is registered (a typed refusal) and again on every connection: the client connects to the address
it checked, never to one a second lookup returns (DNS rebinding).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2
from httpcore2._backends.auto import AutoBackend  # the pool's default backend, not exported
from symbi_common.settings_sandbox import EgressSettings
from symbi_contracts.tools.errors import ToolRefused

from symbi_sandbox_agent.egress.addresses import Address, AddressPolicy
from symbi_sandbox_agent.egress.host import resolver_of
from symbi_sandbox_agent.egress.resolver import Resolver, SystemResolver, Unresolved
from symbi_sandbox_agent.egress.rules import ip_literal
from symbi_sandbox_agent.tools.bounded_http import MAX_MESSAGE_BYTES, bounded_http_client


@dataclass(frozen=True, slots=True)
class UrlEgress:
    """The address rules and resolver tool server URLs are reached under."""

    addresses: AddressPolicy = field(default_factory=AddressPolicy)
    resolver: Resolver = field(default_factory=SystemResolver)

    @classmethod
    def of(cls, settings: EgressSettings) -> UrlEgress:
        return cls(AddressPolicy.parse(settings.allow_addresses), resolver_of(settings))

    async def address(self, host: str, port: int, what: str) -> Address:
        """The first address of ``host`` the rules allow; :class:`ToolRefused` naming each one refused."""
        literal = ip_literal(host)
        try:
            found = [literal] if literal is not None else await self.resolver.resolve(host, port)
        except Unresolved as exc:
            raise ToolRefused(f"{what}: {exc}") from None
        refused = []
        for address in found:
            why = self.addresses.refusal(address)
            if why is None:
                return address
            refused.append(f"{address} ({why})")
        raise ToolRefused(
            f"{what}: {host} resolves only to addresses the egress rules refuse: {', '.join(refused)}; "
            "[egress] allow_addresses must name them"
        )

    async def check_url(self, server: str, url: str) -> None:
        """Refuse ``url`` unless its host has an address the rules allow."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ToolRefused(f"server {server!r}: {url!r} is not an http(s) URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ToolRefused(f"server {server!r}: {url!r} has a bad port") from None
        await self.address(parts.hostname, port, f"server {server!r}")


class CheckedBackend(httpcore2.AsyncNetworkBackend):
    """Connects to the address :class:`UrlEgress` allows for the host (TLS still names the host)."""

    def __init__(self, egress: UrlEgress) -> None:
        self.egress = egress
        self.inner: httpcore2.AsyncNetworkBackend = AutoBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            address = await self.egress.address(host, port, "tool server")
        except ToolRefused as exc:
            raise httpcore2.ConnectError(str(exc)) from None
        return await self.inner.connect_tcp(str(address), port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("a tool server is reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def checked_transport(egress: UrlEgress) -> httpx2.AsyncHTTPTransport:
    """An HTTP transport whose every connection goes to an address ``egress`` allows; no proxy from the
    environment."""
    transport = httpx2.AsyncHTTPTransport(trust_env=False)
    # httpx2 takes no network backend of its own: its pool is replaced by one with the checking backend.
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=httpx2.create_ssl_context(trust_env=False), network_backend=CheckedBackend(egress)
    )
    return transport


@contextlib.asynccontextmanager
async def checked_streams(
    url: str, egress: UrlEgress, server: str, *, limit: int = MAX_MESSAGE_BYTES
) -> AsyncIterator[Any]:
    """The MCP SDK's streamable-HTTP transport to ``url`` over :func:`checked_transport`, each message of
    ``server`` bounded (:mod:`symbi_sandbox_agent.tools.bounded_http`)."""
    async with bounded_http_client(url, server, checked_transport(egress), limit=limit) as streams:
        yield streams
