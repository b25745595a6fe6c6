"""How the proxy turns a name into addresses: the system's resolver, or a static map from the host's settings.

The proxy resolves every name itself (the sandbox has no DNS) and connects to the address it checked, so a
name cannot resolve to one address for the check and another for the connection (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping
from typing import Protocol

from symbi_sandbox_agent.egress.addresses import Address


class Unresolved(Exception):
    """The name has no address."""


#: How long a name may take to resolve (``getaddrinfo`` runs on the daemon's shared thread pool).
RESOLVE_TIMEOUT_S = 10.0


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[Address]:
        """Every address of ``host`` (at least one), or :class:`Unresolved`."""
        ...


class SystemResolver:
    """``getaddrinfo`` on the daemon's thread pool (asyncio's default executor)."""

    async def resolve(self, host: str, port: int) -> list[Address]:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a label the IDNA codec refuses (e.g. over 63)
            raise Unresolved(f"{host[:253]} does not resolve: {exc}") from None
        except TimeoutError:
            raise Unresolved(f"{host[:253]} did not resolve within {RESOLVE_TIMEOUT_S:g} s") from None
        out: list[Address] = []
        for *_, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in out:
                out.append(address)
        if not out:
            raise Unresolved(f"{host} has no address")
        return out


class StaticResolver:
    """``[egress] hosts``: names answered from the map; any other name by ``fallback`` (None: unresolved)."""

    def __init__(self, hosts: Mapping[str, str | list[str]], fallback: Resolver | None = None) -> None:
        self.hosts: dict[str, list[Address]] = {}
        for name, value in hosts.items():
            values = [value] if isinstance(value, str) else list(value)
            self.hosts[name.lower().removesuffix(".")] = [ipaddress.ip_address(v) for v in values]
        self.fallback = fallback

    async def resolve(self, host: str, port: int) -> list[Address]:
        found = self.hosts.get(host)
        if found:
            return list(found)
        if self.fallback is None:
            raise Unresolved(f"{host} is not in [egress] hosts")
        return await self.fallback.resolve(host, port)
