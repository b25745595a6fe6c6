"""Following a stream: one durable pull consumer, a position store, each event's effect exactly once.

Every projection and reactor reads the stream through a :class:`Follower`:

1. On each (re)start it reads its position from its :class:`~symbi_common.positions.PositionStore` and
   creates a pull consumer of its own, starting right after it. The store is the truth, not the consumer.
2. It takes batches through one open pull request at a time (:class:`~symbi_common.live_pull.LivePull`: no
   round trip per live event), opens a unit of work on the store,
   drops what is at or below the unit's position (redelivered after a crash between commit and ack, or
   applied already by another replica), hands the rest to the handler and advances the position to the
   batch's last sequence. Effect and position commit together (one PostgreSQL transaction for
   :class:`~symbi_common.positions.PgPositions`); only then is the batch acknowledged.
3. A gap in the consumer's delivery sequence (a pull that timed out as its message arrived, another client
   pulling from this consumer) is :class:`DeliveryGap`: the consumer is created again from the stored position.
4. A handler that raises has applied nothing: the unit rolls back, the position stays, and the follower is
   *halted* (:attr:`Follower.halted`, a :class:`FollowerHalted`; ``symbi_follower_halted{follower}`` is 1, an
   error is logged). It starts again from the stored position with a growing back-off (NATS or the database
   may only have been away a moment) and is no longer halted once the batch applies. Nothing is skipped:
   a handler that means to skip an event (a projection recording a forged one as rejected) does so itself.

Consumer names are ``<service>_<name>_<random>``: every replica has a consumer of its own (sharing one would
split the events between replicas), and the random part cannot be guessed by another service. Services may not
delete consumers (see :mod:`symbi_common.natsauth`); a consumer whose follower is gone expires on the server
after ``inactive_threshold``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Gauge

from symbi_common.consuming import keep_consuming
from symbi_common.errors import InfrastructureError
from symbi_common.live_pull import LivePull
from symbi_common.positions import PositionStore, Unit
from symbi_common.streams import EVENTS_STREAM, RawMessage
from symbi_common.telemetry import PROJECTION_POSITION

log = structlog.get_logger(__name__)

FOLLOWER_HALTED = Gauge(
    "symbi_follower_halted", "1 while a stream follower cannot apply its next batch (it retries)", ["follower"]
)
#: A consumer whose follower stopped or died expires after this long without a pull.
INACTIVE_THRESHOLD_S = 120.0
#: How long a follower's pull request stays open (a new one then replaces it): the idle cost is one request
#: per follower per this many seconds. Well under ``INACTIVE_THRESHOLD_S``.
PULL_EXPIRES_S = 30.0
#: A follower acknowledges (AckPolicy.ALL: everything up to the last applied event) at most this often while
#: events come, and whenever it is idle or stops: an ack per live event would be a message per event per
#: follower. The consumer's ack_wait (60 s) is far off; the stored position, not the ack, is the truth.
ACK_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the follower hands it to a handler."""

    subject: str
    sequence: int
    data: bytes
    headers: dict[str, str]
    #: When JetStream stored it (a datetime; None if unknown).
    stored_at: Any
    #: Messages of the consumer's filter still after this one when it was delivered (0: caught up).
    num_pending: int

    @property
    def raw(self) -> RawMessage:
        return RawMessage(self.subject, self.sequence, self.data, self.headers)


#: Applies a batch (every delivery above the unit's position, in stream order) through ``unit``.
Handler = Callable[[Unit, list[Delivery]], Awaitable[None]]


class FollowerHalted(InfrastructureError):
    """A follower's handler could not apply a batch: nothing of it applied, the position did not move."""

    code = "follower_halted"
    http_status = 503

    def __init__(self, follower: str, first: int, last: int, cause: BaseException) -> None:
        super().__init__(
            f"{follower} cannot apply events {first}..{last}: {cause!r}; it retries from its stored position",
            follower=follower,
            first=first,
            last=last,
        )
        self.follower = follower
        self.first = first
        self.last = last


class DeliveryGap(InfrastructureError):
    """The consumer delivered something this follower never received: it starts again from its position."""

    code = "delivery_gap"
    http_status = 503

    def __init__(self, follower: str, seen: int, got: int) -> None:
        super().__init__(
            f"{follower}: consumer delivery {got} follows {seen}; deliveries in between were lost or taken by "
            "another client, so it reads again from its stored position",
            follower=follower,
        )


def consumer_prefix(service: str, name: str) -> str:
    """The start of every consumer name of ``service``'s follower ``name``."""
    return f"{service}_{name}_"


def delivery_of(msg: Any) -> Delivery:
    meta = msg.metadata
    return Delivery(
        msg.subject, int(meta.sequence.stream), bytes(msg.data), dict(msg.headers or {}), meta.timestamp,
        int(meta.num_pending),
    )  # fmt: skip


async def wait_for_position(
    changed: asyncio.Condition, position: Callable[[], int], sequence: int, timeout: float
) -> bool:
    """Wait until ``position()`` reaches stream ``sequence``; ``changed`` is notified whenever it moves. False on timeout."""

    async def _wait() -> None:
        async with changed:
            await changed.wait_for(lambda: position() >= sequence)

    try:
        await asyncio.wait_for(_wait(), timeout)
    except TimeoutError:
        return False
    return True


def stop_requested() -> bool:
    """Whether the current task has been asked to stop.

    On Python 3.11, ``asyncio.wait_for`` (inside nats-py's ``fetch``) can swallow a cancellation that arrives
    as it times out; loops check this so they still end on shutdown.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Follower:
    """Follows ``subjects`` of ``stream`` into ``handler`` with ``positions``; runs until :meth:`stop` or cancelled."""

    def __init__(
        self,
        js: Any,
        *,
        service: str,
        name: str,
        subjects: Sequence[str],
        positions: PositionStore,
        handler: Handler,
        stream: str = EVENTS_STREAM,
        batch: int = 256,
        fetch_timeout: float = 1.0,
        pull_expires: float | None = None,
        acks: bool = True,
        linger: float = 0.0,
        hold: Callable[[], bool] | None = None,
        on_start: Callable[[], Awaitable[None]] | None = None,
        on_idle: Callable[[], Awaitable[None]] | None = None,
        on_retry: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.js = js
        self.service = service
        self.name = name
        self.subjects = tuple(subjects)
        self.positions = positions
        self.handler = handler
        self.stream = stream
        self.batch = batch
        #: The longest wait for events before ``on_idle`` and ``positions.idle()`` run (local: no request).
        self.fetch_timeout = fetch_timeout
        #: How long each pull request stays open. A follower that may ``hold`` keeps it to ``fetch_timeout``:
        #: holding then stops deliveries within that time (what was delivered meanwhile waits in memory).
        self.pull_expires = pull_expires or (fetch_timeout if hold is not None else PULL_EXPIRES_S)
        #: Acknowledge each batch after it commits (AckPolicy.ALL); off, the consumer acknowledges nothing.
        self.acks = acks
        #: After a short batch, how long to wait for more before applying them together (0: never).
        self.linger = linger
        #: While it returns True, nothing is fetched (the audit verifier holds while the log is not what it signed).
        self.hold = hold
        self.on_start = on_start
        #: Called after every fetch, with or without events (checkpoints due …).
        self.on_idle = on_idle
        self.on_retry = on_retry
        self.position = 0
        self.consumer_name = ""
        #: Set once the consumer is created; ``synced`` once everything stored when it started was applied.
        self.ready = asyncio.Event()
        self.synced = asyncio.Event()
        #: Why the follower cannot go on, while it cannot (None when it is applying events).
        self.halted: FollowerHalted | None = None
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()

    @property
    def healthy(self) -> bool:
        return self.ready.is_set() and self.halted is None

    async def run(self) -> None:
        """Apply events until :meth:`stop`; a failure backs off and resumes from the stored position."""
        await keep_consuming(
            self._run_consumer, self._stopping, what=f"follower {self.name}", on_retry=self.on_retry, follower=self.name
        )

    async def stop(self) -> None:
        self._stopping.set()

    async def wait_for(self, sequence: int, timeout: float = 5.0) -> bool:
        """Wait until events up to stream ``sequence`` are applied (read-your-writes for callers)."""
        return await wait_for_position(self._changed, lambda: self.position, sequence, timeout)

    async def _consumer(self) -> tuple[LivePull, Any]:
        self.position = await self.positions.load()
        # A fresh name per start: the previous consumer (if any) expires on the server, services may not delete.
        self.consumer_name = f"{consumer_prefix(self.service, self.name)}{uuid.uuid4().hex[:12]}"
        subjects = list(self.subjects)
        config = ConsumerConfig(
            name=self.consumer_name,
            durable_name=self.consumer_name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.position + 1,
            ack_policy=AckPolicy.ALL if self.acks else AckPolicy.NONE,
            ack_wait=60 if self.acks else None,
            max_ack_pending=self.batch * 4 if self.acks else None,
            inactive_threshold=INACTIVE_THRESHOLD_S,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
        )
        info = await self.js.add_consumer(self.stream, config)
        feed = LivePull(self.js, self.stream, self.consumer_name, batch=self.batch, expires=self.pull_expires)
        return await feed.open(), info

    async def _run_consumer(self) -> None:
        feed, info = await self._consumer()
        if info.num_pending == 0:
            self.synced.set()
        self.ready.set()
        if self.on_start is not None:
            await self.on_start()
        delivered = 0  # the consumer's deliveries seen: its sequence has no gap unless one was lost or taken
        unacked: Any = None  # the last applied delivery not acknowledged yet
        unacked_count = 0  # (kept under max_ack_pending: a replay acknowledges every full batch)
        acked_at = 0.0
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set() and not stop_requested():
                if self.hold is not None and self.hold():
                    await asyncio.sleep(1.0)
                    continue
                msgs = await feed.take(self.batch, self.fetch_timeout)
                if msgs and len(msgs) < self.batch and self.linger > 0:
                    # A short batch: what else arrives within ``linger`` goes into the same unit and ack.
                    await asyncio.sleep(self.linger)
                    msgs += feed.ready(self.batch - len(msgs))
                if msgs:
                    delivered = self._check_deliveries(msgs, delivered)
                    await self._apply_batch(msgs)
                    if self.acks:  # acknowledged once committed, never before
                        unacked, unacked_count = msgs[-1], unacked_count + len(msgs)
                    if msgs[-1].metadata.num_pending == 0:
                        self.synced.set()
                else:
                    self.synced.set()
                if unacked is not None and (
                    not msgs or unacked_count >= self.batch or loop.time() - acked_at >= ACK_EVERY_S
                ):
                    last, unacked, unacked_count, acked_at = unacked, None, 0, loop.time()
                    await last.ack()
                await self.positions.idle()
                if self.on_idle is not None:
                    await self.on_idle()
            if stop_requested():
                self._stopping.set()  # a cancellation swallowed by nats-py: end instead of starting again
        finally:
            if unacked is not None:  # best effort: unacknowledged, they are only delivered again to no one
                with contextlib.suppress(Exception):
                    await unacked.ack()
            await feed.close()  # the consumer expires on the server
            try:
                await self.positions.close()
            except Exception as exc:  # replayed from the older position next time (idempotent)
                log.warning("position not stored on stop", follower=self.name, error=repr(exc))

    def _check_deliveries(self, msgs: list[Any], delivered: int) -> int:
        """The consumer sequence after ``msgs``; a gap before or inside them raises :class:`DeliveryGap`.

        A delivery this follower never saw (a pull that timed out as its message arrived, or another client
        pulling from this consumer) would otherwise be passed over for good once a later event's position is
        stored: instead the consumer is created again from the stored position, and nothing is lost.
        """
        for m in msgs:
            sequence = int(m.metadata.sequence.consumer)
            if sequence != delivered + 1:
                raise DeliveryGap(self.name, delivered, sequence)
            delivered = sequence
        return delivered

    async def _apply_batch(self, msgs: list[Any]) -> None:
        """Apply the messages above the stored position and store the new position with their effect."""
        first = int(msgs[0].metadata.sequence.stream)
        last = int(msgs[-1].metadata.sequence.stream)
        try:
            async with self.positions.unit(reach=last) as unit:
                fresh = [delivery_of(m) for m in msgs if int(m.metadata.sequence.stream) > unit.position]
                if fresh:
                    await self.handler(unit, fresh)
                    unit.advance(fresh[-1].sequence)
                position = unit.advanced
        except Exception as exc:  # a cancellation or a dying process (BaseException) passes through
            halted = FollowerHalted(self.name, first, last, exc)
            self._halt(halted)
            raise halted from exc
        if self.halted is not None:
            log.warning("follower applies events again", follower=self.name, position=position)
            self.halted = None
            FOLLOWER_HALTED.labels(self.name).set(0)
        if position != self.position:
            async with self._changed:
                self.position = position
                self._changed.notify_all()
            PROJECTION_POSITION.labels(self.name).set(position)

    def _halt(self, err: FollowerHalted) -> None:
        self.halted = err
        FOLLOWER_HALTED.labels(self.name).set(1)
        log.error("follower halted: batch not applied, position kept", follower=self.name, error=err.message)


__all__ = [
    "FOLLOWER_HALTED",
    "Delivery",
    "DeliveryGap",
    "Follower",
    "FollowerHalted",
    "Handler",
    "consumer_prefix",
    "stop_requested",
    "wait_for_position",
]
