"""The vector index as a projection of the event stream.

A consumer reads ``evt.memory.>``, ``evt.knowledge.>`` and ``evt.task.>`` in stream order, verifies each event
(signature and signer authorisation), decrypts the memory and knowledge payloads and applies them to the
:class:`VectorStore`; ``task.completed`` clears the working memories of that task. After each batch the store
records the stream position it reflects. Every change is idempotent (upsert and delete by id), so replaying
from a position that is not the latest (a crash between the store write and the position write) converges to
the same content: deleting the index and replaying the stream rebuilds it with the same search results.
That is also why the position is stored at most once per ``persist_interval`` (and when the consumer
stops), not after every batch: storing it flushes the engine, which cost about 7 ms of CPU per task when
every ``task.*`` event did it; after a crash the index replays at most that much of the stream again.

An event that fails verification is logged, counted and skipped; an aggregate whose data key was destroyed
(crypto-shredded) has nothing to index.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

import nats.errors
import nats.js.errors
import numpy as np
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from symbi_common.datakeys import DataKeys, DataKeyStore
from symbi_common.errors import DataKeyDestroyed, SymbiError
from symbi_common.keyring import KeyRegistry
from symbi_common.projection import wait_for_position
from symbi_common.sealing import decrypt, open_envelope
from symbi_common.streams import EVENTS_STREAM, BacklogFetch, keep_consuming
from symbi_common.telemetry import REJECTED_EVENTS, SECURITY_EVENTS, continue_trace, observe_consumed

from symbi_context.domain import (
    KNOWLEDGE,
    KNOWLEDGE_KIND,
    MEMORY,
    KnowledgeForgotten,
    KnowledgeIngested,
    MemoryForgotten,
    MemoryStored,
)
from symbi_context.vectors.keywords import document_keywords
from symbi_context.vectors.port import NEVER, MetaFilter, VectorPoint, VectorStore

log = structlog.get_logger(__name__)

SUBJECTS = ("evt.memory.>", "evt.knowledge.>", "evt.task.>")
TASK_COMPLETED = "task.completed"
NAME = "context_index"


def vector_of(data: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


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
        "origin": {
            k: v
            for k, v in (
                ("task_id", event.origin.task_id),
                ("tool_call_id", event.origin.tool_call_id),
                ("message_id", event.origin.message_id),
            )
            if v
        },
        "model": event.model,
        "sequence": sequence,
        "data_key_id": data_key_id,
    }
    if event.origin.task_id:
        payload["task_id"] = event.origin.task_id
    return VectorPoint(event.memory_id, vector_of(event.vector), document_keywords(event.text), payload)


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
            "origin": {
                k: v
                for k, v in (
                    ("task_id", event.origin.task_id),
                    ("tool_call_id", event.origin.tool_call_id),
                    ("message_id", event.origin.message_id),
                )
                if v
            },
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
    ) -> None:
        self.js = js
        self.store = store
        self.registry = registry
        self.datakeys = datakeys
        self.stream = stream
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.position = 0
        self.persist_interval = persist_interval
        #: The position last stored in the vector store, and when (monotonic clock).
        self._stored = 0
        self._stored_at = 0.0
        self.consumer_name = f"{NAME}_{uuid.uuid4().hex[:12]}"
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.rejected = 0
        #: Events applied by this process (the optimizer runs after changes).
        self.applied = 0
        self.shredded = 0

    async def run(self) -> None:
        """Apply events until :meth:`stop`; failures back off and resume from the store's position."""
        await keep_consuming(self._run_consumer, self._stopping, what="context index")

    async def stop(self) -> None:
        self._stopping.set()

    async def _run_consumer(self) -> None:
        self.position = self._stored = await self.store.position()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_consumer(self.stream, self.consumer_name)
        config = ConsumerConfig(
            durable_name=self.consumer_name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.position + 1,
            ack_policy=AckPolicy.NONE,  # the store's position is the truth, not the consumer's
            inactive_threshold=300,
            filter_subjects=list(SUBJECTS),
        )
        await self.js.add_consumer(self.stream, config)
        psub = await self.js.pull_subscribe_bind(durable=self.consumer_name, stream=self.stream)
        self.ready.set()
        fetch = BacklogFetch(psub, self.batch)
        try:
            while not self._stopping.is_set():
                msgs = await fetch(timeout=self.fetch_timeout)
                if msgs:
                    await self.apply_batch(msgs)
                await self.persist(force=False)
        finally:
            with contextlib.suppress(SymbiError):
                await self.persist(force=True)
            await psub.unsubscribe()
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.stream, self.consumer_name)

    async def apply_batch(self, msgs: Sequence[Any]) -> None:
        """Apply messages in order; consecutive upserts go to the store as one batch."""
        pending: list[VectorPoint] = []
        last = self.position
        for msg in msgs:
            seq = int(msg.metadata.sequence.stream)
            if seq <= last:
                continue
            # Indexing the event is a span of the trace that stored it (a memory written for a task …).
            with continue_trace(
                "context.index", msg.headers, attributes={"symbi.subject": msg.subject, "symbi.sequence": seq}
            ):
                try:
                    action = await self._decode(msg.subject, seq, bytes(msg.data))
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
            last = seq
            self.applied += 1
        if pending:
            await self.store.upsert(pending)
        if msgs:
            observe_consumed(NAME, msgs[-1].metadata.timestamp, len(msgs))
        if last != self.position:
            async with self._changed:
                self.position = last
                self._changed.notify_all()

    async def persist(self, *, force: bool) -> None:
        """Store the position (the engine flushes first) if it moved, at most once per ``persist_interval``."""
        now = asyncio.get_running_loop().time()
        if self.position != self._stored and (force or now - self._stored_at >= self.persist_interval):
            position = self.position
            await self.store.set_position(position)
            self._stored, self._stored_at = position, now

    async def _decode(self, subject: str, seq: int, data: bytes) -> Any:
        """Points to upsert (a list), a coroutine that deletes, or None."""
        opened = open_envelope(data, subject=subject, sequence=seq, registry=self.registry)
        header = opened.header
        if header.aggregate_type == "task":
            if header.event_type != TASK_COMPLETED:
                return None
            where = MetaFilter(kinds=("working",), equals={"task_id": header.aggregate_id})
            return self.store.delete_where(where)
        if header.aggregate_type not in (MEMORY.aggregate_type, KNOWLEDGE.aggregate_type):
            return None
        key = await self.datakeys.by_id(header.data_key_id)
        payload = decrypt(opened, key)
        owner = header.aggregate_id
        if header.aggregate_type == MEMORY.aggregate_type:
            memory_event = MEMORY.codec.decode(payload, event_type=header.event_type, sequence=seq, subject=subject)
            if isinstance(memory_event, MemoryStored):
                return [memory_point(owner, memory_event, seq, header.data_key_id)]
            assert isinstance(memory_event, MemoryForgotten)
            return self.store.delete(list(memory_event.memory_ids))
        event = KNOWLEDGE.codec.decode(payload, event_type=header.event_type, sequence=seq, subject=subject)
        if isinstance(event, KnowledgeIngested):
            return knowledge_points(owner, event, seq, header.data_key_id)
        assert isinstance(event, KnowledgeForgotten)
        return self._forget_documents(owner, event.document_ids)

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

        The events stay in the stream, unreadable; a rebuild skips them (see :meth:`apply_batch`), and this keeps
        the live index from serving the plaintext it projected before.
        """
        async for name in keys.changes():
            aggregate_type, _, owner = name.partition(".")
            if aggregate_type not in (MEMORY.aggregate_type, KNOWLEDGE.aggregate_type) or not owner:
                continue
            if await keys.get(name) is not None:
                continue  # rotated, not destroyed
            scope = "memory" if aggregate_type == MEMORY.aggregate_type else "knowledge"
            await self.store.delete_where(MetaFilter(owners=(owner,), equals={"scope": scope}))
            self.shredded += 1
            log.info("data key destroyed, owner purged from the index", owner=owner, scope=scope)

    async def wait_for(self, sequence: int, timeout: float = 5.0) -> bool:
        """Wait until events up to stream ``sequence`` are in the index."""
        return await wait_for_position(self._changed, lambda: self.position, sequence, timeout)
