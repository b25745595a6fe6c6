"""The egress of this host's sandboxes: the host's settings, the agents' token buckets, one proxy per run.

:class:`EgressHost` is made once from ``[egress]``; :meth:`EgressHost.start` opens a run's proxy on its
channel directory's ``egress.sock`` and :meth:`RunEgress.close` stops it, waits until every connection of
the run is recorded (``execution.egress``, before the run's terminal event) and reports the run's bytes.
Internal services (the model gateway) register their reserved names with :meth:`EgressHost.register`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from symbi_common.decisions import DecisionRequest
from symbi_common.errors import ConfigError
from symbi_common.policy.enforcement import SANDBOX_EGRESS
from symbi_common.policy.hooks import Enforcer, Verdict
from symbi_common.settings_sandbox import EgressSettings
from symbi_contracts.sandbox_agent.events import ExecutionEgress

from symbi_sandbox_agent.egress.addresses import AddressPolicy
from symbi_sandbox_agent.egress.bucket import TokenBucket
from symbi_sandbox_agent.egress.decisions import Connection
from symbi_sandbox_agent.egress.internal import Caller, InternalService
from symbi_sandbox_agent.egress.pipe import Meter
from symbi_sandbox_agent.egress.proxy import EgressPolicy, EgressProxy
from symbi_sandbox_agent.egress.resolver import Resolver, StaticResolver, SystemResolver
from symbi_sandbox_agent.egress.rules import AllowList

Store = Callable[[ExecutionEgress], Coroutine[Any, Any, None]]


def check_egress_settings(settings: EgressSettings) -> None:
    """Refuse ``[egress]`` values the proxy could not use, naming the setting (at start-up, not per connection)."""
    try:
        AddressPolicy.parse(settings.allow_addresses)
    except ValueError as exc:
        raise ConfigError(f"{exc}; write CIDRs such as 203.0.113.0/24", setting="egress.allow_addresses") from None
    try:
        StaticResolver(settings.hosts)
    except ValueError as exc:
        raise ConfigError(f"{exc}; map names to IP addresses", setting="egress.hosts") from None
    if settings.connect_timeout_s <= 0:
        raise ConfigError("must be more than 0", setting="egress.connect_timeout_s")
    if settings.ca_file and not os.path.isfile(settings.ca_file):
        raise ConfigError(f"{settings.ca_file} is not a file", setting="egress.ca_file")


def resolver_of(settings: EgressSettings) -> Resolver:
    system = SystemResolver() if settings.system_resolver else None
    if settings.hosts:
        return StaticResolver(settings.hosts, fallback=system)
    return system or StaticResolver({})


def event_of(conn: Connection, attempt: int, agent_id: str, number: int) -> ExecutionEgress:
    """The record of the run's ``number``-th connection."""
    return ExecutionEgress(
        attempt=attempt,
        host=conn.host,
        port=conn.port,
        address=conn.address,
        method=conn.method,
        access=conn.access,
        outcome="allowed" if conn.outcome == "allowed" else "denied",
        reason=conn.reason,
        detail=conn.detail[:500],
        rule=conn.rule,
        status=conn.status,
        bytes_out=conn.bytes_out,
        bytes_in=conn.bytes_in,
        duration_s=conn.duration_s,
        decision=conn.decision,
        agent_id=agent_id,
        conn=number,
    )


@dataclass
class RunEgress:
    """One run's proxy and the recording of its connections."""

    proxy: EgressProxy
    attempt: int
    store: Store
    #: What the daemon's own TLS connections (``http.request``) trust.
    tls: ssl.SSLContext
    _stores: set[asyncio.Task[None]] = field(default_factory=set)
    #: Connections recorded so far (each record is numbered: ``ExecutionEgress.conn``).
    _recorded: int = 0

    def record(self, conn: Connection) -> None:
        self._recorded += 1
        event = event_of(conn, self.attempt, self.proxy.caller.agent_id, self._recorded)
        task = asyncio.get_running_loop().create_task(self.store(event))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection into the run's proxy for the SDK's ``http.request`` (recorded as ``gateway``)."""
        return await self.proxy.connect("gateway")

    @property
    def bytes(self) -> tuple[int, int]:
        """``(out, in)``: what the run sent and received through its proxy."""
        return self.proxy.out.total, self.proxy.into.total

    async def close(self) -> None:
        """Stop the proxy and wait for the records of its connections. Idempotent."""
        await self.proxy.close()
        while self._stores:
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(self._stores), return_exceptions=True)


class EgressHost:
    """The egress settings of this host and the token buckets of its agents (shared by their runs)."""

    def __init__(self, settings: EgressSettings, resolver: Resolver | None = None) -> None:
        self.settings = settings
        self.addresses = AddressPolicy.parse(settings.allow_addresses)
        self.resolver = resolver or resolver_of(settings)
        self.services: dict[str, InternalService] = {}
        self.tls = ssl.create_default_context(cafile=settings.ca_file or None)
        if settings.ca_file:
            self.tls.load_default_certs()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def register(self, name: str, service: InternalService) -> None:
        """Answer plain-HTTP requests for ``name`` with ``service`` (e.g. ``models.symbi.internal``)."""
        self.services[name.lower()] = service

    def bucket(self, agent_id: str, direction: str, mbps: int) -> TokenBucket:
        """The agent's bucket of one direction (``out``/``in``) at ``mbps``; a new limit replaces it."""
        key = (agent_id, direction)
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != mbps * 1_000_000:
            bucket = self._buckets[key] = TokenBucket.for_mbps(mbps)
        return bucket

    def proxy(self, caller: Caller, allow: tuple[str, ...], mbps: int, enforcer: Enforcer) -> EgressProxy:
        async def decide(request: DecisionRequest) -> Verdict:
            return await enforcer.decide(request, SANDBOX_EGRESS)

        policy = EgressPolicy(
            allow=AllowList.parse(allow),
            addresses=self.addresses,
            resolver=self.resolver,
            decide=decide,
            connect_timeout_s=self.settings.connect_timeout_s,
        )
        out = Meter(self.bucket(caller.agent_id, "out", mbps) if mbps > 0 else None)
        into = Meter(self.bucket(caller.agent_id, "in", mbps) if mbps > 0 else None)
        return EgressProxy(caller, policy, lambda _c: None, out, into, services=self.services, enabled=mbps > 0)

    async def start(
        self,
        caller: Caller,
        allow: tuple[str, ...],
        mbps: int,
        enforcer: Enforcer,
        *,
        attempt: int,
        store: Store,
        socket_path: str,
        owner: tuple[int, int],
    ) -> RunEgress:
        """Open a run's proxy on ``socket_path``."""
        proxy = self.proxy(caller, allow, mbps, enforcer)
        run = RunEgress(proxy, attempt, store, self.tls)
        proxy.record = run.record
        await proxy.open(socket_path, owner)
        return run
