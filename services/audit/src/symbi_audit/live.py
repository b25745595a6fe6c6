"""The real-time feed: verified event metadata for Server-Sent Events subscribers, filtered by agent and type.

The verifier publishes each committed event here (and on NATS ``audit.live.<type>.<id>.<event type>``).
A subscriber that falls more than ``maxsize`` events behind is dropped with an ``overflow`` notice
rather than slowing the verifier down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

import msgspec
from symbi_tlog.rules import Checked


class EventItem(msgspec.Struct, frozen=True, kw_only=True):
    """Metadata of one event as the audit log holds it (never the payload)."""

    sequence: int
    subject: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    event_type: str
    producer: str
    signing_key_id: str
    event_id: str
    correlation_id: str | None
    occurred_at: str
    verified: bool
    agent_id: str | None = None
    """The agent the event concerns (its aggregate, or the payload's ``agent_id``), if any."""


def event_item(c: Checked, agent_id: str | None = None) -> EventItem | None:
    if c.opened is None:
        return None
    h = c.opened.header
    return EventItem(
        sequence=c.message.sequence,
        subject=c.message.subject,
        aggregate_type=h.aggregate_type,
        aggregate_id=h.aggregate_id,
        aggregate_version=h.aggregate_version,
        event_type=h.event_type,
        producer=h.producer,
        signing_key_id=h.signing_key_id,
        event_id=h.event_id,
        correlation_id=h.correlation_id,
        occurred_at=dt.datetime.fromtimestamp(h.occurred_at / 1e9, dt.UTC).isoformat(),
        verified=not c.findings,
        agent_id=agent_id,
    )


@dataclass(frozen=True, slots=True)
class LiveFilter:
    agent: str | None = None
    event_type: str | None = None

    def matches(self, item: EventItem) -> bool:
        if self.agent is not None and item.agent_id != self.agent:
            return False
        return self.event_type is None or item.event_type == self.event_type


class LiveFeed:
    def __init__(self, maxsize: int = 1000) -> None:
        self.maxsize = maxsize
        self._subscribers: dict[asyncio.Queue[EventItem | None], LiveFilter] = {}

    def publish(self, item: EventItem) -> None:
        for queue, flt in list(self._subscribers.items()):
            if not flt.matches(item):
                continue
            if queue.qsize() >= self.maxsize:
                del self._subscribers[queue]
                queue.put_nowait(None)  # tells the subscriber it overflowed
            else:
                queue.put_nowait(item)

    def subscribe(self, flt: LiveFilter) -> Subscription:
        """Register now; the subscription receives matching items from this moment on."""
        sub = Subscription(self, flt)
        self._subscribers[sub.queue] = flt
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.pop(sub.queue, None)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


class Subscription:
    """One subscriber's queue. ``get`` returns None once the subscriber fell behind and was dropped."""

    def __init__(self, feed: LiveFeed, flt: LiveFilter) -> None:
        self.feed = feed
        self.filter = flt
        self.queue: asyncio.Queue[EventItem | None] = asyncio.Queue()

    async def get(self) -> EventItem | None:
        return await self.queue.get()

    def close(self) -> None:
        self.feed.unsubscribe(self)
