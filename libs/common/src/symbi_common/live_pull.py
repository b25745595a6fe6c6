"""A pull consumer's messages as they arrive: one open pull request instead of a round trip per message.

nats-py's ``fetch`` sends a pull request per call and waits for it with a task and a ``wait_for``; a consumer
that has caught up therefore pays a request to the server (and the server a pull to serve) for every live
message, and one more every ``timeout`` while nothing happens. :class:`LivePull` keeps one pull request for up
to ``batch`` messages open for ``expires`` seconds and collects its deliveries in a subscription callback: the
server hands each message over as it is stored, and the next request goes out only when this one has delivered
its ``batch`` or expired. What it takes is in the consumer's delivery order; acknowledging is the caller's.

A request the server dropped without a word (a reconnect, a lost expiry notice) is replaced when the connection
reconnected since it was sent or one second after it should have expired.
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

import nats.errors
import structlog

from symbi_common.errors import InfrastructureError

log = structlog.get_logger(__name__)

#: A heartbeat; 408: the request expired (the usual end of a request that was not filled).
_HEARTBEAT = "100"
_EXPIRED = "408"


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class LivePull:
    """Messages of the pull consumer ``consumer`` on ``stream`` through one open pull request at a time."""

    def __init__(self, js: Any, stream: str, consumer: str, *, batch: int, expires: float) -> None:
        # nats-py's JetStreamContext keeps its connection and API prefix private; pull_subscribe_bind uses both so.
        self.nc = js._nc
        self.subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.consumer = consumer
        self.batch = batch
        self.expires = expires
        self.inbox = ""
        self._ready: collections.deque[Any] = collections.deque()
        self._left = 0  # messages the request in flight may still deliver (0: none in flight)
        self._renew_at = 0.0  # when the request in flight is over even if no status said so
        self._reconnects = 0  # the connection's reconnect count when it was sent
        self._waiter: asyncio.Future[None] | None = None
        self._error: InfrastructureError | None = None
        self._sub: Any = None
        #: Pull requests sent so far.
        self.requests = 0

    async def open(self) -> LivePull:
        self.inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)
        return self

    async def close(self) -> None:
        """Stop receiving (the request in flight expires on the server); idempotent. On a connection that is
        gone there is nothing left to unsubscribe: that failure is logged, not raised."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:
                log.debug("unsubscribe failed", consumer=self.consumer, error=repr(exc))

    def ready(self, most: int) -> list[Any]:
        """What has arrived and not been taken, at most ``most``, without waiting."""
        ready = self._ready
        return [ready.popleft() for _ in range(min(most, len(ready)))]

    async def take(self, most: int, timeout: float) -> list[Any]:
        """Up to ``most`` messages, waiting up to ``timeout`` for the first; ``[]`` if none came (or the
        request in flight ended: the next call sends another).

        Raises :class:`InfrastructureError` when the server refused the pull (the consumer deleted, …), and
        ``CancelledError`` when the calling task was cancelled and the cancellation was swallowed on the way
        (Python 3.11's ``asyncio.wait_for`` drops one that arrives as its inner call completes): the loop
        around ``take`` would otherwise wait out another request instead of stopping."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        if not self._ready:
            self._raise_error()
            await self._pull()
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            self._raise_error()
        return self.ready(most)

    async def _pull(self) -> None:
        """Send a pull request unless one is in flight."""
        loop = asyncio.get_running_loop()
        reconnects = self.nc.stats["reconnects"]
        if self._left > 0 and loop.time() < self._renew_at and reconnects == self._reconnects:
            return
        self._left = self.batch
        self._renew_at = loop.time() + self.expires + 1.0
        self._reconnects = reconnects
        self.requests += 1
        request = json.dumps({"batch": self.batch, "expires": int(self.expires * 1e9)}).encode()
        await self.nc.publish(self.subject, request, reply=self.inbox)

    async def _on_msg(self, msg: Any) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers and not msg.data else None
        if status is None:
            self._ready.append(msg)
            self._left -= 1
        elif status == _HEARTBEAT:
            return
        else:
            self._left = 0  # the request is over
            if status != _EXPIRED:  # the consumer is gone, full, or moved: the caller starts again
                description = headers.get("Description", "")
                self._error = InfrastructureError(
                    f"pull from consumer {self.consumer} refused by the server: {status} {description}"
                )
        if self._waiter is not None:
            _wake(self._waiter)

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err


__all__ = ["LivePull"]
