"""PostgreSQL access: the asyncpg pool and schema set-up for read models."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from symbi_common.errors import ConfigError, InfrastructureError


async def _reset_released(conn: asyncpg.Connection) -> None:
    """Nothing beyond asyncpg's own minimal reset, which runs first on every release with a custom
    reset (it rolls back an open transaction and drops listeners).

    asyncpg's default reset also sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``,
    one round trip per pool use (every projection batch, every audit commit). Symbi keeps no session
    state on pooled connections — no session advisory locks (only ``pg_advisory_xact_lock``), no LISTEN,
    no cursors outside a transaction, no ``SET`` — so none of it is ever there to reset."""
    del conn


async def open_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open a pool; fails fast with a clear error if the database cannot be reached."""
    if not url:
        raise ConfigError("no database URL; set SYMBI_DATABASE_URL or [database] url", setting="database.url")
    try:
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, command_timeout=30, reset=_reset_released
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise InfrastructureError(f"cannot connect to PostgreSQL: {exc}") from exc
    if pool is None:  # pragma: no cover - asyncpg returns a pool or raises
        raise InfrastructureError("cannot connect to PostgreSQL")
    return pool


async def apply_schema(pool: asyncpg.Pool, statements: Sequence[str]) -> None:
    """Run idempotent DDL (``CREATE … IF NOT EXISTS``) in one transaction, serialised by an advisory lock."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7262001)")
        for stmt in statements:
            await conn.execute(stmt)
