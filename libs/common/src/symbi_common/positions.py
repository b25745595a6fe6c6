"""Where a :class:`~symbi_common.follower.Follower` keeps its stream position: the position store port.

A follower applies each batch inside a *unit* (:meth:`PositionStore.unit`): the unit holds the stored
position (under a lock where the store is shared), the handler applies the batch's effect through it, and
the follower records the new position with :meth:`Unit.advance`. Leaving the unit without an error commits
effect and position together; an error leaves both as they were.

Implementations:

- :class:`PgPositions` — the read models' table ``symbi_projection_positions`` (one row per name): effect and
  position in **one PostgreSQL transaction**, the row locked ``FOR UPDATE`` so replicas serialise.
- :class:`MemoryPositions` — in process only: followers that rebuild their state from the stream's start
  at every start (the scheduler's model, the policy engine, the agent-policy reactor).
- :class:`HandlerPositions` — the handler stores the position itself with its effect, in its own
  transaction (the audit verifier's ``commit_batch``); the store only reads it back.
- :class:`PeriodicPositions` — idempotent effects (upserts and deletes by id) in a store whose position
  write is costly (the vector index flushes its engine): stored at most once per interval and on close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import asyncpg

from symbi_common.db import apply_schema

POSITIONS_TABLE = "symbi_projection_positions"
POSITIONS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS symbi_projection_positions (
        name text PRIMARY KEY,
        position bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now())""",
    # The position before the unit that holds the row now wrote its own (see PgPositions.unit). Added to tables
    # made before it; checked first, so that a start does not take the table's exclusive lock every time.
    """DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                       WHERE table_name = 'symbi_projection_positions' AND column_name = 'previous'
                         AND table_schema = current_schema()) THEN
            ALTER TABLE symbi_projection_positions ADD COLUMN previous bigint;
        END IF;
    END $$""",
)
#: Locks the row and writes the position the unit expects to reach, in one round trip; the position it held
#: comes back (an UPDATE's SET reads the row as it was: under READ COMMITTED, as the replica that held the lock
#: before committed it).
_LOCK_AND_REACH = (
    "UPDATE symbi_projection_positions SET previous = position, position = GREATEST(position, $2),"
    " updated_at = now() WHERE name = $1 RETURNING previous"
)


class Unit:
    """One batch's unit of work: the position it starts from, where its effect goes, the position it reaches."""

    __slots__ = ("advanced", "conn", "position")

    def __init__(self, position: int, conn: Any = None) -> None:
        #: The stored position when the unit began: events at or below it were applied already.
        self.position = position
        #: The PostgreSQL connection (inside the unit's transaction) for :class:`PgPositions`, else None.
        self.conn = conn
        self.advanced = position

    def advance(self, sequence: int) -> None:
        """Record that the events up to ``sequence`` are applied (stored when the unit commits)."""
        self.advanced = max(self.advanced, sequence)


class PositionStore(Protocol):
    """The port: load the position, apply a batch in a unit, persist lazily."""

    async def load(self) -> int:
        """The stored position (0 when nothing was applied yet)."""
        ...

    def unit(self, reach: int = 0) -> AbstractAsyncContextManager[Unit]:
        """A unit of work; the position it reaches is stored when it exits without an error.

        ``reach``: the position the unit is expected to reach (the batch's last sequence), which a store may
        write up front; where the unit ends elsewhere, that is what is stored."""
        ...

    async def idle(self) -> None:
        """Called after every fetch, with or without events: a lazy store may persist now."""
        ...

    async def close(self) -> None:
        """Called when the follower's consumer ends: a lazy store persists what it holds."""
        ...


class MemoryPositions:
    """The position in this process only; a new process starts from ``start``."""

    def __init__(self, start: int = 0) -> None:
        self.position = start

    async def load(self) -> int:
        return self.position

    @contextlib.asynccontextmanager
    async def unit(self, reach: int = 0) -> AsyncIterator[Unit]:
        unit = Unit(self.position)
        yield unit
        self.position = unit.advanced

    async def idle(self) -> None:
        return None

    async def close(self) -> None:
        return None


class PgPositions:
    """Positions in ``symbi_projection_positions`` (the table projections have always used; rows are kept)."""

    def __init__(self, pool: asyncpg.Pool, name: str) -> None:
        self.pool = pool
        self.name = name

    async def setup(self, schema: tuple[str, ...] = ()) -> None:
        """Create the table (and ``schema``, the read model's own) and the position row if missing."""
        await apply_schema(self.pool, (*POSITIONS_SCHEMA, *schema))
        # The row must exist before any batch: batches serialise on its row lock.
        await self.pool.execute(
            "INSERT INTO symbi_projection_positions (name, position) VALUES ($1, 0) ON CONFLICT DO NOTHING", self.name
        )

    async def load(self) -> int:
        row = await self.pool.fetchval("SELECT position FROM symbi_projection_positions WHERE name = $1", self.name)
        return int(row or 0)

    @contextlib.asynccontextmanager
    async def unit(self, reach: int = 0) -> AsyncIterator[Unit]:
        """The row is locked for the unit (replicas serialise) by the statement that also writes ``reach`` to it,
        so a unit that ends there costs no second write."""
        async with self.pool.acquire() as conn, conn.transaction():
            stored = await conn.fetchval(_LOCK_AND_REACH, self.name, reach)
            position = int(stored or 0)
            written = max(position, reach) if stored is not None else 0  # no row yet: nothing was written
            unit = Unit(position, conn)
            yield unit
            if unit.advanced != written:
                await conn.execute(
                    "INSERT INTO symbi_projection_positions (name, position) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
                    self.name,
                    unit.advanced,
                )

    async def idle(self) -> None:
        return None

    async def close(self) -> None:
        return None


class HandlerPositions:
    """The handler stores the position in the same transaction as its effect; ``current`` reads it back."""

    def __init__(self, current: Callable[[], int], reload: Callable[[], Awaitable[None]] | None = None) -> None:
        self.current = current
        self.reload = reload

    async def load(self) -> int:
        if self.reload is not None:
            await self.reload()
        return self.current()

    @contextlib.asynccontextmanager
    async def unit(self, reach: int = 0) -> AsyncIterator[Unit]:
        yield Unit(self.current())

    async def idle(self) -> None:
        return None

    async def close(self) -> None:
        return None


class PeriodicPositions:
    """For idempotent effects: the position is stored by ``save`` at most once per ``interval`` and on close.

    After a crash the follower replays from the last stored position; replaying an idempotent effect
    changes nothing, so each event's effect is in the store once.
    """

    def __init__(
        self, load: Callable[[], Awaitable[int]], save: Callable[[int], Awaitable[None]], *, interval: float
    ) -> None:
        self._load = load
        self._save = save
        self.interval = interval
        self.position = 0
        self.stored = 0
        self._stored_at = float("-inf")  # the first idle stores: loop time may be below the interval (soon after boot)

    async def load(self) -> int:
        self.position = self.stored = await self._load()
        return self.position

    @contextlib.asynccontextmanager
    async def unit(self, reach: int = 0) -> AsyncIterator[Unit]:
        unit = Unit(self.position)
        yield unit
        self.position = unit.advanced

    async def idle(self) -> None:
        await self._persist(force=False)

    async def close(self) -> None:
        await self._persist(force=True)

    async def _persist(self, *, force: bool) -> None:
        now = asyncio.get_running_loop().time()
        if self.position != self.stored and (force or now - self._stored_at >= self.interval):
            position = self.position
            await self._save(position)
            self.stored, self._stored_at = position, now
