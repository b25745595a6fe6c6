"""The tool registry as an aggregate per server (``toolserver.<server>``): state folded from its events, and
the pure rules that turn a command into events (or a typed refusal). No I/O.

A tool's status follows from its record: ``revoked``; ``blocked`` (an approved definition changed, until
re-approved); ``approved`` (the pin approved is the pin seen now); else ``pending``. Only ``approved`` tools
whose verification is ``verified`` or ``unsigned`` (a server registered without a SchemaPin domain) are
callable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec
from symbi_contracts.tools.errors import ToolRefused, UnknownTool
from symbi_contracts.tools.events import (
    CODEC,
    ToolApproved,
    ToolDefinitionChanged,
    ToolKeyPinned,
    ToolListingRefused,
    ToolRevoked,
    ToolSeen,
    ToolServerEvent,
    ToolServerRegistered,
    ToolServerRemoved,
    ToolServerTierRaised,
)

Status = Literal["pending", "approved", "blocked", "revoked"]
#: Verification outcomes under which a tool may be approved and called.
TRUSTED = ("verified", "unsigned")


class ToolRecord(msgspec.Struct, kw_only=True):
    name: str
    seen_pin: str = ""
    description: str = ""
    flags: tuple[str, ...] = ()
    verification: str = "unsigned"
    key_fingerprint: str = ""
    approved_pin: str = ""
    #: The pin that was approved when the definition changed (a blocked tool).
    blocked_from: str = ""
    revoked: bool = False

    @property
    def status(self) -> Status:
        if self.revoked:
            return "revoked"
        if self.approved_pin and self.approved_pin == self.seen_pin:
            return "approved"
        return "blocked" if self.blocked_from else "pending"

    @property
    def callable(self) -> bool:
        return self.status == "approved" and self.verification in TRUSTED


class ServerState(msgspec.Struct, kw_only=True):
    server: str
    #: As registered, with ``tier``, ``assessed_tier`` and ``risk_factors`` raised by what it listed since.
    registration: ToolServerRegistered | None = None
    key_fingerprint: str = ""
    tools: dict[str, ToolRecord] = msgspec.field(default_factory=dict)
    #: Why the last listing was refused ("" once one was accepted).
    listing_refused: str = ""


# --- commands ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observe:
    """What the server lists for one tool now (from ``tools/list``), with its flags and verification."""

    tool: str
    pin: str
    description: str
    flags: tuple[str, ...]
    verification: str
    key_fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class RefuseListing:
    reason: str


@dataclass(frozen=True, slots=True)
class Approve:
    tool: str
    #: The pin the operator reviewed; empty approves the definition seen now.
    pin: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class Revoke:
    tool: str
    by: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PinKey:
    domain: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class RaiseTier:
    tier: Literal["tier1", "tier2"]
    factors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Remove:
    by: str = ""
    reason: str = ""


Command = ToolServerRegistered | Observe | Approve | Revoke | PinKey | RefuseListing | RaiseTier | Remove


class ToolServerAggregate:
    aggregate_type = "toolserver"
    codec = CODEC
    state_type = ServerState

    def initial(self, aggregate_id: str) -> ServerState:
        return ServerState(server=aggregate_id)

    def apply(self, state: ServerState, event: ToolServerEvent) -> ServerState:
        if isinstance(event, ToolServerRemoved):
            return self.initial(state.server)  # what came before is history: a new registration starts fresh
        tools = dict(state.tools)
        s = msgspec.structs.replace(state, tools=tools)
        if isinstance(event, ToolServerRegistered):
            s.registration = event
        elif isinstance(event, ToolServerTierRaised) and s.registration is not None:
            factors = tuple(dict.fromkeys((*s.registration.risk_factors, *event.factors)))
            s.registration = msgspec.structs.replace(
                s.registration, tier=event.tier, assessed_tier=event.tier, risk_factors=factors
            )
        elif isinstance(event, ToolKeyPinned):
            s.key_fingerprint = event.fingerprint
        elif isinstance(event, ToolListingRefused):
            s.listing_refused = event.reason
        elif isinstance(event, ToolSeen):
            s.listing_refused = ""
            old = tools.get(event.tool) or ToolRecord(name=event.tool)
            tools[event.tool] = msgspec.structs.replace(
                old,
                seen_pin=event.pin,
                description=event.description,
                flags=event.flags,
                verification=event.verification,
                key_fingerprint=event.key_fingerprint,
            )
        elif isinstance(event, ToolApproved):
            old = tools.get(event.tool) or ToolRecord(name=event.tool)
            tools[event.tool] = msgspec.structs.replace(old, approved_pin=event.pin, blocked_from="", revoked=False)
        elif isinstance(event, ToolDefinitionChanged):
            old = tools.get(event.tool) or ToolRecord(name=event.tool)
            tools[event.tool] = msgspec.structs.replace(old, approved_pin="", blocked_from=event.approved_pin)
        elif isinstance(event, ToolRevoked):
            old = tools.get(event.tool) or ToolRecord(name=event.tool)
            tools[event.tool] = msgspec.structs.replace(old, approved_pin="", revoked=True)
        return s

    def decide(self, state: ServerState, command: Command) -> list[ToolServerEvent]:
        if isinstance(command, ToolServerRegistered):
            if state.registration is None:
                return [command]
            if _configuration(state.registration) == _configuration(command):
                return []
            raise ToolRefused(
                f"server {state.server!r} is already registered with another configuration (by "
                f"{state.registration.registered_by or 'an operator'}); it is never merged: remove it first "
                "(`symbi tools rm`) or use another name",
                server=state.server,
            )
        if state.registration is None:
            raise UnknownTool(f"no server named {state.server!r} is registered; add it with `symbi tools add`")
        if isinstance(command, RaiseTier):
            if state.registration.tier == command.tier:
                return []
            return [ToolServerTierRaised(tier=command.tier, factors=command.factors)]
        if isinstance(command, Remove):
            return [ToolServerRemoved(removed_by=command.by, reason=command.reason)]
        if isinstance(command, PinKey):
            if state.key_fingerprint == command.fingerprint:
                return []
            if state.key_fingerprint:
                raise ToolRefused(f"server {state.server!r} already has key {state.key_fingerprint} pinned")
            return [ToolKeyPinned(domain=command.domain, fingerprint=command.fingerprint)]
        if isinstance(command, Observe):
            return _observe(state, command)
        if isinstance(command, RefuseListing):
            return [] if state.listing_refused == command.reason else [ToolListingRefused(reason=command.reason)]
        record = state.tools.get(command.tool)
        if record is None:
            raise UnknownTool(f"server {state.server!r} has listed no tool {command.tool!r}")
        if isinstance(command, Approve):
            if command.pin and command.pin != record.seen_pin:
                raise ToolRefused(
                    f"{state.server}.{command.tool} is listed now with pin {record.seen_pin}, not {command.pin}: "
                    "review the definition shown by `symbi tools show` and approve that pin"
                )
            if record.verification not in TRUSTED:
                raise ToolRefused(
                    f"{state.server}.{command.tool} failed SchemaPin verification ({record.verification}); "
                    "a definition that fails verification cannot be approved"
                )
            if record.status == "approved":
                return []
            return [ToolApproved(tool=command.tool, pin=record.seen_pin, approved_by=command.by)]
        if record.revoked:
            return []
        return [ToolRevoked(tool=command.tool, revoked_by=command.by, reason=command.reason)]


def _configuration(reg: ToolServerRegistered) -> ToolServerRegistered:
    """What the operator chose of a registration: who registered it and what was assessed (or raised since)
    left out, so registering the same server again is no change."""
    return msgspec.structs.replace(reg, registered_by="", tier="tier1", assessed_tier="tier1", risk_factors=())


def _observe(state: ServerState, seen: Observe) -> list[ToolServerEvent]:
    record = state.tools.get(seen.tool)
    same = record is not None and (
        record.seen_pin,
        record.flags,
        record.verification,
        record.key_fingerprint,
    ) == (seen.pin, seen.flags, seen.verification, seen.key_fingerprint)
    if same:
        return []
    events: list[ToolServerEvent] = [
        ToolSeen(
            tool=seen.tool,
            pin=seen.pin,
            description=seen.description,
            flags=seen.flags,
            verification=seen.verification,
            key_fingerprint=seen.key_fingerprint,
        )
    ]
    if record is not None and record.approved_pin and record.approved_pin != seen.pin:
        events.append(ToolDefinitionChanged(tool=seen.tool, approved_pin=record.approved_pin, seen_pin=seen.pin))
    return events


TOOLSERVER = ToolServerAggregate()


def fold(server: str, events: list[ToolServerEvent]) -> ServerState:
    """The state of ``server`` after ``events`` (from the start)."""
    state = TOOLSERVER.initial(server)
    for event in events:
        state = TOOLSERVER.apply(state, event)
    return state
