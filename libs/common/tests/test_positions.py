"""One conformance suite for the position stores that keep the position themselves (PostgreSQL, memory, periodic)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from symbi_common.positions import MemoryPositions, PeriodicPositions, PgPositions, PositionStore

#: A fresh store, and how to open the same one again as a new process would (None: it lives in memory only).
Opened = tuple[PositionStore, Callable[[], Awaitable[PositionStore]] | None]


class Box:
    """Where a :class:`PeriodicPositions` persists (the vector store's position, in the real service)."""

    def __init__(self) -> None:
        self.value = 0
        self.saves = 0

    async def load(self) -> int:
        return self.value

    async def save(self, position: int) -> None:
        self.value = position
        self.saves += 1


@pytest.fixture(params=["postgres", "memory", "periodic"])
async def opened(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[Opened]:
    if request.param == "memory":
        yield MemoryPositions(), None
        return
    if request.param == "periodic":
        box = Box()

        async def periodic() -> PositionStore:
            store = PeriodicPositions(box.load, box.save, interval=0.0)
            await store.load()
            return store

        yield await periodic(), periodic
        return
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None

    async def postgres() -> PositionStore:
        store = PgPositions(pool, "conformance")
        await store.setup()
        return store

    try:
        yield await postgres(), postgres
    finally:
        await pool.close()


async def _a_failed_unit_leaves(
    store: PositionStore,
    reopen: Callable[[], Awaitable[PositionStore]] | None,
    kept: int,
    *,
    advance: int,
    reach: int = 0,
) -> None:
    """A unit that advances to ``advance`` and then fails leaves ``kept``: in this store, and once closed, in a new
    process's."""

    async def failing() -> None:
        async with store.unit(reach=reach) as unit:
            unit.advance(advance)
            raise RuntimeError("the effect failed")

    with pytest.raises(RuntimeError):
        await failing()
    async with store.unit() as unit:
        assert unit.position == kept
    await store.close()
    if reopen is not None:
        assert await (await reopen()).load() == kept


async def test_a_new_store_starts_at_zero(opened: Opened) -> None:
    store, _ = opened
    assert await store.load() == 0
    async with store.unit() as unit:
        assert unit.position == 0


async def test_a_committed_unit_moves_the_position_and_a_later_one_starts_there(opened: Opened) -> None:
    store, reopen = opened
    async with store.unit() as unit:
        unit.advance(7)
        unit.advance(5)  # never backwards
        assert unit.advanced == 7
    async with store.unit() as unit:
        assert unit.position == 7
    await store.idle()
    await store.close()
    if reopen is not None:  # a new process reads what was stored
        assert await (await reopen()).load() == 7


async def test_a_failed_unit_leaves_the_position(opened: Opened) -> None:
    store, reopen = opened
    async with store.unit() as unit:
        unit.advance(3)
    await _a_failed_unit_leaves(store, reopen, 3, advance=9)


async def test_periodic_positions_store_at_most_once_per_interval_and_on_close() -> None:
    box = Box()
    store = PeriodicPositions(box.load, box.save, interval=3600.0)
    assert await store.load() == 0
    for sequence in (1, 2, 3):
        async with store.unit() as unit:
            unit.advance(sequence)
        await store.idle()
    assert (box.value, box.saves) == (1, 1)  # the first idle stores, the next ones wait for the interval
    await store.close()
    assert (box.value, box.saves) == (3, 2)
    await store.close()
    assert box.saves == 2  # nothing moved: nothing written


async def test_a_unit_that_names_its_reach_stores_where_it_ends(opened: Opened) -> None:
    """``reach`` may be written up front; a unit that ends short of it or past it stores where it ended."""
    store, reopen = opened
    async with store.unit(reach=4) as unit:
        unit.advance(4)
    async with store.unit(reach=9) as unit:
        assert unit.position == 4
        unit.advance(6)  # ended short of its reach
    async with store.unit(reach=8) as unit:
        assert unit.position == 6
        unit.advance(11)  # ... or past it
    async with store.unit(reach=3) as unit:  # a batch already applied: nothing moves
        assert unit.position == 11
    await _a_failed_unit_leaves(store, reopen, 11, advance=20, reach=20)


async def test_a_positions_table_from_before_gets_its_previous_column(database_url: str) -> None:
    """A table made before the ``previous`` column existed gets it at setup, its rows kept."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        await pool.execute(
            "CREATE TABLE symbi_projection_positions (name text PRIMARY KEY, position bigint NOT NULL,"
            " updated_at timestamptz NOT NULL DEFAULT now())"
        )
        await pool.execute("INSERT INTO symbi_projection_positions (name, position) VALUES ('old', 41)")
        store = PgPositions(pool, "old")
        await store.setup()
        await store.setup()  # again: nothing to add
        async with store.unit(reach=42) as unit:
            assert unit.position == 41
            unit.advance(42)
        assert await store.load() == 42
    finally:
        await pool.close()
