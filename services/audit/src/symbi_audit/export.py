"""Reading the raw log for export: every stored event of ``EVENTS`` and the latest signed checkpoint.

Events are read with JetStream's batched direct get (``next_by_subj = evt.>``), so an export costs
one round trip per thousand events and creates no consumer on the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from symbi_common.streams import AUDIT_STREAM, EVENTS_STREAM, RawMessage, last_on_subject, read_subject
from symbi_tlog.offline import CHECKPOINT_SUBJECT


async def stored_events(nc: Any, *, after: int = 0, timeout: float = 5.0) -> AsyncIterator[list[RawMessage]]:
    """Every stored event with stream sequence > ``after``, in stream order, in batches."""
    async for batch in read_subject(nc, EVENTS_STREAM, "evt.>", after=after, timeout=timeout):
        yield batch


async def latest_checkpoint(nc: Any, *, timeout: float = 5.0) -> str | None:
    """The newest signed checkpoint note published on the ``AUDIT`` stream, if any."""
    msg = await last_on_subject(nc, AUDIT_STREAM, CHECKPOINT_SUBJECT, timeout=timeout)
    return None if msg is None else msg.data.decode()
