"""Feeding the model: every verified event of the subjects the scheduler reads, and host heartbeats.

:class:`EventFollower` reads ``evt.task.>``, ``evt.execution.>``, ``evt.agent.>`` and ``evt.schedule.>``
from the start of ``EVENTS`` through one ephemeral pull consumer, so the events of all four arrive in
stream order (an execution's end is never seen before the assignment it belongs to). Each event is
verified (signature, key authorised for its subject) and decrypted before the model sees it; one that
fails verification is logged and skipped. ``synced`` is set once the consumer has delivered everything
that was in the stream when it started: a replica serves and schedules only after that.

Each event's NATS headers carry the W3C trace context of whoever appended it. Once caught up, the
follower applies each event as a span of that trace, and the model keeps each task's newest context so
the leader's reactions (assignment, completion …) continue the task's trace. Replayed history at start
adds no spans to old traces.

:class:`HostWatcher` follows the ``HOSTS`` bucket (each sandbox-agent rewrites its host's key every second).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from symbi_common.errors import InfrastructureError, IntegrityError, KeyringError, SymbiError, UnknownEventType
from symbi_common.events import EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.streams import EVENTS_STREAM, BacklogFetch
from symbi_common.telemetry import continue_trace
from symbi_contracts.lifecycle.events import CODEC as AGENT_CODEC
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC
from symbi_contracts.scheduler.events import CODEC as TASK_CODEC

from symbi_scheduler.model import HostInfo, Model
from symbi_scheduler.schedules import CODEC as SCHEDULE_CODEC

log = structlog.get_logger(__name__)

SUBJECTS = ("evt.task.>", "evt.execution.>", "evt.agent.>", "evt.schedule.>")
CODECS: dict[str, EventCodec[Any]] = {
    "task": TASK_CODEC,
    "execution": EXECUTION_CODEC,
    "agent": AGENT_CODEC,
    "schedule": SCHEDULE_CODEC,
}
HOSTS_BUCKET = "HOSTS"


def stop_requested() -> bool:
    """Whether the current task has been asked to stop.

    On Python 3.11, ``asyncio.wait_for`` (used inside nats-py's ``fetch`` and requests) can swallow a
    cancellation that arrives as it times out; loops check this so they still end on shutdown.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class EventFollower:
    """Applies the stream to ``model`` until stopped; calls ``on_change`` after each applied batch."""

    def __init__(
        self, js: Any, store: EventStore, model: Model, on_change: Callable[[], None], *, batch: int = 512
    ) -> None:
        self.js = js
        self.store = store
        self.model = model
        self.on_change = on_change
        self.batch = batch
        self.synced = asyncio.Event()
        self.position = 0
        self.rejected = 0
        self._name = f"scheduler_{uuid.uuid4().hex[:12]}"

    async def run(self) -> None:
        """Follow the stream; on a consumer error, start again right after the last applied event."""
        delay = 0.2
        while not stop_requested():
            try:
                await self._run_consumer()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away, consumer gone: resume from our position
                log.warning("event follower restarting", error=repr(exc), position=self.position)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run_consumer(self) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_consumer(EVENTS_STREAM, self._name)
        config = ConsumerConfig(
            durable_name=self._name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.position + 1,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60,
            filter_subjects=list(SUBJECTS),
        )
        info = await self.js.add_consumer(EVENTS_STREAM, config)
        if info.num_pending == 0:
            self.synced.set()
        psub = await self.js.pull_subscribe_bind(durable=self._name, stream=EVENTS_STREAM)
        fetch = BacklogFetch(psub, self.batch)
        try:
            while not stop_requested():
                msgs = await fetch(timeout=1.0)
                if not msgs:
                    self.synced.set()
                    continue
                pending = 0
                for msg in msgs:
                    await self._apply(msg)
                    pending = msg.metadata.num_pending
                self.on_change()
                if pending == 0:
                    self.synced.set()
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(EVENTS_STREAM, self._name)

    async def _apply(self, msg: Any) -> None:
        sequence = msg.metadata.sequence.stream
        parts = msg.subject.split(".", 2)
        if len(parts) != 3 or parts[1] not in CODECS:
            return
        kind = parts[1]
        try:
            rec = await self.store.open_one(bytes(msg.data), msg.subject, sequence, CODECS[kind])
        except UnknownEventType:
            # A newer event type of another service: it still takes its place in the aggregate's versions.
            self.model.skip(kind, parts[2], _version_of(msg))
        except (IntegrityError, KeyringError) as exc:
            self.rejected += 1
            log.warning("event rejected", subject=msg.subject, sequence=sequence, error=str(exc))
        except SymbiError as exc:
            self.rejected += 1
            log.warning("event not readable", subject=msg.subject, sequence=sequence, error=str(exc))
        else:
            h = rec.header
            headers = msg.headers or {}
            if self.synced.is_set() and "traceparent" in headers:
                with continue_trace(
                    f"scheduler.apply {h.event_type}", headers, attributes={"symbi.sequence": sequence}
                ):
                    self.model.apply(kind, parts[2], h.aggregate_version, sequence, h.occurred_at / 1e9, rec.event)
            else:
                self.model.apply(kind, parts[2], h.aggregate_version, sequence, h.occurred_at / 1e9, rec.event)
            self.model.note_trace(kind, parts[2], headers)
        self.position = sequence


def _version_of(msg: Any) -> int:
    """The aggregate version of a stored event, read from its (verified-later) header bytes."""
    from symbi_common.envelope import EventHeader, SealedEvent

    try:
        sealed = msgspec.msgpack.decode(bytes(msg.data), type=SealedEvent)
        return msgspec.msgpack.decode(sealed.header, type=EventHeader).aggregate_version
    except (msgspec.DecodeError, msgspec.ValidationError, AttributeError):
        return 0


class HostWatcher:
    """Follows the ``HOSTS`` bucket into ``model``; ``loaded`` is set once the initial values are in."""

    def __init__(self, js: Any, model: Model, on_change: Callable[[], None], *, replicas: int = 1) -> None:
        self.js = js
        self.model = model
        self.on_change = on_change
        self.replicas = replicas
        self.loaded = asyncio.Event()
        self.kv: Any = None

    async def open(self) -> None:
        try:
            self.kv = await self.js.key_value(HOSTS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            raise InfrastructureError(
                f"KV bucket {HOSTS_BUCKET} does not exist; the NATS admin provisions it"
            ) from None

    async def run(self) -> None:
        while not stop_requested():
            watcher = await self.kv.watchall()
            try:
                async for entry in watcher:
                    if entry is None:
                        self.loaded.set()
                        continue
                    self._apply(entry)
                    self.on_change()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("host watch restarting", error=repr(exc))
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()

    def _apply(self, entry: Any) -> None:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.model.host_gone(entry.key)
            return
        try:
            info = msgspec.json.decode(entry.value, type=HostInfo)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("malformed host entry", host=entry.key, error=str(exc))
            return
        if info.host_id != entry.key or info.cpu_cores <= 0 or info.memory_mb <= 0:
            log.warning("inconsistent host entry", host=entry.key)
            return
        self.model.host_seen(info)
