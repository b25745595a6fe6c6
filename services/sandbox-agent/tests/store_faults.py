"""An event store that loses acks: the real store, except that the first append of each chosen event type reports
no confirmation (as the store does after repeated timeouts)."""

from __future__ import annotations

from typing import Any

from symbi_common.errors import AppendFailed


class AcksLost:
    """Wraps ``store``: the first append whose first event is of each type in ``kinds`` raises :class:`AppendFailed`
    (``landed``: after it was stored, as when only the ack was lost; else without storing it)."""

    def __init__(self, store: Any, kinds: tuple[type, ...], *, landed: bool = True) -> None:
        self.store = store
        self.kinds = kinds
        self.landed = landed
        self.lost: set[type] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def append(self, aggregate_type: str, aggregate_id: str, events: Any, codec: Any, **kw: Any) -> Any:
        kind = type(events[0])
        if isinstance(events[0], self.kinds) and kind not in self.lost:
            self.lost.add(kind)
            if self.landed:
                await self.store.append(aggregate_type, aggregate_id, events, codec, **kw)
            subject = f"evt.{aggregate_type}.{aggregate_id}"
            raise AppendFailed(f"append to {subject} timed out 3 times and could not be confirmed")
        return await self.store.append(aggregate_type, aggregate_id, events, codec, **kw)
