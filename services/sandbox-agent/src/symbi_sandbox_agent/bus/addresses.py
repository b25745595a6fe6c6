"""What a message's addressing may be (pure): its recipient or topic, and an operator's replay time."""

from __future__ import annotations

import re
from collections.abc import Mapping

from symbi_contracts.bus import MAX_AGENT_ID, REPLAYED_AT, valid_agent_id, valid_name

from symbi_sandbox_agent.bus.codec import Refused
from symbi_sandbox_agent.bus.errors import BadAddress

#: The value of :data:`~symbi_contracts.bus.REPLAYED_AT`: seconds since the epoch, as ``repr(time.time())``
#: writes them.
_REPLAYED_AT_RE = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?\Z")


def replayed_at(headers: Mapping[str, str] | None) -> float:
    """When an operator replayed the message (its ``Symbi-Replayed-At`` header; 0.0: never); :class:`Refused`
    if the header is no time."""
    value = (headers or {}).get(REPLAYED_AT) or ""
    if not value:
        return 0.0
    if _REPLAYED_AT_RE.match(value) is None:
        raise Refused("refused", f"its {REPLAYED_AT} header {value[:40]!r} is not a time")
    return float(value)


def check_address(to: str, topic: str) -> None:
    """:class:`BadAddress` unless exactly one of ``to`` (an agent id, 1-128 characters as the lifecycle allows)
    and ``topic`` (1-64) is given and valid: each is one token of the message's subject."""
    if to and topic:
        raise BadAddress("a message goes to an agent or to a topic, not both")
    if topic:
        if not valid_name(topic):
            raise BadAddress(f"{topic[:80]!r} is not a topic (1-64 letters, digits, '-' or '_')")
    elif not valid_agent_id(to):
        raise BadAddress(f"{to[:80]!r} is not an agent id (1-{MAX_AGENT_ID} letters, digits, '-' or '_')")
