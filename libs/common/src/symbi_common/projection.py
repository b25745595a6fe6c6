"""Projections: read models in PostgreSQL fed by a durable JetStream consumer, exactly once.

The runner applies a batch of events and records the stream position in the **same transaction**;
only then does it acknowledge the messages. After a crash between commit and ack the messages come
again and are skipped (their sequence is not above the stored position). The PostgreSQL position is
the truth: on every (re)start the runner's consumer is re-created to start right after it.

Several replicas of a service may run the same projection at once. Each runner has a consumer of its
own (so each sees every event, in order), and a batch is applied under a row lock on the stored
position, skipping what another runner already applied: every event is applied exactly once whichever
replica gets there first. (Sharing one consumer would split the events between replicas, and a replica
committing a later batch first would make the other skip an earlier one.)

An event that fails verification or decoding (garbage bytes, forged signer …) never stops the
projection: it is recorded in ``symbi_projection_rejects`` with the reason, counted, and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import asyncpg
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from symbi_common.db import apply_schema
from symbi_common.errors import SymbiError
from symbi_common.streams import EVENTS_STREAM, BacklogFetch, RawMessage, keep_consuming
from symbi_common.telemetry import (
    PROJECTION_EVENTS,
    PROJECTION_POSITION,
    REJECTED_EVENTS,
    SECURITY_EVENTS,
    continue_trace,
    observe_consumed,
)

log = structlog.get_logger(__name__)

RUNNER_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS symbi_projection_positions (
        name text PRIMARY KEY,
        position bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS symbi_projection_rejects (
        name text NOT NULL,
        sequence bigint NOT NULL,
        subject text NOT NULL,
        code text NOT NULL,
        message text NOT NULL,
        rejected_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (name, sequence))""",
)


class Projection(Protocol):
    """A read model. ``apply`` gets an asyncpg connection inside the runner's transaction; raise SymbiError to reject an event."""

    name: str
    filter_subjects: Sequence[str]
    schema: Sequence[str]

    async def apply(self, conn: Any, message: RawMessage) -> None: ...


async def wait_for_position(
    changed: asyncio.Condition, position: Callable[[], int], sequence: int, timeout: float
) -> bool:
    """Wait until ``position()`` reaches stream ``sequence``; ``changed`` is notified whenever it moves.
    False on timeout. Every stream follower (projections, the audit verifier, the vector index) uses it."""

    async def _wait() -> None:
        async with changed:
            await changed.wait_for(lambda: position() >= sequence)

    try:
        await asyncio.wait_for(_wait(), timeout)
    except TimeoutError:
        return False
    return True


class ProjectionRunner:
    """Runs one projection until stopped; restarts its consumer from the stored position on errors."""

    def __init__(
        self,
        js: Any,
        pool: asyncpg.Pool,
        projection: Projection,
        *,
        stream: str = EVENTS_STREAM,
        batch: int = 256,
        fetch_timeout: float = 1.0,
    ) -> None:
        self.js = js
        self.pool = pool
        self.projection = projection
        self.stream = stream
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.position = 0
        #: This runner's own consumer; abandoned ones (a killed process) expire on the server.
        self.consumer_name = f"{projection.name}_{uuid.uuid4().hex[:12]}"
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()

    async def setup(self) -> None:
        await apply_schema(self.pool, (*RUNNER_SCHEMA, *self.projection.schema))
        # The position row must exist before any batch: batches serialise on its row lock.
        await self.pool.execute(
            "INSERT INTO symbi_projection_positions (name, position) VALUES ($1, 0) ON CONFLICT DO NOTHING",
            self.projection.name,
        )
        self.position = await self._stored_position()

    async def _stored_position(self) -> int:
        row = await self.pool.fetchval(
            "SELECT position FROM symbi_projection_positions WHERE name = $1", self.projection.name
        )
        return int(row or 0)

    async def run(self) -> None:
        """Apply events until :meth:`stop`; transient failures back off and resume from the stored position."""
        await keep_consuming(self._run_consumer, self._stopping, what="projection", projection=self.projection.name)

    async def stop(self) -> None:
        self._stopping.set()

    async def _consumer(self) -> Any:
        name = self.consumer_name
        self.position = await self._stored_position()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_consumer(self.stream, name)
        subjects = list(self.projection.filter_subjects)
        config = ConsumerConfig(
            durable_name=name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.position + 1,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=60,
            max_ack_pending=self.batch * 4,
            inactive_threshold=300,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
        )
        await self.js.add_consumer(self.stream, config)
        return await self.js.pull_subscribe_bind(durable=name, stream=self.stream)

    async def _run_consumer(self) -> None:
        psub = await self._consumer()
        self.ready.set()
        fetch = BacklogFetch(psub, self.batch)
        try:
            while not self._stopping.is_set():
                msgs = await fetch(timeout=self.fetch_timeout)
                if not msgs:
                    continue
                await self._apply_batch(msgs)
                for m in msgs:
                    await m.ack()
        finally:
            await psub.unsubscribe()
            if self._stopping.is_set():
                with contextlib.suppress(Exception):  # it expires on its own otherwise
                    await self.js.delete_consumer(self.stream, self.consumer_name)

    async def _apply_batch(self, msgs: list[Any]) -> None:
        name = self.projection.name
        applied = 0
        async with self.pool.acquire() as conn, conn.transaction():
            position = int(
                await conn.fetchval("SELECT position FROM symbi_projection_positions WHERE name = $1 FOR UPDATE", name)
                or 0
            )
            start = position
            for m in msgs:
                seq = int(m.metadata.sequence.stream)
                if seq <= position:
                    continue  # already applied before a crash; acknowledged below
                raw = RawMessage(m.subject, seq, bytes(m.data), {str(k): v for k, v in (m.headers or {}).items()})
                try:
                    # Each event is applied as a span of the trace it carries (the command that appended it).
                    with continue_trace(
                        f"project {name}",
                        raw.headers,
                        attributes={"symbi.projection": name, "symbi.subject": raw.subject, "symbi.sequence": seq},
                    ):
                        async with conn.transaction():  # savepoint: a rejected event leaves no partial writes
                            await self.projection.apply(conn, raw)
                    applied += 1
                    observe_consumed(name, m.metadata.timestamp)
                except SymbiError as err:
                    await conn.execute(
                        "INSERT INTO symbi_projection_rejects (name, sequence, subject, code, message)"
                        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        name,
                        seq,
                        raw.subject,
                        err.code,
                        err.message,
                    )
                    REJECTED_EVENTS.labels(name, err.code).inc()
                    SECURITY_EVENTS.labels("rejected_event").inc()
                    log.warning("event rejected", projection=name, sequence=seq, subject=raw.subject, error=err.message)
                position = seq
            if position != start:
                await conn.execute(
                    "INSERT INTO symbi_projection_positions (name, position) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
                    name,
                    position,
                )
        if position != self.position:
            async with self._changed:
                self.position = position
                self._changed.notify_all()
            PROJECTION_POSITION.labels(name).set(position)
            PROJECTION_EVENTS.labels(name).inc(applied)

    async def wait_for(self, sequence: int, timeout: float = 5.0) -> bool:
        """Wait until events up to stream ``sequence`` are applied (read-your-writes for callers)."""
        return await wait_for_position(self._changed, lambda: self.position, sequence, timeout)
