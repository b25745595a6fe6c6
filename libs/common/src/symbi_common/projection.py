"""Projections: read models in PostgreSQL fed by a :class:`~symbi_common.follower.Follower`, exactly once.

The runner applies a batch of events and records the stream position in the **same transaction**;
only then does it acknowledge the messages. After a crash between commit and ack the messages come
again and are skipped (their sequence is not above the stored position). The PostgreSQL position is
the truth: on every (re)start the runner's consumer is created to start right after it
(:class:`~symbi_common.positions.PgPositions`).

Several replicas of a service may run the same projection at once. Each runner has a consumer of its
own (so each sees every event, in order), and a batch is applied under a row lock on the stored
position, skipping what another runner already applied: every event is applied exactly once whichever
replica gets there first. (Sharing one consumer would split the events between replicas, and a replica
committing a later batch first would make the other skip an earlier one.)

An event that fails verification or decoding (garbage bytes, forged signer …) never stops the
projection: it is recorded in ``symbi_projection_rejects`` with the reason, counted, and skipped. A failure that
says nothing about the event (:class:`~symbi_common.errors.InfrastructureError`: NATS or the data key store away
a moment) rejects nothing: the batch is not committed and is applied again.

Nor is an event whose signing key this process's registry does not know yet (:class:`UnknownSigningKey`: after
a key rotation another process signs with the new key as soon as its own registry follower applied the version)
rejected on the spot: the service's registry catches up with the ``REGISTRY`` stream (``catch_up_registry``, at
most once a batch) and the event is applied again (:class:`~symbi_common.registry_catch_up.RegistryCatchUp`).
Only a key still unknown then is rejected (forged, or of another deployment: fail closed).

A ``VersionGap`` is not retried: it is a fact about the read model's row (an earlier event of the aggregate
was rejected, or never stored), the same on a second try in the same transaction; the rejected event is
never applied later. Not rejecting a still-unknown key's event for a mere lag is what keeps its aggregate's
later events from all becoming gaps.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol

import asyncpg
import structlog

from symbi_common.errors import InfrastructureError, SymbiError
from symbi_common.follower import Delivery, Follower, wait_for_position
from symbi_common.positions import PgPositions, Unit
from symbi_common.registry_catch_up import CatchUp, RegistryCatchUp
from symbi_common.streams import EVENTS_STREAM, RawMessage
from symbi_common.telemetry import (
    PROJECTION_EVENTS,
    REJECTED_EVENTS,
    SECURITY_EVENTS,
    continue_trace,
    observe_consumed,
)

log = structlog.get_logger(__name__)

REJECTS_SCHEMA = (
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
    """A read model. ``apply`` gets an asyncpg connection inside the runner's transaction; raise SymbiError to reject an event.

    ``checks_before_writes``: True if ``apply`` raises SymbiError only before its first write (it verifies and
    checks, then writes). Its events are then applied without a savepoint each (two round trips fewer per
    event): a rejected one has written nothing. False: each event is applied under a savepoint of its own.
    """

    name: str
    filter_subjects: Sequence[str]
    schema: Sequence[str]
    checks_before_writes: bool

    async def apply(self, conn: Any, message: RawMessage) -> None: ...


class ProjectionRunner(Follower):
    """Runs one projection until stopped; restarts its consumer from the stored position on errors.

    ``catch_up_registry``: brings the key registry the projection verifies with up to the newest version on the
    ``REGISTRY`` stream when an event names an unknown signing key (the service runtime gives its own); None:
    there is nothing to bring up to date, the event is rejected at once.
    """

    def __init__(
        self,
        js: Any,
        pool: asyncpg.Pool,
        projection: Projection,
        *,
        service: str = "symbi",
        stream: str = EVENTS_STREAM,
        batch: int = 256,
        fetch_timeout: float = 1.0,
        catch_up_registry: CatchUp | None = None,
    ) -> None:
        self.pool = pool
        self.projection = projection
        self.catch_up_registry = catch_up_registry
        self.store = PgPositions(pool, projection.name)
        super().__init__(
            js,
            service=service,
            name=projection.name,
            subjects=projection.filter_subjects,
            positions=self.store,
            handler=self._project,
            stream=stream,
            batch=batch,
            fetch_timeout=fetch_timeout,
        )

    async def setup(self) -> None:
        await self.store.setup((*REJECTS_SCHEMA, *self.projection.schema))
        self.position = await self.store.load()

    async def _project(self, unit: Unit, batch: list[Delivery]) -> None:
        name = self.projection.name
        conn = unit.conn
        applied = 0
        # Raises if REGISTRY cannot be read (RegistryCatchUpFailed): the batch is tried again, nothing is rejected.
        registry = RegistryCatchUp(self.catch_up_registry, follower=f"projection {name}")
        for d in batch:
            try:
                await registry.verified(functools.partial(self._apply, conn, d), subject=d.subject, sequence=d.sequence)
            except InfrastructureError:
                raise  # says nothing about the event (a data key read timed out): the batch is applied again
            except SymbiError as err:
                await self._reject(conn, d, err)
                continue
            applied += 1
            observe_consumed(name, d.stored_at)
        PROJECTION_EVENTS.labels(name).inc(applied)

    async def _apply(self, conn: Any, d: Delivery) -> None:
        """Apply one event; a rejecting SymbiError leaves nothing written."""
        raw, name = d.raw, self.projection.name
        # Each event is applied as a span of the trace it carries (the command that appended it).
        with continue_trace(
            f"project {name}",
            raw.headers,
            attributes={"symbi.projection": name, "symbi.subject": raw.subject, "symbi.sequence": d.sequence},
        ):
            if self.projection.checks_before_writes:  # a rejected event has written nothing
                await self.projection.apply(conn, raw)
            else:
                async with conn.transaction():  # savepoint: a rejected event leaves no partial writes
                    await self.projection.apply(conn, raw)

    async def _reject(self, conn: Any, d: Delivery, err: SymbiError) -> None:
        """Record ``d`` as rejected, then pass over it: garbage never stops a read model."""
        name = self.projection.name
        await conn.execute(
            "INSERT INTO symbi_projection_rejects (name, sequence, subject, code, message)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            name,
            d.sequence,
            d.subject,
            err.code,
            err.message,
        )
        REJECTED_EVENTS.labels(name, err.code).inc()
        SECURITY_EVENTS.labels("rejected_event").inc()
        log.warning("event rejected", projection=name, sequence=d.sequence, subject=d.subject, error=err.message)


__all__ = ["REJECTS_SCHEMA", "Projection", "ProjectionRunner", "wait_for_position"]
