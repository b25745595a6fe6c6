"""The events of one registered MCP tool server, ``toolserver.<server>`` (docs/tools.md).

The registry of tools is event-sourced: what an operator registered, what each tool's definition was when it
was seen (its SHA-256 pin, its poisoning flags and its SchemaPin verification), what was approved, changed
(and so blocked), revoked, and which SchemaPin key was pinned for the server's domain. The state is rebuilt
from this stream (``symbi_sandbox_agent.tools.registry``). Pure: no I/O here.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from symbi_common.events import Event, EventCodec

Transport = Literal["stdio", "http"]
#: What SchemaPin said of a definition: ``verified``; ``unsigned`` (no signature and no domain configured);
#: or the failure (``signature_invalid``, ``key_revoked``, ``key_pin_mismatch``, ``unknown_domain`` …).
Verification = str


class ToolServerRegistered(Event, frozen=True, kw_only=True, tag="toolserver.registered"):
    """An operator registered an MCP server: an image (pinned by digest) + command speaking stdio, run in a
    sandbox without network, or a streamable-HTTP URL. ``domain`` is the SchemaPin domain its tools must be
    signed for (from the operator, never from the server); empty means its tools are not signed.

    ``tier`` is the sandbox tier it runs in: the operator's ``requested_tier`` if given, never lower than the
    risk assessment (``assessed_tier`` and the ``risk_factors`` that set it, docs/tools.md)."""

    server: str
    transport: Transport
    image: str = ""
    command: tuple[str, ...] = ()
    url: str = ""
    domain: str = ""
    tier: Literal["tier1", "tier2"] = "tier1"
    #: Environment of the server process: named explicitly, nothing inherited.
    env: dict[str, str] = msgspec.field(default_factory=dict)
    registered_by: str = ""
    #: The tier the operator asked for ("" : the assessment's).
    requested_tier: str = ""
    assessed_tier: Literal["tier1", "tier2"] = "tier1"
    #: What set the assessment: ``secrets_passed:<VAR>``, ``no_schemapin_domain``, ``network_granted`` …
    risk_factors: tuple[str, ...] = ()


class ToolSeen(Event, frozen=True, kw_only=True, tag="toolserver.tool_seen"):
    """A tool's definition as the server listed it, when it was new or differed from the last one seen."""

    tool: str
    pin: str
    description: str = ""
    flags: tuple[str, ...] = ()
    verification: Verification = "unsigned"
    key_fingerprint: str = ""


class ToolApproved(Event, frozen=True, kw_only=True, tag="toolserver.tool_approved"):
    """An operator approved the definition with this pin; calls are served while the server lists exactly it."""

    tool: str
    pin: str
    approved_by: str = ""


class ToolDefinitionChanged(Event, frozen=True, kw_only=True, tag="toolserver.definition_changed"):
    """An approved tool's definition changed (a rug pull or an update): the tool is blocked until re-approved."""

    tool: str
    approved_pin: str
    seen_pin: str


class ToolRevoked(Event, frozen=True, kw_only=True, tag="toolserver.tool_revoked"):
    """An operator revoked a tool: no call is served until it is approved again."""

    tool: str
    revoked_by: str = ""
    reason: str = ""


class ToolKeyPinned(Event, frozen=True, kw_only=True, tag="toolserver.key_pinned"):
    """The SchemaPin key of the server's domain, pinned after its first *valid* verification (trust on first
    use); a later definition signed by another key fails ``key_pin_mismatch``."""

    domain: str
    fingerprint: str


class ToolListingRefused(Event, frozen=True, kw_only=True, tag="toolserver.listing_refused"):
    """The server's tool list was refused (colliding or malformed names): none of its tools is callable until
    it lists acceptable names again."""

    reason: str


class ToolServerTierRaised(Event, frozen=True, kw_only=True, tag="toolserver.tier_raised"):
    """What the server listed raised its risk assessment (``flagged_tools:<server.tool>``): its sandbox is
    started again in ``tier``."""

    tier: Literal["tier1", "tier2"]
    factors: tuple[str, ...] = ()


class ToolServerRemoved(Event, frozen=True, kw_only=True, tag="toolserver.removed"):
    """An operator removed the server: its connections are closed, its sandbox is gone and its tools are
    unknown. Everything before this event is history only: registering the same name again starts fresh
    (no tool approved, no key pinned)."""

    removed_by: str = ""
    reason: str = ""


ToolServerEvent = (
    ToolServerRegistered
    | ToolSeen
    | ToolApproved
    | ToolDefinitionChanged
    | ToolRevoked
    | ToolKeyPinned
    | ToolListingRefused
    | ToolServerTierRaised
    | ToolServerRemoved
)
EVENT_TYPES: tuple[type[ToolServerEvent], ...] = (
    ToolServerRegistered,
    ToolSeen,
    ToolApproved,
    ToolDefinitionChanged,
    ToolRevoked,
    ToolKeyPinned,
    ToolListingRefused,
    ToolServerTierRaised,
    ToolServerRemoved,
)
CODEC: EventCodec[ToolServerEvent] = EventCodec(list(EVENT_TYPES))
