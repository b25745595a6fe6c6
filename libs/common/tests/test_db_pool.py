"""The asyncpg pool: a released connection comes back clean without asyncpg's full reset query."""

from __future__ import annotations

from symbi_common.db import open_pool


async def test_a_released_connection_has_no_open_transaction_left(database_url: str) -> None:
    pool = await open_pool(database_url, min_size=1, max_size=1)
    try:
        conn = await pool.acquire()
        await conn.execute("BEGIN")  # left open by a caller that went away
        await conn.execute("CREATE TEMP TABLE t (x int)")
        await pool.release(conn)
        async with pool.acquire() as again:  # the same (only) connection
            assert not again.is_in_transaction()
            assert await again.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 't'") == 0  # rolled back
    finally:
        await pool.close()
