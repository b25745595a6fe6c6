"""The newest logged decisions, read from the end of the event stream: what a what-if replays.

The decision log (``evt.policy.decisions.>``) shares the event stream with every other event and only grows,
so reading it from the start on every what-if would cost the whole log, each message verified and decrypted.
Instead the stream is read backwards, a window of sequences at a time (each twice as wide as the one after
it): the raw messages of a window are fetched, at most ``limit`` of them kept (every message holds at least
one decision), and opened newest first only until ``limit`` decisions are found.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, cast

import structlog
from symbi_common.errors import SymbiError
from symbi_common.eventstore import EventStore
from symbi_common.policy.events import DECISION_LOG_CODEC, DECISION_LOG_SUBJECT, ActionDenied, LoggedDecision
from symbi_common.streams import EVENTS_STREAM, RawMessage, read_subject

log = structlog.get_logger(__name__)
#: The narrowest window of sequences read at once (a wider one for a larger ``limit``).
MIN_WINDOW = 64


async def _window(store: EventStore, after: int, last: int, keep: int) -> tuple[list[RawMessage], bool]:
    """The newest ``keep`` decision-log messages with sequences in (``after``, ``last``], oldest first, and whether
    older ones in that range were left out."""
    kept: deque[RawMessage] = deque(maxlen=keep)
    seen = 0
    reader = cast(
        AsyncGenerator[list[RawMessage], None], read_subject(store.nc, EVENTS_STREAM, DECISION_LOG_SUBJECT, after=after)
    )
    async with aclosing(reader) as batches:  # stopping early closes the read in flight
        async for batch in batches:
            for raw in batch:
                if raw.sequence > last:
                    return list(kept), seen > keep
                kept.append(raw)
                seen += 1
    return list(kept), seen > keep


async def _entries(store: EventStore, raw: RawMessage) -> list[LoggedDecision]:
    try:
        rec = await store.open_one(raw.data, raw.subject, raw.sequence, DECISION_LOG_CODEC)
    except SymbiError as exc:
        log.warning("decision log event skipped", sequence=raw.sequence, error=str(exc))
        return []
    event = rec.event
    return [event.entry] if isinstance(event, ActionDenied) else list(event.entries)


async def recent_decisions(store: EventStore, js: Any, limit: int) -> list[LoggedDecision]:
    """The most recent ``limit`` logged decisions (every source), oldest first."""
    last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
    newest_first: list[list[LoggedDecision]] = []
    found, width = 0, max(MIN_WINDOW, 4 * limit)
    while last > 0 and found < limit:
        after = max(last - width, 0)
        raws, cut = await _window(store, after, last, limit - found)
        for raw in reversed(raws):
            entries = await _entries(store, raw)
            newest_first.append(entries)
            found += len(entries)
            if found >= limit:
                break
        # Messages left out of a window (only the newest were kept) are read again before going further back.
        last = raws[0].sequence - 1 if cut and raws else after
        width *= 2
    decisions = [entry for entries in reversed(newest_first) for entry in entries]
    return decisions[-limit:]
