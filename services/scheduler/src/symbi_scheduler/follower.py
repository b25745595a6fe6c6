"""Feeding the model: every verified event of the subjects the scheduler reads, and host heartbeats.

:class:`EventFollower` reads ``evt.task.>``, ``evt.execution.>``, ``evt.agent.>`` and ``evt.schedule.>``
from the start of ``EVENTS`` through one :class:`~symbi_common.follower.Follower` (positions in memory: the
model is rebuilt in every process), so the events of all four arrive in
stream order (an execution's end is never seen before the assignment it belongs to). Each event is
verified (signature, key authorised for its subject) and decrypted before the model sees it; one that
fails verification is logged and skipped. One naming a signing key this process's registry does not know yet (a
rotated key another process learnt first) is verified again once the registry has caught up with the ``REGISTRY``
stream (:mod:`symbi_common.registry_catch_up`); a catch-up that cannot read the stream applies the batch again.
An execution event signed by a key bound to one sandbox host counts only for an attempt placed on that host
(:meth:`~symbi_scheduler.model.Model.signed_elsewhere`): a host cannot report on another host's tasks.
``synced`` is set once the consumer has delivered everything that was in the stream when it started: a replica
serves and schedules only after that.

Each event's NATS headers carry the W3C trace context of whoever appended it. Once caught up, the
follower applies each event as a span of that trace, and the model keeps each task's newest context so
the leader's reactions (assignment, completion …) continue the task's trace. Replayed history at start
adds no spans to old traces.

:class:`HostWatcher` follows the ``HOSTS`` bucket through an :class:`~symbi_common.ordered_pull.OrderedPull` (each
sandbox-agent rewrites its host's key every second; no wake-ups in between) and
wakes the leader only for a heartbeat that changes what placement sees.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import nats.js.errors
import structlog
from nats.js.api import DeliverPolicy
from symbi_common.envelope import EventHeader, SealedEvent
from symbi_common.errors import InfrastructureError, IntegrityError, KeyringError, SymbiError, UnknownEventType
from symbi_common.events import EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.follower import Delivery, Follower, stop_requested
from symbi_common.keyring import KeyRegistry
from symbi_common.ordered_pull import OrderedPull, kv_change
from symbi_common.positions import MemoryPositions, Unit
from symbi_common.registry_catch_up import CatchUp, RegistryCatchUp, RegistryCatchUpFailed
from symbi_common.telemetry import continue_trace
from symbi_contracts.lifecycle.events import CODEC as AGENT_CODEC
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC
from symbi_contracts.sandbox_agent.heartbeat import unsigned_reason
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
_HOSTS_PREFIX = f"$KV.{HOSTS_BUCKET}."
LAST = DeliverPolicy.LAST_PER_SUBJECT
#: How long one pull waits while no host writes (each live host writes every second). Short: a pull request
#: the server dropped (a reconnect, a restart) is only sent again when it expires, and no heartbeat is seen
#: meanwhile, so a long wait would let every host look lost.
HOSTS_WAIT_S = 1.0
__all__ = ["EventFollower", "HostWatcher", "stop_requested"]


class EventFollower:
    """Applies the stream to ``model`` until stopped; calls ``on_change`` after each applied batch."""

    def __init__(
        self,
        js: Any,
        store: EventStore,
        model: Model,
        on_change: Callable[[], None],
        *,
        batch: int = 512,
        catch_up_registry: CatchUp | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.on_change = on_change
        #: Brings the store's key registry up to the newest version on ``REGISTRY`` when an event names an unknown
        #: signing key (the runtime's ``keys.catch_up``); None: such an event is rejected at once.
        self.catch_up_registry = catch_up_registry
        self.rejected = 0
        # The model is rebuilt from the stream's start in every process: the position lives in memory only.
        self.follower = Follower(
            js,
            service="scheduler",
            name="model",
            subjects=SUBJECTS,
            positions=MemoryPositions(),
            handler=self._apply_batch,
            batch=batch,
            acks=False,
        )
        self.synced = self.follower.synced

    @property
    def position(self) -> int:
        return self.follower.position

    async def run(self) -> None:
        """Follow the stream; on a consumer error, start again right after the last applied event."""
        await self.follower.run()

    async def _apply_batch(self, unit: Unit, batch: list[Delivery]) -> None:
        keys = RegistryCatchUp(self.catch_up_registry, follower="scheduler_model")
        for d in batch:
            await self._apply(d, keys)
        self.on_change()

    async def _apply(self, msg: Delivery, keys: RegistryCatchUp) -> None:
        sequence = msg.sequence
        parts = msg.subject.split(".", 2)
        if len(parts) != 3 or parts[1] not in CODECS:
            return
        kind = parts[1]
        if self.model.has(kind, parts[2], _version_of(msg.data), sequence):
            # Applied when this process appended it (or a repeat): verifying and decrypting it again would change
            # nothing, as the model ignores a version it has. The audit service verifies every stored event.
            return
        try:
            rec = await keys.verified(
                lambda: self.store.open_one(msg.data, msg.subject, sequence, CODECS[kind]),
                subject=msg.subject,
                sequence=sequence,
            )
        except RegistryCatchUpFailed:
            raise  # says nothing about the event: the batch is applied again (the model ignores what it has)
        except UnknownEventType:
            # A newer event type of another service: it still takes its place in the aggregate's versions.
            self.model.skip(kind, parts[2], _version_of(msg.data))
        except (IntegrityError, KeyringError) as exc:
            self.rejected += 1
            log.warning("event rejected", subject=msg.subject, sequence=sequence, error=str(exc))
        except SymbiError as exc:
            self.rejected += 1
            log.warning("event not readable", subject=msg.subject, sequence=sequence, error=str(exc))
        else:
            h = rec.header
            if kind == "execution" and (
                why := self.model.signed_elsewhere(parts[2], rec.event, self.store.registry.host_of(h.signing_key_id))
            ):
                # A host's own key reports only on the attempts placed on that host: another host's word on this
                # task is not taken (it still takes its version, so the task's own events are not out of order).
                self.rejected += 1
                log.warning("execution event of another host refused", subject=msg.subject, sequence=sequence, why=why)
                self.model.skip(kind, parts[2], h.aggregate_version)
                return
            headers = msg.headers
            if self.synced.is_set() and "traceparent" in headers:
                with continue_trace(
                    f"scheduler.apply {h.event_type}", headers, attributes={"symbi.sequence": sequence}
                ):
                    self.model.apply(kind, parts[2], h.aggregate_version, sequence, h.occurred_at / 1e9, rec.event)
            else:
                self.model.apply(kind, parts[2], h.aggregate_version, sequence, h.occurred_at / 1e9, rec.event)
            self.model.note_trace(kind, parts[2], headers)


def _version_of(data: bytes) -> int:
    """The aggregate version of a stored event, read from its header bytes (not verified: only to skip or to
    keep the version of an event that is not applied)."""
    try:
        sealed = msgspec.msgpack.decode(data, type=SealedEvent)
        return msgspec.msgpack.decode(sealed.header, type=EventHeader).aggregate_version
    except (msgspec.DecodeError, msgspec.ValidationError, AttributeError):
        return 0


class HostWatcher:
    """Follows the ``HOSTS`` bucket into ``model``; ``loaded`` is set once the initial values are in."""

    def __init__(
        self,
        js: Any,
        model: Model,
        on_change: Callable[[], None],
        *,
        registry: KeyRegistry,
        replicas: int = 1,
    ) -> None:
        self.js = js
        self.model = model
        self.on_change = on_change
        self.replicas = replicas
        #: The live key registry: a host that has a key of its own is believed only when that key signed its
        #: entry (symbi_contracts.sandbox_agent.heartbeat).
        self.registry = registry
        #: host -> why its entries are passed over now (logged once per reason).
        self._passing_over: dict[str, str] = {}
        self.loaded = asyncio.Event()

    async def open(self) -> None:
        try:
            await self.js.key_value(HOSTS_BUCKET)  # provisioned by the NATS admin; checked here, read below
        except nats.js.errors.BucketNotFoundError:
            raise InfrastructureError(
                f"KV bucket {HOSTS_BUCKET} does not exist; the NATS admin provisions it"
            ) from None

    async def run(self) -> None:
        """Follow the bucket until cancelled: the newest value of each key first, then each change."""
        feed = OrderedPull(self.js, stream=f"KV_{HOSTS_BUCKET}", subject=_HOSTS_PREFIX + ">", deliver_policy=LAST)
        await feed.open()
        try:
            while not stop_requested():
                changed = False
                for msg in await feed.take(HOSTS_WAIT_S):
                    host_id, removed = kv_change(msg, _HOSTS_PREFIX)
                    value = None if removed else bytes(msg.data)
                    changed = self._apply(host_id, value, msg.headers or {}) or changed
                if feed.caught_up:
                    self.loaded.set()
                if changed:
                    self.on_change()
        finally:
            await feed.close()

    def _apply(self, host_id: str, value: bytes | None, headers: Mapping[str, str]) -> bool:
        """Apply one key's value (None: removed); whether the leader should run a round for it. An unchanged
        heartbeat of a live host does not wake it (one per host and second); its ``tick_s`` round still notices
        a host's loss. A host with a key of its own is believed only when that key signed a newer entry; a
        removal of its key is passed over (its loss is seen when its heartbeats stop)."""
        own_key = self.registry.has_host_keys(host_id)
        if not value:
            if own_key:
                self._passed_over(host_id, "a removal of the key of a host with a key of its own")
                return False
            self.model.host_gone(host_id)
            return True
        if own_key and (why := unsigned_reason(value, headers, self.registry, host_id)):
            self._passed_over(host_id, why)
            return False
        try:
            info = msgspec.json.decode(value, type=HostInfo)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("malformed host entry", host=host_id, error=str(exc))
            return False
        if info.host_id != host_id or info.cpu_cores <= 0 or info.memory_mb <= 0:
            log.warning("inconsistent host entry", host=host_id)
            return False
        last = self.model.capacity.host_info.get(host_id)
        if own_key and last is not None and info.heartbeat_s() <= last.heartbeat_s():
            self._passed_over(host_id, "not newer than the last one (replayed)")
            return False
        self._passing_over.pop(host_id, None)
        return self.model.host_seen(info, time.time())

    def _passed_over(self, host_id: str, why: str) -> None:
        """Log a host entry not believed, once while the reason stays the same (a host beats every second)."""
        if self._passing_over.get(host_id) != why:
            self._passing_over[host_id] = why
            log.warning("host entry passed over", host=host_id, why=why)
