"""The audit service's PostgreSQL state (schema ``audit``): position, tree, chain tips, findings, checkpoints,
the event metadata projection and erasures.

Everything the verifier learns from one batch of events is written in one transaction with the new
position (:meth:`AuditStore.commit_batch`), so after a crash the stored state is exactly the state
after some whole batch and the verifier continues from there.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from symbi_common.db import apply_schema
from symbi_common.sealing import ChainTip
from symbi_tlog.merkle import Node, range_nodes
from symbi_tlog.rules import AggregateTip, Finding, VerifierState

from symbi_audit.errors import ProofUnavailable

SCHEMA = (
    "CREATE SCHEMA IF NOT EXISTS audit",
    """CREATE TABLE IF NOT EXISTS audit.position (
        name text PRIMARY KEY,
        sequence bigint NOT NULL,
        tree_size bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS audit.nodes (
        level smallint NOT NULL,
        idx bigint NOT NULL,
        hash bytea NOT NULL,
        PRIMARY KEY (level, idx))""",
    """CREATE TABLE IF NOT EXISTS audit.tips (
        subject text PRIMARY KEY,
        sequence bigint NOT NULL,
        version bigint NOT NULL,
        hash bytea NOT NULL,
        pending_version bigint)""",
    """CREATE TABLE IF NOT EXISTS audit.events (
        sequence bigint PRIMARY KEY,
        leaf_index bigint NOT NULL UNIQUE,
        subject text NOT NULL,
        aggregate_type text,
        aggregate_id text,
        aggregate_version bigint,
        event_type text,
        producer text,
        signing_key_id text,
        event_id text,
        correlation_id text,
        causation_id text,
        data_key_id text,
        occurred_at timestamptz,
        stored_at timestamptz,
        verified boolean NOT NULL,
        agent_id text)""",
    "CREATE INDEX IF NOT EXISTS events_aggregate ON audit.events (aggregate_type, aggregate_id, sequence)",
    "CREATE INDEX IF NOT EXISTS events_agent ON audit.events (agent_id, sequence)",
    "CREATE INDEX IF NOT EXISTS events_type ON audit.events (event_type, sequence)",
    "CREATE INDEX IF NOT EXISTS events_producer ON audit.events (producer, sequence)",
    "CREATE INDEX IF NOT EXISTS events_time ON audit.events (occurred_at)",
    "CREATE INDEX IF NOT EXISTS events_stored ON audit.events (stored_at)",
    # reports select by the event's own time, or the time it was stored where it states none
    "CREATE INDEX IF NOT EXISTS events_report_time ON audit.events ((coalesce(occurred_at, stored_at)))",
    "CREATE INDEX IF NOT EXISTS events_correlation ON audit.events (correlation_id)",
    """CREATE TABLE IF NOT EXISTS audit.findings (
        id bigserial PRIMARY KEY,
        sequence bigint NOT NULL,
        subject text NOT NULL,
        kind text NOT NULL,
        reason text NOT NULL,
        found_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (sequence, kind))""",
    """CREATE TABLE IF NOT EXISTS audit.checkpoints (
        size bigint PRIMARY KEY,
        root bytea NOT NULL,
        last_sequence bigint NOT NULL,
        note text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        published boolean NOT NULL DEFAULT false)""",
    """CREATE TABLE IF NOT EXISTS audit.erasures (
        erasure_id text PRIMARY KEY,
        aggregate text NOT NULL,
        requested_by text NOT NULL,
        reason text NOT NULL,
        requested_sequence bigint,
        requested_at timestamptz,
        executed_sequence bigint,
        executed_at timestamptz)""",
)

POSITION = "verifier"

EVENT_COLUMNS = (
    "sequence", "leaf_index", "subject", "aggregate_type", "aggregate_id", "aggregate_version", "event_type",
    "producer", "signing_key_id", "event_id", "correlation_id", "causation_id", "data_key_id", "occurred_at",
    "stored_at", "verified", "agent_id",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    root: bytes
    last_sequence: int
    note: str
    created_at: dt.datetime
    published: bool


def _checkpoint(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(
        int(row["size"]), bytes(row["root"]), int(row["last_sequence"]), str(row["note"]), row["created_at"],
        bool(row["published"]),
    )  # fmt: skip


@dataclass(slots=True)
class Batch:
    """What one batch of events changes, written in one transaction."""

    sequence: int
    tree_size: int
    nodes: list[tuple[int, int, bytes]]
    events: list[tuple[Any, ...]]
    findings: list[Finding]
    tips: dict[str, AggregateTip]
    checkpoints: list[tuple[int, bytes, int, str]]
    erasures: list[tuple[str, str, Any]]
    """(kind ``requested``/``executed``, erasure id, values) rows for :meth:`AuditStore._erasure`."""


class AuditStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def setup(self) -> None:
        await apply_schema(self.pool, SCHEMA)
        await self.pool.execute(
            "INSERT INTO audit.position (name, sequence, tree_size) VALUES ($1, 0, 0) ON CONFLICT DO NOTHING", POSITION
        )

    async def load_state(self) -> tuple[VerifierState, int, list[bytes]]:
        """The rules' state, the tree size and the tree's frontier, as of the last committed batch."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT sequence, tree_size FROM audit.position WHERE name = $1", POSITION)
            assert row is not None, "setup() creates the position row"
            sequence, size = int(row["sequence"]), int(row["tree_size"])
            tips: dict[str, AggregateTip] = {}
            for t in await conn.fetch("SELECT subject, sequence, version, hash, pending_version FROM audit.tips"):
                pending = t["pending_version"]
                tips[t["subject"]] = AggregateTip(
                    ChainTip(int(t["sequence"]), int(t["version"]), bytes(t["hash"])),
                    None if pending is None else int(pending),
                )
            frontier = await self._nodes(conn, range_nodes(0, size))
        return VerifierState(sequence, tips), size, [frontier[n] for n in range_nodes(0, size)]

    async def _nodes(self, conn: Any, nodes: Sequence[Node]) -> dict[Node, bytes]:
        if not nodes:
            return {}
        rows = await conn.fetch(
            "SELECT n.level, n.idx, n.hash FROM audit.nodes n"
            " JOIN unnest($1::smallint[], $2::bigint[]) AS w(level, idx) ON n.level = w.level AND n.idx = w.idx",
            [lvl for lvl, _ in nodes],
            [idx for _, idx in nodes],
        )
        found = {(int(r["level"]), int(r["idx"])): bytes(r["hash"]) for r in rows}
        missing = [n for n in nodes if n not in found]
        if missing:
            raise ProofUnavailable(f"the audit tree has no node {missing[0]} yet")
        return found

    async def nodes(self, nodes: Sequence[Node]) -> dict[Node, bytes]:
        async with self.pool.acquire() as conn:
            return await self._nodes(conn, nodes)

    async def agent_of_task(self, task_id: str) -> str | None:
        """The agent recorded for an earlier event of task ``task_id`` (its own or its execution's), if any."""
        value = await self.pool.fetchval(
            "SELECT agent_id FROM audit.events WHERE aggregate_type IN ('task', 'execution') AND aggregate_id = $1"
            " AND agent_id IS NOT NULL ORDER BY sequence LIMIT 1",
            task_id,
        )
        return str(value) if value is not None else None

    async def commit_batch(self, batch: Batch, *, expected_sequence: int) -> bool:
        """Write ``batch`` if the stored position is still ``expected_sequence``; False if someone moved it."""
        async with self.pool.acquire() as conn, conn.transaction():
            # Lock, check and move the position in one statement: no row matches once someone else moved it
            # (waiting on a writer that holds the row, it is read again as that writer committed it).
            moved = await conn.fetchval(
                "UPDATE audit.position SET sequence = $3, tree_size = $4, updated_at = now()"
                " WHERE name = $1 AND sequence = $2 RETURNING true",
                POSITION,
                expected_sequence,
                batch.sequence,
                batch.tree_size,
            )
            if moved is None:
                return False
            if batch.nodes:
                await conn.copy_records_to_table("nodes", schema_name="audit", records=batch.nodes)
            if batch.events:
                await conn.copy_records_to_table(
                    "events", schema_name="audit", records=batch.events, columns=list(EVENT_COLUMNS)
                )
            if batch.findings:
                await conn.executemany(
                    "INSERT INTO audit.findings (sequence, subject, kind, reason) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT DO NOTHING",
                    [(f.sequence, f.subject, f.kind, f.reason) for f in batch.findings],
                )
            if batch.tips:
                await conn.executemany(
                    "INSERT INTO audit.tips (subject, sequence, version, hash, pending_version) VALUES ($1, $2, $3, $4, $5)"
                    " ON CONFLICT (subject) DO UPDATE SET sequence = EXCLUDED.sequence, version = EXCLUDED.version,"
                    " hash = EXCLUDED.hash, pending_version = EXCLUDED.pending_version",
                    [(s, t.tip.sequence, t.tip.version, t.tip.hash, t.pending_version) for s, t in batch.tips.items()],
                )
            if batch.checkpoints:
                await conn.executemany(
                    "INSERT INTO audit.checkpoints (size, root, last_sequence, note) VALUES ($1, $2, $3, $4)",
                    batch.checkpoints,
                )
            for kind, erasure_id, values in batch.erasures:
                await self._erasure(conn, kind, erasure_id, values)
        return True

    async def _erasure(self, conn: Any, kind: str, erasure_id: str, values: Any) -> None:
        if kind == "requested":
            aggregate, requested_by, reason, sequence, at = values
            await conn.execute(
                "INSERT INTO audit.erasures (erasure_id, aggregate, requested_by, reason, requested_sequence,"
                " requested_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (erasure_id) DO UPDATE SET"
                " requested_sequence = EXCLUDED.requested_sequence, requested_at = EXCLUDED.requested_at",
                erasure_id, aggregate, requested_by, reason, sequence, at,
            )  # fmt: skip
        else:
            aggregate, sequence, at = values
            await conn.execute(
                "INSERT INTO audit.erasures (erasure_id, aggregate, requested_by, reason, executed_sequence,"
                " executed_at) VALUES ($1, $2, '', '', $3, $4) ON CONFLICT (erasure_id) DO UPDATE SET"
                " executed_sequence = EXCLUDED.executed_sequence, executed_at = EXCLUDED.executed_at",
                erasure_id, aggregate, sequence, at,
            )  # fmt: skip

    async def add_checkpoint(self, size: int, root: bytes, last_sequence: int, note: str) -> None:
        await self.pool.execute(
            "INSERT INTO audit.checkpoints (size, root, last_sequence, note) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING",
            size, root, last_sequence, note,
        )  # fmt: skip

    async def unpublished_checkpoints(self) -> list[StoredCheckpoint]:
        rows = await self.pool.fetch("SELECT * FROM audit.checkpoints WHERE NOT published ORDER BY size")
        return [_checkpoint(r) for r in rows]

    async def mark_published(self, size: int) -> None:
        await self.pool.execute("UPDATE audit.checkpoints SET published = true WHERE size = $1", size)

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        if size is None:
            row = await self.pool.fetchrow("SELECT * FROM audit.checkpoints ORDER BY size DESC LIMIT 1")
        else:
            row = await self.pool.fetchrow("SELECT * FROM audit.checkpoints WHERE size = $1", size)
        return _checkpoint(row) if row else None

    async def checkpoint_covering(self, sequence: int) -> StoredCheckpoint | None:
        """The first checkpoint that covers stream ``sequence`` (else None)."""
        row = await self.pool.fetchrow(
            "SELECT * FROM audit.checkpoints WHERE last_sequence >= $1 ORDER BY size LIMIT 1", sequence
        )
        return _checkpoint(row) if row else None

    async def checkpoints(self, *, limit: int = 100, before: int | None = None) -> list[StoredCheckpoint]:
        rows = await self.pool.fetch(
            "SELECT * FROM audit.checkpoints WHERE $1::bigint IS NULL OR size < $1 ORDER BY size DESC LIMIT $2",
            before,
            limit,
        )
        return [_checkpoint(r) for r in rows]

    async def sequence_of_leaf(self, leaf_index: int) -> int | None:
        value = await self.pool.fetchval("SELECT sequence FROM audit.events WHERE leaf_index = $1", leaf_index)
        return None if value is None else int(value)

    async def revoke_after(self, key_id: str, cutoff: int | None, reason: str) -> list[int]:
        """Mark the events ``key_id`` signed after stream sequence ``cutoff`` (None: all) unverified, each with a
        ``key_revoked`` finding (in one transaction); the sequences that changed."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "UPDATE audit.events SET verified = false WHERE signing_key_id = $1 AND sequence > $2 AND verified"
                " RETURNING sequence, subject",
                key_id,
                cutoff or 0,
            )
            await conn.executemany(
                "INSERT INTO audit.findings (sequence, subject, kind, reason) VALUES ($1, $2, 'key_revoked', $3)"
                " ON CONFLICT DO NOTHING",
                [(r["sequence"], r["subject"], reason) for r in rows],
            )
        return sorted(int(r["sequence"]) for r in rows)

    async def add_findings(self, findings: Sequence[Finding]) -> None:
        await self.pool.executemany(
            "INSERT INTO audit.findings (sequence, subject, kind, reason) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            [(f.sequence, f.subject, f.kind, f.reason) for f in findings],
        )

    async def replace_note(self, size: int, note: str) -> None:
        """The checkpoint's note with the witnesses' cosignatures added."""
        await self.pool.execute("UPDATE audit.checkpoints SET note = $2 WHERE size = $1", size, note)

    async def leaf_index(self, sequence: int) -> int | None:
        value = await self.pool.fetchval("SELECT leaf_index FROM audit.events WHERE sequence = $1", sequence)
        return None if value is None else int(value)

    async def findings(self, *, kind: str | None = None, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT id, sequence, subject, kind, reason, found_at FROM audit.findings"
            " WHERE id > $1 AND ($2::text IS NULL OR kind = $2) ORDER BY id LIMIT $3",
            after,
            kind,
            limit,
        )
        return [{**dict(r), "found_at": r["found_at"].isoformat()} for r in rows]

    async def status(self) -> dict[str, Any]:
        row = await self.pool.fetchrow("SELECT sequence, tree_size FROM audit.position WHERE name = $1", POSITION)
        assert row is not None, "setup() creates the position row"
        findings = await self.pool.fetchval("SELECT count(*) FROM audit.findings")
        return {"sequence": int(row["sequence"]), "tree_size": int(row["tree_size"]), "findings": int(findings)}
