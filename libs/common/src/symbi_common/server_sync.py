"""Waiting until the NATS server has processed what a connection sent: a subscription made, or ended, is in
effect for every other connection once :func:`synced` returns.

``nc.flush()`` alone does not promise that with nats-py 2.x: it writes its PING straight to the socket, while
``subscribe``/``unsubscribe`` queue their SUB/UNSUB for the client's flusher task. The PING can overtake them,
and the server's PONG then says nothing about them; a request another connection sends right after may meet
"no responders" (a SUB not yet seen) or go to a subscription its client has already dropped (an UNSUB not yet
seen, so the request times out). The first flush lets the flusher write the queue — it was woken before the
PING was written, so it runs while the PONG is awaited — and the second PING follows those commands on the
wire, so its PONG comes back after the server has processed them.
"""

from __future__ import annotations

from nats.aio.client import Client

#: Seconds for each PING/PONG round trip.
SYNC_TIMEOUT_S = 5


async def synced(nc: Client, timeout: int = SYNC_TIMEOUT_S) -> None:
    """Return once the server has processed every command ``nc`` sent before the call (``FlushTimeoutError``
    from nats-py when a round trip takes longer than ``timeout`` seconds)."""
    await nc.flush(timeout)
    await nc.flush(timeout)
