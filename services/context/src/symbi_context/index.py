"""The vector index as a projection of the event stream.

A :class:`~symbi_common.follower.Follower` reads ``evt.memory.>``, ``evt.knowledge.>`` and ``evt.task.>`` in stream order, verifies each event
(signature and signer authorisation), decrypts the memory and knowledge payloads and applies them to the
:class:`VectorStore`; ``task.completed`` clears the working memories of that task. After each batch the store
records the stream position it reflects. Every change is idempotent (upsert and delete by id), so replaying
from a position that is not the latest (a crash between the store write and the position write) converges to
the same content: deleting the index and replaying the stream rebuilds it with the same search results.
That is also why the position is stored at most once per ``persist_interval`` (and when the consumer
stops), not after every batch: storing it flushes the engine, which cost about 7 ms of CPU per task when
every ``task.*`` event did it; after a crash the index replays at most that much of the stream again.

An event that fails verification is logged, counted and skipped; an aggregate whose data key was destroyed
(crypto-shredded) has nothing to index. One naming a signing key this process's registry does not know yet (a
rotated key another process learnt first) is verified again once the registry has caught up with the ``REGISTRY``
stream (:mod:`symbi_common.registry_catch_up`); a catch-up that cannot read the stream applies the batch again.

A ``task.*`` delivery that cannot change the index is passed over before it is verified and decrypted (its
position is passed like any other's): one whose type header names a type the index ignores
(:data:`IGNORED_TASK_TYPES`), and any of a task without working memories in the store (see
:meth:`ContextIndex._load_working_tasks`) — three events of every task that wrote none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from typing import Any

import msgspec
import nats.errors
import numpy as np
import structlog
from symbi_common.datakeys import DataKeys, DataKeyStore
from symbi_common.envelope import subject_for
from symbi_common.errors import DataKeyDestroyed, SymbiError
from symbi_common.events import tag_of
from symbi_common.eventstore import H_EVENT_TYPE
from symbi_common.follower import Delivery, Follower
from symbi_common.keyring import KeyRegistry
from symbi_common.positions import PeriodicPositions, Unit
from symbi_common.reader import decode_opened
from symbi_common.registry_catch_up import CatchUp, RegistryCatchUp, RegistryCatchUpFailed
from symbi_common.sealing import open_envelope
from symbi_common.streams import EVENTS_STREAM
from symbi_common.telemetry import REJECTED_EVENTS, SECURITY_EVENTS, continue_trace, observe_consumed
from symbi_contracts.context.commands import Origin
from symbi_contracts.scheduler.events import (
    TaskAssigned,
    TaskCancelled,
    TaskCompleted,
    TaskPreempted,
    TaskResumed,
    TaskSubmitted,
    TaskSuspended,
)

from symbi_context.domain import (
    KNOWLEDGE,
    KNOWLEDGE_KIND,
    MEMORY,
    KnowledgeForgotten,
    KnowledgeIngested,
    MemoryForgotten,
    MemoryStored,
)
from symbi_context.errors import IndexBehind, InvalidContext
from symbi_context.point_ids import memory_point_id
from symbi_context.vectors.keywords import document_keywords
from symbi_context.vectors.port import NEVER, MetaFilter, VectorPoint, VectorStore
from symbi_context.vectors.sealed import SealedVectorStore

log = structlog.get_logger(__name__)

SUBJECTS = ("evt.memory.>", "evt.knowledge.>", "evt.task.>")
TASK_SUBJECTS = "evt.task."
TASK_COMPLETED = tag_of(TaskCompleted)
#: The task event types the index does nothing with (only ``task.completed`` clears working memories), skipped
#: by the event's type header (``Symbi-Event-Type``) before verification. The header is not signed, so a
#: skipped event is never acted on; ``task.completed``, an unknown type or no header take the full path. A
#: ``task.completed`` labelled as one of these could only come from the scheduler (the only service that may
#: publish on ``evt.task.>``, with the key that signs these events); the audit service verifies every event.
IGNORED_TASK_TYPES = frozenset(
    tag_of(t) for t in (TaskSubmitted, TaskAssigned, TaskPreempted, TaskSuspended, TaskResumed, TaskCancelled)
)
#: At most this many working memories are read at start to know their tasks; with more, every
#: ``task.completed`` is verified and deletes as before.
WORKING_SCAN_LIMIT = 10_000
NAME = "context_index"


def vector_of(data: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def origin_of(origin: Origin) -> dict[str, str]:
    """The ids of ``origin`` that are set: a point's payload holds no empty ones."""
    return {k: v for k, v in msgspec.structs.asdict(origin).items() if v}


def memory_point(owner: str, event: MemoryStored, sequence: int, data_key_id: str) -> VectorPoint:
    payload: dict[str, Any] = {
        "owner": owner,
        "scope": "memory",
        "kind": event.kind,
        "text": event.text,
        "created_at": event.created_at,
        "expires_at": event.expires_at if event.expires_at is not None else NEVER,
        "tags": list(event.tags),
        "metadata": dict(event.metadata),
        "origin": origin_of(event.origin),
        "model": event.model,
        "sequence": sequence,
        "data_key_id": data_key_id,
    }
    if event.origin.task_id:
        payload["task_id"] = event.origin.task_id
    payload["memory_id"] = event.memory_id
    point_id = memory_point_id(owner, event.memory_id)
    return VectorPoint(point_id, vector_of(event.vector), document_keywords(event.text), payload)


def knowledge_points(owner: str, event: KnowledgeIngested, sequence: int, data_key_id: str) -> list[VectorPoint]:
    points = []
    for chunk in event.chunks:
        payload: dict[str, Any] = {
            "owner": owner,
            "scope": "knowledge",
            "kind": KNOWLEDGE_KIND,
            "text": chunk.text,
            "document_id": event.document_id,
            "title": event.title,
            "source": event.source,
            "position": chunk.position,
            "created_at": event.created_at,
            "expires_at": NEVER,
            "tags": list(event.tags),
            "metadata": dict(event.metadata),
            "origin": origin_of(event.origin),
            "model": event.model,
            "sequence": sequence,
            "data_key_id": data_key_id,
        }
        # Keywords see the title too: a chunk is often about its document's subject without naming it.
        points.append(
            VectorPoint(
                chunk.chunk_id, vector_of(chunk.vector), document_keywords(f"{event.title}\n{chunk.text}"), payload
            )
        )
    return points


class ContextIndex:
    """Keeps a :class:`VectorStore` equal to the projection of the stream; ``wait_for`` gives read-your-writes."""

    def __init__(
        self,
        js: Any,
        store: VectorStore,
        registry: KeyRegistry,
        datakeys: DataKeys,
        *,
        stream: str = EVENTS_STREAM,
        batch: int = 256,
        fetch_timeout: float = 0.5,
        persist_interval: float = 2.0,
        catch_up_registry: CatchUp | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.datakeys = datakeys
        self._js = js
        self._stream = stream
        #: Brings ``registry`` up to the newest version on ``REGISTRY`` when an event names an unknown signing key
        #: (the runtime's ``keys.catch_up``); None: such an event is rejected at once.
        self.catch_up_registry = catch_up_registry
        self.rejected = 0
        #: Events applied by this process (the optimizer runs after changes).
        self.applied = 0
        self.shredded = 0
        #: ``task.*`` deliveries passed over unverified (they cannot change the index).
        self.skipped = 0
        #: The subjects of the tasks that may have working memories in the store; None: not known.
        self._working_tasks: set[str] | None = None
        #: Held while a batch is applied and while an erased owner is purged: a batch never upserts an owner's
        #: points after the purge of that owner (its events are then undecryptable, see :meth:`follow_shredding`).
        self._applying = asyncio.Lock()
        # The store's position is the truth, not the consumer's (no acks); written at most every persist_interval.
        self.positions = PeriodicPositions(store.position, store.set_position, interval=persist_interval)
        self.follower = Follower(
            js,
            service="context",
            name=NAME,
            subjects=SUBJECTS,
            positions=self.positions,
            handler=self._apply_batch,
            stream=stream,
            batch=batch,
            fetch_timeout=fetch_timeout,
            acks=False,
            on_start=self._load_working_tasks,
        )
        self.ready = self.follower.ready

    @property
    def position(self) -> int:
        return self.follower.position

    async def run(self) -> None:
        """Apply events until :meth:`stop`; failures back off and resume from the store's position."""
        await self.follower.run()

    async def stop(self) -> None:
        await self.follower.stop()

    async def _load_working_tasks(self) -> None:
        """Read which tasks have working memories in the store, at each (re)start of the consumer.

        Exact: the store's position is read first, and every point at or below it is in the store by then;
        every later one is replayed through :meth:`_decode`, which adds its task. The engine's payloads are read
        (not through the sealing layer, which would leave out the points whose owner's key is destroyed: their
        task's completion still deletes them). A task in the set without working memories (forgotten, shredded)
        only costs a delete that deletes nothing.
        """
        engine = self.store.inner if isinstance(self.store, SealedVectorStore) else self.store
        hits = await engine.scroll(MetaFilter(kinds=("working",)), limit=WORKING_SCAN_LIMIT)
        if len(hits) >= WORKING_SCAN_LIMIT:
            self._working_tasks = None
            return
        tasks = {h.payload.get("task_id") for h in hits}
        self._working_tasks = {subject_for("task", t) for t in tasks if isinstance(t, str) and t}

    def _no_effect(self, msg: Delivery) -> bool:
        """Whether ``msg`` is a task event that cannot change the index (see :data:`IGNORED_TASK_TYPES`); the
        subject is the one the stream stored it under, and a verified event names the same task."""
        if not msg.subject.startswith(TASK_SUBJECTS):
            return False
        if msg.headers.get(H_EVENT_TYPE) in IGNORED_TASK_TYPES:
            return True
        return self._working_tasks is not None and msg.subject not in self._working_tasks

    async def _apply_batch(self, unit: Unit, batch: list[Delivery]) -> None:
        """Apply deliveries in order; consecutive upserts go to the store as one batch."""
        async with self._applying:
            await self._apply(batch)

    async def _apply(self, batch: list[Delivery]) -> None:
        pending: list[VectorPoint] = []
        keys = RegistryCatchUp(self.catch_up_registry, follower=NAME)
        for msg in batch:
            if self._no_effect(msg):
                self.skipped += 1
                continue
            seq = msg.sequence
            # Indexing the event is a span of the trace that stored it (a memory written for a task …).
            with continue_trace(
                "context.index", msg.headers, attributes={"symbi.subject": msg.subject, "symbi.sequence": seq}
            ):
                try:
                    action = await keys.verified(
                        partial(self._decode, msg.subject, seq, msg.data), subject=msg.subject, sequence=seq
                    )
                except RegistryCatchUpFailed:
                    raise  # says nothing about the event: the batch is applied again (every change is idempotent)
                except DataKeyDestroyed:
                    action = None  # crypto-shredded: nothing of it may be indexed
                except SymbiError as err:
                    self.rejected += 1
                    REJECTED_EVENTS.labels(NAME, err.code).inc()
                    SECURITY_EVENTS.labels("rejected_event").inc()
                    log.warning("event rejected", projection=NAME, sequence=seq, subject=msg.subject, error=err.message)
                    action = None
                if isinstance(action, list):
                    pending.extend(action)
                elif action is not None:
                    if pending:
                        await self.store.upsert(pending)
                        pending = []
                    await action
            self.applied += 1
        if pending:
            await self.store.upsert(pending)
        observe_consumed(NAME, batch[-1].stored_at, len(batch))

    async def _decode(self, subject: str, seq: int, data: bytes) -> Any:
        """Points to upsert (a list), a coroutine that deletes, or None."""
        opened = open_envelope(data, subject=subject, sequence=seq, registry=self.registry)
        header = opened.header
        if header.aggregate_type == "task":
            if header.event_type != TASK_COMPLETED:
                return None
            return self._clear_working(header.aggregate_id)
        if header.aggregate_type not in (MEMORY.aggregate_type, KNOWLEDGE.aggregate_type):
            return None
        owner = header.aggregate_id
        if header.aggregate_type == MEMORY.aggregate_type:
            memory_event = (await decode_opened(opened, self.datakeys, MEMORY.codec)).event
            if isinstance(memory_event, MemoryStored):
                if memory_event.kind == "working" and memory_event.origin.task_id and self._working_tasks is not None:
                    self._working_tasks.add(subject_for("task", memory_event.origin.task_id))
                return [memory_point(owner, memory_event, seq, header.data_key_id)]
            assert isinstance(memory_event, MemoryForgotten)
            return self.store.delete([memory_point_id(owner, m) for m in memory_event.memory_ids])
        event = (await decode_opened(opened, self.datakeys, KNOWLEDGE.codec)).event
        if isinstance(event, KnowledgeIngested):
            return knowledge_points(owner, event, seq, header.data_key_id)
        assert isinstance(event, KnowledgeForgotten)
        return self._forget_documents(owner, event.document_ids)

    async def _clear_working(self, task_id: str) -> None:
        await self.store.delete_where(MetaFilter(kinds=("working",), equals={"task_id": task_id}))
        if self._working_tasks is not None:  # only once deleted: a failed delete is retried with the batch
            self._working_tasks.discard(subject_for("task", task_id))

    async def _forget_documents(self, owner: str, document_ids: Sequence[str]) -> None:
        for document_id in document_ids:
            await self.store.delete_where(MetaFilter(owners=(owner,), equals={"document_id": document_id}))

    async def optimize_forever(self, interval: float = 5.0) -> None:
        """Let the engine build and merge its indexes (HNSW, payload indexes) in the background: every
        ``interval`` seconds after points changed. Searches and writes go on meanwhile; runs until cancelled."""
        done = 0
        while True:
            await asyncio.sleep(interval)
            if self.applied == done:
                continue
            done = self.applied
            try:
                await self.store.optimize()
            except SymbiError as err:
                log.warning("index optimization failed", error=err.message)

    async def follow_shredding(self, keys: DataKeyStore) -> None:
        """Purge an owner's points the moment its data key is destroyed (crypto-shredding); runs until cancelled.

        The events stay in the stream, unreadable; a rebuild skips them (see :meth:`_apply_batch`), and this keeps
        the live index from serving the plaintext it projected before. The purge waits for a batch being applied
        (its points of the owner are purged with the rest) and drops the key from this process's cache (whose
        own notice of the destruction may come later), so every later batch finds the owner's events
        undecryptable and indexes nothing of the owner again.
        """
        async for name in keys.changes((MEMORY.aggregate_type, KNOWLEDGE.aggregate_type)):
            aggregate_type, _, owner = name.partition(".")
            if not owner:
                continue
            if await keys.get(name) is not None:
                continue  # rotated, not destroyed
            scope = "memory" if aggregate_type == MEMORY.aggregate_type else "knowledge"
            async with self._applying:  # no batch is being applied now: none can upsert the owner after this
                self.datakeys.forget(name)  # later batches read the key from the store: destroyed, nothing indexed
                await self.store.delete_where(MetaFilter(owners=(owner,), equals={"scope": scope}))
            self.shredded += 1
            log.info("data key destroyed, owner purged from the index", owner=owner, scope=scope)

    async def _last_sequence(self) -> int | None:
        """The stream's last sequence now; None if NATS cannot say (the wait then decides)."""
        try:
            info = await self._js.stream_info(self._stream)
        except (nats.errors.Error, TimeoutError) as exc:  # the wait decides, and answers 503 if need be
            log.warning("stream info unavailable", stream=self._stream, error=str(exc))
            return None
        return int(info.state.last_seq)

    async def wait_for(self, sequence: int, timeout: float = 5.0) -> bool:
        """Wait until events up to stream ``sequence`` are in the index."""
        return await self.follower.wait_for(sequence, timeout)

    async def reach(self, sequence: int, timeout: float = 5.0, *, field: str = "min_sequence") -> None:
        """Wait until events up to stream ``sequence`` are in the index; :class:`IndexBehind` if they are not
        within ``timeout`` (read-your-writes: an answer without them would pass a stale index off as current).

        A ``sequence`` past the stream's last event names no write (a write's answer carries the sequence it was
        stored at), so no wait could bring it: :class:`InvalidContext` on ``field`` at once, not a wait and a 503.
        """
        if sequence > self.position:
            last = await self._last_sequence()
            if last is not None and sequence > last:
                raise InvalidContext(
                    f"is past the last stored event ({last}): pass the sequence a write answered", field=field
                )
        if not await self.wait_for(sequence, timeout):
            halted = self.follower.halted
            raise IndexBehind(
                wanted=sequence, position=self.position, waited_s=timeout, halted=halted.message if halted else None
            )
