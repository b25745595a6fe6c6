"""The depth of each recipient's inbox as its definition declares it (``messaging.queue_depth``).

The stream bounds every subject at ``INBOX_DEPTH``; an agent may declare a smaller inbox. Its own host writes
the depth into the inbox consumer's metadata when it serves the agent; a sending host reads it with the
inbox's waiting messages (undelivered and unacknowledged) at most every :data:`REFRESH_S` for a recipient
at the stream's bound and every :data:`SMALL_REFRESH_S` for one with a smaller inbox, counting its own
sends in between, and refuses a send to a full one (``rate_limited``): a bound kept to within what other
hosts send in one refresh.
"""

from __future__ import annotations

import time
from typing import Any

import nats.js.errors
from symbi_common.bus_names import INBOX_DEPTH, MESSAGES_STREAM
from symbi_common.bus_streams import QUEUE_DEPTH_KEY, inbox_name

from symbi_sandbox_agent.bus.errors import RateLimited

REFRESH_S = 1.0
SMALL_REFRESH_S = 0.05


class InboxDepths:
    """What this host knows of each recipient's inbox: ``(depth, waiting, when read)``."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self._known: dict[str, tuple[int, int, float]] = {}

    async def check(self, recipient: str) -> None:
        """:class:`RateLimited` if ``recipient``'s inbox holds its declared depth; else one more is counted."""
        now = time.monotonic()
        depth, waiting, at = self._known.get(recipient, (INBOX_DEPTH, 0, float("-inf")))
        if now - at > (REFRESH_S if depth >= INBOX_DEPTH else SMALL_REFRESH_S):
            (depth, waiting), at = await self._read(recipient), now
        if depth < INBOX_DEPTH and waiting >= depth:
            raise RateLimited(
                f"{recipient}'s inbox holds its {depth} messages; try again later", retry_after=SMALL_REFRESH_S
            )
        self._known[recipient] = (depth, waiting + 1, at)

    async def _read(self, recipient: str) -> tuple[int, int]:
        try:
            info = await self.js.consumer_info(MESSAGES_STREAM, inbox_name(recipient))
        except nats.js.errors.NotFoundError:
            return INBOX_DEPTH, 0
        declared = (info.config.metadata or {}).get(QUEUE_DEPTH_KEY, "")
        depth = int(declared) if declared.isdigit() else INBOX_DEPTH
        return depth, (info.num_pending or 0) + (info.num_ack_pending or 0)
