"""The tools an agent may use: registered servers, their live connections and the registry's state. I/O.

:class:`ToolService` is what the gateway (``tool_ops``) and an operator's commands call. Reading a server's
tools (:meth:`ToolService.refresh`) lists them fresh from the server, refuses colliding names, canonicalises
and pins each definition, scans it for poisoning, verifies its SchemaPin signature offline, and records what
changed in the server's event stream (a changed approved definition blocks the tool). A call
(:meth:`ToolService.call`) is served only for an approved tool whose verification holds and whose server still
lists the approved definition (a server that said its list changed is re-read first); it has a timeout, a
result size cap and a rate limit per agent and tool. Results are untrusted data: passed on, never interpreted.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import mcp.types as mt
import msgspec
import structlog
from schemapin.bundle import SchemaPinTrustBundle
from symbi_common.errors import SymbiError
from symbi_contracts.tools.errors import (
    ToolCallFailed,
    ToolNotApproved,
    ToolRefused,
    ToolResultTooLarge,
    ToolsDisabled,
    ToolServerUnavailable,
    ToolVerificationFailed,
    UnknownTool,
)
from symbi_contracts.tools.events import ToolServerRegistered

from symbi_sandbox_agent.tools.canon import canonical_json, definition_of, digest_of, pin_of
from symbi_sandbox_agent.tools.limits import TokenBucket, ToolLimits
from symbi_sandbox_agent.tools.listed import Called, Listed
from symbi_sandbox_agent.tools.names import NameRefused, check_server_name, check_tool_names, qualified, split
from symbi_sandbox_agent.tools.registry import (
    TRUSTED,
    Approve,
    Observe,
    PinKey,
    RaiseTier,
    RefuseListing,
    Remove,
    Revoke,
    ServerState,
    ToolRecord,
)
from symbi_sandbox_agent.tools.risk import assess, chosen_tier, raised
from symbi_sandbox_agent.tools.scan import scan
from symbi_sandbox_agent.tools.servers import McpConnection, container_name, transport_for
from symbi_sandbox_agent.tools.stored_registry import RegistryPort
from symbi_sandbox_agent.tools.url_egress import UrlEgress
from symbi_sandbox_agent.tools.verify import signature_of, verify

log = structlog.get_logger(__name__)
#: The largest tool definition (canonical JSON) a listing may hold: its record must fit one event.
MAX_DEFINITION_BYTES = 64 * 1024


class ToolService:
    def __init__(
        self,
        registry: RegistryPort,
        bundle: SchemaPinTrustBundle,
        *,
        limits: ToolLimits | None = None,
        local: bool = False,
        egress: UrlEgress | None = None,
        enabled: bool = True,
    ) -> None:
        self.registry = registry
        #: ``[mcp] discovery_enabled``: off, no server is registered, started, listed or called (ToolsDisabled).
        self.enabled = enabled
        self.bundle = bundle
        self.limits = limits or ToolLimits()
        #: Run stdio servers as child processes instead of sandbox containers (development, benchmark).
        self.local = local
        #: The address rules a server's URL is reached under (default: public addresses only).
        self.egress = egress or UrlEgress()
        self.connections: dict[str, McpConnection] = {}
        self.definitions: dict[str, dict[str, dict[str, Any]]] = {}
        self.bucket = TokenBucket(self.limits.rate_per_s, self.limits.burst)

    # --- servers ---------------------------------------------------------------------------------------

    async def register(self, reg: ToolServerRegistered) -> ServerState:
        """Record ``reg`` (refused if its name collides, its image is not pinned or its ``requested_tier`` is
        below its risk assessment) in the tier assessed, start its server and read its tools."""
        self._check_enabled()
        self._check_room(reg.server)
        try:
            check_server_name(reg.server, self.connections)
        except NameRefused as exc:
            raise ToolRefused(str(exc)) from None
        transport_for(reg, local=self.local)  # refuses an unpinned image or a bad URL before anything is recorded
        if reg.transport == "http":
            await self.egress.check_url(reg.server, reg.url)
        assessment = assess(transport=reg.transport, image=reg.image, domain=reg.domain, env=reg.env)
        tier = chosen_tier(reg.requested_tier, assessment, reg.server)
        reg = msgspec.structs.replace(reg, tier=tier, assessed_tier=assessment.tier, risk_factors=assessment.factors)
        await self.registry.execute(reg.server, reg)
        return await self.attach(reg.server)

    async def attach(self, server: str) -> ServerState:
        """Connect to an already registered server and read its tools (one connection more than
        ``limits.max_connections`` is refused)."""
        self._check_enabled()
        state = await self.registry.state(server, fresh=True)
        if state.registration is None:
            raise UnknownTool(f"no server named {server!r} is registered")
        conn = self.connections.get(server)
        if conn is not None and conn.registration != state.registration:
            await self._drop(server)  # made for an earlier registration of the name
        if server not in self.connections:
            self._check_room(server)
            reg = state.registration
            sandboxed = reg.transport == "stdio" and not self.local
            container = container_name(server) if sandboxed else ""
            transport = transport_for(
                reg, local=self.local, container=container, egress=self.egress, limit=self.limits.max_message_bytes
            )
            conn = McpConnection(server, transport, registration=reg, container=container)
            await conn.start(self.limits.connect_timeout_s)
            self.connections[server] = conn
        return await self.refresh(server)

    async def remove(self, server: str, by: str = "", reason: str = "") -> list[str]:
        """Remove ``server`` (recorded, naming the operator): its connection is closed, its sandbox container
        removed, its tools unknown from now on. Returns the names of the tools it had."""
        state = await self.registry.execute(server, Remove(by, reason))
        before = sorted(self.definitions.get(server, {}))
        await self._drop(server)
        assert state.registration is None
        return [qualified(server, tool) for tool in before]

    async def _drop(self, server: str) -> None:
        self.definitions.pop(server, None)
        conn = self.connections.pop(server, None)
        if conn is not None:
            await conn.close()

    async def _current(self, server: str, *, fresh: bool = False) -> ServerState:
        """``server``'s state, its connection dropped if the server was removed since (through any daemon) and
        made again if it was registered anew: raises :class:`UnknownTool` for a server no longer registered."""
        state = await self.registry.state(server, fresh=fresh)
        conn = self.connections.get(server)
        if state.registration is None:
            await self._drop(server)
            raise UnknownTool(f"tool server {server!r} was removed")
        if conn is not None and conn.registration != state.registration:
            state = await self.attach(server)
        return state

    async def refresh(self, server: str) -> ServerState:
        """Read ``server``'s tools from the server and record what changed.

        A refresh that fails half-way (the server silent, the event store failing) leaves nothing the server
        listed callable, and the next call lists again: a definition approved before is never served on the
        strength of an old listing once the server may have changed it. (A refused listing is recorded.)"""
        conn = self._connection(server)
        try:
            return await self._refresh(server, conn)
        except ToolRefused:
            raise  # (its definitions are cleared and the refusal recorded: _refused)
        except BaseException:
            self.definitions[server] = {}
            conn.changed.set()
            raise

    async def _refresh(self, server: str, conn: McpConnection) -> ServerState:
        """List ``server``'s tools and store the listing, unless one begun after it was stored meanwhile: two
        listings may be under way at once (a call's re-read, an agent's ``tools.list``), and the older one,
        answered before a change the newer one saw, must not be stored over it. ``conn.changed`` is cleared
        once a listing is stored (accepted or refused) if the server announced no change since it began."""
        conn.listings += 1
        ticket, changes = conn.listings, conn.changes
        listed: list[dict[str, Any]] | ToolRefused
        try:
            listed = await conn.list_tools(self.limits.timeout_s)
        except ToolRefused as exc:
            listed = exc
        async with conn.storing:  # one at a time: two listings' records never interleave
            if ticket < conn.stored:
                return await self.registry.state(server)
            conn.stored = ticket
            try:
                return await self._store(server, conn, listed)
            finally:  # (one that failed half-way sets it again: refresh)
                if conn.changes == changes:
                    conn.changed.clear()

    async def _store(self, server: str, conn: McpConnection, listed: list[dict[str, Any]] | ToolRefused) -> ServerState:
        if isinstance(listed, ToolRefused):
            raise await self._refused(server, conn, listed.message) from None
        state = await self.registry.state(server, fresh=True)
        if state.registration is None:
            await self._drop(server)  # removed meanwhile (through any daemon): what it listed is no longer its
            raise UnknownTool(f"tool server {server!r} was removed")
        if state.registration != conn.registration:
            await self._drop(server)  # registered anew through another daemon: connect to that registration
            return await self.attach(server)
        try:
            names = check_tool_names(server, [str(t.get("name", "")) for t in listed])
        except NameRefused as exc:
            raise await self._refused(server, conn, str(exc)) from None
        definitions = {name: definition_of(tool) for name, tool in zip(names, listed, strict=True)}
        pins: dict[str, str] = {}
        for name, definition in definitions.items():  # every pin first: a bad one refuses before anything is recorded
            try:
                size = len(canonical_json(definition))
                pins[name] = pin_of(definition)
            except ValueError as exc:
                raise await self._refused(
                    server, conn, f"{server}.{name}: the definition is not plain JSON: {exc}"
                ) from None
            if size > MAX_DEFINITION_BYTES:  # its record would not fit an event: refused, not an error for all
                raise await self._refused(
                    server, conn, f"{server}.{name}: the definition has {size} bytes, at most {MAX_DEFINITION_BYTES}"
                )
        others = [(s, t) for s, tools in self.definitions.items() if s != server for t in tools]
        for (name, definition), tool in zip(definitions.items(), listed, strict=True):
            checked = verify(
                server,
                definition,
                signature_of(tool),
                domain=state.registration.domain,
                bundle=self.bundle,
                pinned=state.key_fingerprint,
            )
            if checked.valid and not state.key_fingerprint:
                state = await self.registry.execute(server, PinKey(state.registration.domain, checked.fingerprint))
            observed = Observe(
                name,
                pins[name],
                str(definition.get("description", "")),
                scan(server, definition, others),
                checked.outcome,
                checked.fingerprint,
            )
            state = await self.registry.execute(server, observed)
        self.definitions[server] = definitions
        return await self._reassess(server, conn, state)

    async def _refused(self, server: str, conn: McpConnection, reason: str) -> ToolRefused:
        """The refusal of ``server``'s listing, to raise: nothing it listed is callable from now on, and the
        refusal is recorded (once per reason) while the registration it was listed for is the one registered.
        The definitions are cleared first, so an error recording it (raised, not swallowed) leaves none."""
        self.definitions[server] = {}
        state = await self.registry.state(server, fresh=True)
        if state.registration is not None and state.registration == conn.registration:
            await self.registry.execute(server, RefuseListing(reason))
        return ToolRefused(reason)

    async def _reassess(self, server: str, conn: McpConnection, state: ServerState) -> ServerState:
        """Raise the server's tier if it listed flagged tools; a sandboxed server is started again in it."""
        assert state.registration is not None
        flagged = [qualified(server, t) for t, r in state.tools.items() if r.flags and t in self.definitions[server]]
        bump = raised(state.registration.tier, flagged)
        if bump is None:
            return state
        state = await self.registry.execute(server, RaiseTier(bump.tier, bump.factors))
        if conn.container:
            await self._drop(server)
            return await self.attach(server)
        conn.registration = state.registration  # a URL or a local child: no sandbox to move
        return state

    async def approve(self, name: str, pin: str = "", by: str = "") -> ToolRecord:
        server, tool = split(name)
        state = await self.registry.execute(server, Approve(tool, pin, by))
        return state.tools[tool]

    async def revoke(self, name: str, by: str = "", reason: str = "") -> ToolRecord:
        server, tool = split(name)
        state = await self.registry.execute(server, Revoke(tool, by, reason))
        return state.tools[tool]

    # --- what agents see and call ----------------------------------------------------------------------

    async def list(self, *, refresh: bool = True, callable_only: bool = False) -> list[Listed]:
        """Every tool of every connected server (re-read from the servers first when ``refresh``)."""
        self._check_enabled()
        out = []
        for server in sorted(self.connections):
            try:
                if refresh:
                    await self.refresh(server)
                state = await self._current(server)
            except (ToolRefused, UnknownTool, ToolServerUnavailable):  # one silent server holds up no other
                continue
            except SymbiError as exc:  # nor one whose listing could not be recorded
                log.error("a tool server's listing failed", server=server, error=str(exc))
                continue
            for tool, definition in sorted(self.definitions.get(server, {}).items()):
                record = state.tools.get(tool)
                if record is None or (callable_only and not record.callable):
                    continue
                out.append(
                    Listed(
                        name=qualified(server, tool),
                        server=server,
                        tool=tool,
                        status=record.status,
                        pin=record.seen_pin,
                        verification=record.verification,
                        flags=record.flags,
                        description=record.description,
                        input_schema=dict(definition.get("inputSchema") or {}),
                    )
                )
        return out

    async def callable_record(self, name: str) -> ToolRecord:
        """The tool's record if it may be called now; else the typed refusal (unknown, not approved, failed
        verification, or a definition listed now that is not the one approved)."""
        self._check_enabled()
        try:
            server, tool = split(name)
        except NameRefused as exc:
            raise UnknownTool(str(exc)) from None
        if server not in self.connections:
            raise UnknownTool(f"no connected tool server named {server!r}")
        state = await self._current(server)
        if self.connections[server].changed.is_set():
            with contextlib.suppress(ToolRefused):  # a colliding listing leaves nothing callable
                state = await self.refresh(server)
        record = state.tools.get(tool)
        if record is None or tool not in self.definitions.get(server, {}):
            raise UnknownTool(f"server {server!r} lists no tool {tool!r}")
        if record.verification not in TRUSTED:
            raise ToolVerificationFailed(
                f"{name} failed SchemaPin verification: {record.verification}", verification=record.verification
            )
        if record.status != "approved":
            hint = {
                "pending": "an operator has not approved it yet",
                "blocked": "its definition changed after it was approved; an operator must review and re-approve it",
                "revoked": "an operator revoked it",
            }.get(record.status, record.status)
            raise ToolNotApproved(f"{name} may not be called: {hint}", status=record.status, pin=record.seen_pin)
        if pin_of(self.definitions[server][tool]) != record.approved_pin:
            raise ToolNotApproved(f"{name} is listed with a definition that was not approved", status="blocked")
        return record

    def rate_wait(self, agent: str, name: str) -> float:
        """0 if ``agent`` may call ``name`` now, else the seconds until it may."""
        return self.bucket.take((agent, name), time.monotonic())

    async def call(self, name: str, arguments: dict[str, Any]) -> Called:
        """Call an approved tool (:meth:`callable_record` first); the server's error result is
        :class:`ToolCallFailed`, an oversized one :class:`ToolResultTooLarge`."""
        server, tool = split(name)
        answer: mt.CallToolResult = await self._connection(server).call(tool, arguments, self.limits.timeout_s)
        result = answer.model_dump(by_alias=True, exclude_none=True, mode="json")
        result.pop("_meta", None)
        size = len(canonical_json(result))
        if size > self.limits.max_result_bytes:
            raise ToolResultTooLarge(
                f"{name} answered {size} bytes; at most {self.limits.max_result_bytes} are passed on",
                size=size,
                max_result_bytes=self.limits.max_result_bytes,
            )
        if answer.is_error:
            text = " ".join(c.get("text", "") for c in result.get("content", []) if isinstance(c, dict))
            raise ToolCallFailed(f"{name} answered with an error: {text[:500]}", digest=digest_of(result))
        return Called(result=result, size=size, digest=digest_of(result))

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise ToolsDisabled("MCP tools are switched off on this host ([mcp] discovery_enabled = false)")

    def _check_room(self, server: str) -> None:
        if server not in self.connections and len(self.connections) >= self.limits.max_connections:
            raise ToolServerUnavailable(
                f"tool server {server!r} not connected: {len(self.connections)} servers are, the most"
                " [mcp] max_concurrent_connections allows on this host"
            )

    def _connection(self, server: str) -> McpConnection:
        self._check_enabled()
        conn = self.connections.get(server)
        if conn is None:
            raise UnknownTool(f"no connected tool server named {server!r}")
        return conn

    async def close(self) -> None:
        for conn in list(self.connections.values()):
            with contextlib.suppress(ToolServerUnavailable):  # one container that will not go holds up no other
                await conn.close()
        self.connections.clear()
