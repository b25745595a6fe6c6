"""The audit store's batch write: its rows and position in one transaction, and a batch refused, writing nothing,
once someone else moved the position."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from symbi_audit.store import EVENT_COLUMNS, AuditStore, Batch


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AuditStore]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    s = AuditStore(pool)
    await s.setup()
    try:
        yield s
    finally:
        await pool.close()


def _batch(first: int, count: int) -> Batch:
    at = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    events: list[tuple[Any, ...]] = [
        (seq, seq - 1, f"evt.agent.a{seq}", "agent", f"a{seq}", 1, "agent.registered", "lifecycle", "k1",
         f"e{seq}", "c", "d", "dk", at, at, seq % 2 == 0, f"a{seq}")
        for seq in range(first, first + count)
    ]  # fmt: skip
    nodes = [(0, seq - 1, bytes([seq % 256]) * 32) for seq in range(first, first + count)]
    return Batch(first + count - 1, first + count - 1, nodes, events, [], {}, [], [])


async def _rows(store: AuditStore) -> tuple[list[Any], list[Any]]:
    columns = ", ".join(EVENT_COLUMNS)
    events = await store.pool.fetch(f"SELECT {columns} FROM audit.events ORDER BY sequence")
    nodes = await store.pool.fetch("SELECT level, idx, hash FROM audit.nodes ORDER BY level, idx")
    return [tuple(r) for r in events], [tuple(r) for r in nodes]


async def test_batches_write_their_rows_and_move_the_position(store: AuditStore) -> None:
    small, large = _batch(1, 3), _batch(4, 64)
    assert await store.commit_batch(small, expected_sequence=0)
    assert await store.commit_batch(large, expected_sequence=3)
    events, nodes = await _rows(store)
    assert events == [tuple(e) for e in (*small.events, *large.events)]
    assert nodes == [tuple(n) for n in (*small.nodes, *large.nodes)]
    assert await store.pool.fetchrow("SELECT sequence, tree_size FROM audit.position") == (3 + 64,) * 2


async def test_a_batch_behind_a_moved_position_writes_nothing(store: AuditStore) -> None:
    assert await store.commit_batch(_batch(1, 2), expected_sequence=0)
    assert not await store.commit_batch(_batch(3, 2), expected_sequence=1)  # another writer is past 1
    events, _ = await _rows(store)
    assert [e[0] for e in events] == [1, 2]
    assert await store.pool.fetchval("SELECT sequence FROM audit.position") == 2
