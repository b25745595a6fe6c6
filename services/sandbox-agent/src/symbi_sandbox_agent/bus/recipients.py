"""What a sending host knows of each recipient's inbox: the depth and the clearances its definition declares.

The stream bounds every subject at ``INBOX_DEPTH``; an agent may declare a smaller inbox, and clearances that
policies see on it as the resource of ``message.send``. The host serving the agent writes both into its inbox
consumer's metadata when the agent's run starts (only sandbox-agents and the operator may write consumers).
A sending host reads them with the inbox's waiting messages (undelivered and unacknowledged) at most every
:data:`REFRESH_S` (every :data:`SMALL_REFRESH_S` for an inbox smaller than the stream's bound), counting its own
sends in between, and refuses a send to a full inbox (``rate_limited``): a bound kept to within what other
hosts send in one refresh. A recipient whose inbox declares nothing (it never ran) has no clearances.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from symbi_common.bus_names import INBOX_DEPTH, MESSAGES_STREAM
from symbi_common.bus_streams import QUEUE_DEPTH_KEY, declared_clearances, inbox_name

from symbi_sandbox_agent.bus.errors import RateLimited

REFRESH_S = 1.0
SMALL_REFRESH_S = 0.05


@dataclass(slots=True)
class _Inbox:
    depth: int = INBOX_DEPTH
    waiting: int = 0
    clearances: tuple[str, ...] = ()
    read_at: float = float("-inf")


class Recipients:
    """The inboxes this host sends to, as last read."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self._known: dict[str, _Inbox] = {}

    async def _current(self, recipient: str) -> _Inbox:
        now = time.monotonic()
        inbox = self._known.get(recipient) or _Inbox()
        if now - inbox.read_at > (REFRESH_S if inbox.depth >= INBOX_DEPTH else SMALL_REFRESH_S):
            inbox = await self._read(recipient, now)
            self._known[recipient] = inbox
        return inbox

    async def clearances(self, recipient: str) -> tuple[str, ...]:
        """The clearances ``recipient``'s definition declares (as its host last wrote them)."""
        return (await self._current(recipient)).clearances

    async def check(self, recipient: str) -> None:
        """:class:`RateLimited` if ``recipient``'s inbox holds its declared depth; else one more is counted."""
        inbox = await self._current(recipient)
        if inbox.depth < INBOX_DEPTH and inbox.waiting >= inbox.depth:
            raise RateLimited(
                f"{recipient}'s inbox holds its {inbox.depth} messages; try again later", retry_after=SMALL_REFRESH_S
            )
        inbox.waiting += 1

    async def _read(self, recipient: str, now: float) -> _Inbox:
        try:
            info = await self.js.consumer_info(MESSAGES_STREAM, inbox_name(recipient))
        except nats.js.errors.NotFoundError:
            return _Inbox(read_at=now)
        metadata = info.config.metadata or {}
        declared = metadata.get(QUEUE_DEPTH_KEY, "")
        return _Inbox(
            depth=int(declared) if declared.isascii() and declared.isdigit() and len(declared) <= 9 else INBOX_DEPTH,
            waiting=(info.num_pending or 0) + (info.num_ack_pending or 0),
            clearances=declared_clearances(metadata),
            read_at=now,
        )
