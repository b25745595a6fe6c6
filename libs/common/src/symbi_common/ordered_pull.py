"""Every message on a stream's subjects, in order, none twice and none skipped: an ordered consumer that sleeps.

nats-py's ordered push consumer (``ordered_consumer=True``, also what a KV watch uses) wakes its client four
times a second per subscription to look for flow-control replies, and twice per heartbeat interval to check
the consumer is alive, whether or not anything arrives. Each service follows the key registry, the data key
notices and the token revocations that way for its whole life, so those wake-ups were most of what an idle
service cost. :class:`OrderedPull` gives the same guarantee through an ephemeral pull consumer and one open
pull request (:class:`~symbi_common.live_pull.LivePull`): nothing runs until a message comes or the request
expires.

The guarantee is kept the way the ordered push consumer keeps it: a message whose consumer sequence is not
the next one (a delivery lost on a reconnect), or a pull the server refuses (the consumer gone with a server
restart), ends the consumer, and a new one starts right after the last stream sequence handed out.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from symbi_common.errors import InfrastructureError
from symbi_common.live_pull import LivePull

log = structlog.get_logger(__name__)

#: How long a pull request stays open; an idle follower sends one per period.
EXPIRES_S = 30.0
#: A consumer nobody pulls from for this long is removed by the server. Followers never delete their
#: consumers (a service may not: :func:`symbi_common.natsauth.stream_read_api`); a stopped or restarted one
#: is left to expire. Well over ``EXPIRES_S``, so an idle follower's open pull request keeps it.
INACTIVE_THRESHOLD_S = 120.0


class OrderedPull:
    """The messages of ``subject`` (one subject, or several: the consumer's filter subjects) on ``stream`` from
    ``deliver_policy`` on, in stream order.

    ``DeliverPolicy.NEW`` means the messages stored after :meth:`open` began. ``LAST_PER_SUBJECT`` (a KV
    watch) starts with the newest message of each subject; :attr:`caught_up` tells when those are all taken.
    """

    def __init__(
        self,
        js: Any,
        *,
        stream: str,
        subject: str | Sequence[str],
        deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
        start_sequence: int | None = None,
        headers_only: bool = False,
        batch: int = 256,
        expires: float = EXPIRES_S,
    ) -> None:
        self.js = js
        self.stream = stream
        self.subjects = (subject,) if isinstance(subject, str) else tuple(subject)
        if not self.subjects:
            raise ValueError("an ordered pull needs at least one subject")
        #: The subjects, for logs.
        self.subject = ",".join(self.subjects)
        self.deliver_policy = deliver_policy
        self.start_sequence = start_sequence
        self.headers_only = headers_only
        self.batch = batch
        self.expires = expires
        #: The stream sequence of the last message handed out (0: none yet).
        self.last_sequence = 0
        #: True once nothing was pending after the last message handed out (or nothing was there at all).
        self.caught_up = False
        #: Consumers started so far (1 + restarts after a gap or a refused pull).
        self.starts = 0
        self._feed: LivePull | None = None
        self._consumer = ""
        self._delivered = 0  # consumer sequence of the last message taken from the current consumer
        self._closed = False

    async def open(self) -> OrderedPull:
        if self.deliver_policy == DeliverPolicy.NEW:
            # Pinned to a sequence now, so a restart before the first message cannot skip any stored meanwhile.
            info = await self.js.stream_info(self.stream)
            self.deliver_policy, self.start_sequence = DeliverPolicy.BY_START_SEQUENCE, info.state.last_seq + 1
        await self._start()
        return self

    async def close(self) -> None:
        """Stop; the consumer expires on the server (``INACTIVE_THRESHOLD_S``). Idempotent."""
        self._closed = True
        await self._stop()

    async def take(self, timeout: float) -> list[Any]:
        """The next messages (up to ``batch``), waiting up to ``timeout`` for the first; ``[]`` if none came.

        A consumer that could not be started again (the server unreachable) is tried again on the next call."""
        if self._closed:
            raise InfrastructureError(f"ordered pull on {self.subject} is closed")
        if self._feed is None and not await self._try_start(timeout):
            return []
        assert self._feed is not None
        try:
            msgs = await self._feed.take(self.batch, timeout)
        except InfrastructureError as exc:
            log.info("ordered pull restarts after a refused pull", subject=self.subject, error=str(exc))
            await self._stop()
            return []
        taken: list[Any] = []
        for msg in msgs:
            meta = msg.metadata
            if int(meta.sequence.consumer) != self._delivered + 1:
                log.info(
                    "ordered pull restarts after a gap",
                    subject=self.subject,
                    expected=self._delivered + 1,
                    got=int(meta.sequence.consumer),
                )
                await self._stop()
                break
            self._delivered += 1
            self.last_sequence = int(meta.sequence.stream)
            self.caught_up = int(meta.num_pending) == 0
            taken.append(msg)
        return taken

    async def _try_start(self, timeout: float) -> bool:
        try:
            await self._start()
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.warning("ordered pull cannot start its consumer", subject=self.subject, error=repr(exc))
            await asyncio.sleep(min(timeout, 1.0))
            return False
        return True

    async def _start(self) -> None:
        self.starts += 1
        self._consumer = f"ordered_{uuid.uuid4().hex[:16]}"
        policy, start = self.deliver_policy, self.start_sequence
        if self.last_sequence:
            policy, start = DeliverPolicy.BY_START_SEQUENCE, self.last_sequence + 1
        config = ConsumerConfig(
            name=self._consumer,
            deliver_policy=policy,
            opt_start_seq=start if policy == DeliverPolicy.BY_START_SEQUENCE else None,
            ack_policy=AckPolicy.NONE,
            filter_subject=self.subjects[0] if len(self.subjects) == 1 else None,
            filter_subjects=list(self.subjects) if len(self.subjects) > 1 else None,
            headers_only=self.headers_only or None,
            inactive_threshold=INACTIVE_THRESHOLD_S,
            mem_storage=True,
            num_replicas=1,
        )
        info = await self.js.add_consumer(self.stream, config)
        if not self.last_sequence and int(info.num_pending) == 0:
            self.caught_up = True
        self._delivered = 0
        self._feed = await LivePull(self.js, self.stream, self._consumer, batch=self.batch, expires=self.expires).open()

    async def _stop(self) -> None:
        feed, self._feed = self._feed, None
        if feed is None:
            return
        await feed.close()


def kv_change(msg: Any, prefix: str) -> tuple[str, bool]:
    """A message of a KV bucket's stream, taken through an :class:`OrderedPull` on ``$KV.<bucket>.>`` (``prefix``
    is ``$KV.<bucket>.``): its key, and whether it removes the key (a delete, a purge, or the marker the server
    leaves for a key whose value aged out)."""
    headers = msg.headers or {}
    removed = headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers
    return msg.subject[len(prefix) :], removed


__all__ = ["OrderedPull", "kv_change"]
