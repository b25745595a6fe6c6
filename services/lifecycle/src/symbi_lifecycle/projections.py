"""The agent registry read model in PostgreSQL (schema ``lifecycle``) and the queries over it.

``lifecycle.agents`` holds one row per agent, computed by folding the agent's events with the same
pure :func:`~symbi_lifecycle.domain.apply` the write side uses, so the read model cannot drift from
the aggregate. ``lifecycle.agent_events`` holds the verified, decrypted history.

Every message is opened with :meth:`EventStore.open_one` (signature, authorised signer, decryption)
and must extend the row's chain (aggregate version + 1, ``prev_hash`` = hash of the previous event):
a forged, garbled or out-of-chain message raises a :class:`SymbiError`, which the
:class:`~symbi_common.projection.ProjectionRunner` records as a reject and skips. A message whose
version is already applied is a redelivery and is ignored.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
from symbi_common.errors import BadRequest, BrokenChain, IntegrityError, NotFound, VersionGap
from symbi_common.eventstore import EventStore
from symbi_common.streams import RawMessage
from symbi_contracts.lifecycle.config import AgentConfig, ConfigIssue
from symbi_contracts.lifecycle.events import AGGREGATE_TYPE, CODEC, AgentStatus

from symbi_lifecycle.domain import AgentState, apply, initial

PROJECTION_NAME = "lifecycle_agents"

SCHEMA = (
    "CREATE SCHEMA IF NOT EXISTS lifecycle",
    """CREATE TABLE IF NOT EXISTS lifecycle.agents (
        id text PRIMARY KEY,
        name text NOT NULL,
        version text NOT NULL,
        state text NOT NULL,
        config jsonb NOT NULL,
        errors jsonb NOT NULL DEFAULT '[]',
        current_task text,
        suspension_reason text,
        termination_reason text,
        tasks_completed integer NOT NULL DEFAULT 0,
        aggregate_version bigint NOT NULL,
        last_sequence bigint NOT NULL,
        last_hash bytea NOT NULL,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS agents_state_id ON lifecycle.agents (state, id)",
    "CREATE INDEX IF NOT EXISTS agents_name_id ON lifecycle.agents (name, id)",
    """CREATE TABLE IF NOT EXISTS lifecycle.agent_events (
        agent_id text NOT NULL,
        aggregate_version bigint NOT NULL,
        sequence bigint NOT NULL UNIQUE,
        event_id text NOT NULL UNIQUE,
        event_type text NOT NULL,
        occurred_at timestamptz NOT NULL,
        producer text NOT NULL,
        correlation_id text,
        causation_id text,
        payload jsonb NOT NULL,
        PRIMARY KEY (agent_id, aggregate_version))""",
)

_json = msgspec.json.Encoder()
_config_dec = msgspec.json.Decoder(AgentConfig)
_issues_dec = msgspec.json.Decoder(tuple[ConfigIssue, ...])


def from_ns(ns: int) -> dt.datetime:
    """A UTC datetime from an event header's Unix nanoseconds."""
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)


class AgentView(msgspec.Struct, kw_only=True):
    """An agent as the API shows it. ``sequence`` is the stream sequence of its latest event."""

    id: str
    name: str
    version: str
    state: AgentStatus
    config: AgentConfig
    errors: tuple[ConfigIssue, ...] = ()
    current_task: str | None = None
    suspension_reason: str | None = None
    termination_reason: str | None = None
    tasks_completed: int = 0
    aggregate_version: int = 0
    sequence: int = 0
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @classmethod
    def of(
        cls,
        state: AgentState,
        *,
        version: int,
        sequence: int,
        created_at: dt.datetime | None = None,
        updated_at: dt.datetime | None = None,
    ) -> AgentView:
        """The view of an aggregate state (the write path answers with this)."""
        assert state.status is not None, "only registered agents have a view"
        assert state.config is not None
        return cls(
            id=state.agent_id,
            name=state.config.name,
            version=state.config.version,
            state=state.status,
            config=state.config,
            errors=state.errors,
            current_task=state.current_task,
            suspension_reason=state.suspension_reason,
            termination_reason=state.termination_reason,
            tasks_completed=state.tasks_completed,
            aggregate_version=version,
            sequence=sequence,
            created_at=created_at,
            updated_at=updated_at,
        )


class AgentPage(msgspec.Struct, kw_only=True):
    """One page of agents; pass ``next_cursor`` back as ``cursor`` for the next (None: last page)."""

    items: list[AgentView]
    next_cursor: str | None = None


class EventView(msgspec.Struct, kw_only=True):
    """One event of an agent's verified, decrypted history."""

    sequence: int
    aggregate_version: int
    event_id: str
    type: str
    occurred_at: dt.datetime
    producer: str
    correlation_id: str | None
    causation_id: str | None
    data: dict[str, Any]


# The queries are spelled out in full (no string building), so nothing but parameters reaches them.
_SELECT_FOR_UPDATE = """SELECT id, name, version, state, config, errors, current_task, suspension_reason,
    termination_reason, tasks_completed, aggregate_version, last_sequence, created_at, updated_at, last_hash
    FROM lifecycle.agents WHERE id = $1 FOR UPDATE"""
# One round trip per event: the history row and the agent row together.
_UPSERT = """WITH event AS (
        INSERT INTO lifecycle.agent_events (agent_id, aggregate_version, sequence, event_id, event_type,
            occurred_at, producer, correlation_id, causation_id, payload)
        VALUES ($1, $11, $12, $15, $16, $14, $17, $18, $19, $20::jsonb))
    INSERT INTO lifecycle.agents (id, name, version, state, config, errors, current_task, suspension_reason,
        termination_reason, tasks_completed, aggregate_version, last_sequence, last_hash, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9, $10, $11, $12, $13, $14, $14)
    ON CONFLICT (id) DO UPDATE SET name = $2, version = $3, state = $4, config = $5::jsonb, errors = $6::jsonb,
        current_task = $7, suspension_reason = $8, termination_reason = $9, tasks_completed = $10,
        aggregate_version = $11, last_sequence = $12, last_hash = $13, updated_at = $14"""
_SELECT_ONE = """SELECT id, name, version, state, config, errors, current_task, suspension_reason,
    termination_reason, tasks_completed, aggregate_version, last_sequence, created_at, updated_at
    FROM lifecycle.agents WHERE id = $1"""
_SELECT_PAGE = """SELECT id, name, version, state, config, errors, current_task, suspension_reason,
    termination_reason, tasks_completed, aggregate_version, last_sequence, created_at, updated_at
    FROM lifecycle.agents
    WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR name = $2) AND ($3::text IS NULL OR id > $3)
    ORDER BY id LIMIT $4"""


def _state_of(row: asyncpg.Record) -> AgentState:
    return AgentState(
        agent_id=row["id"],
        status=AgentStatus(row["state"]),
        config=_config_dec.decode(row["config"]),
        errors=_issues_dec.decode(row["errors"]),
        current_task=row["current_task"],
        suspension_reason=row["suspension_reason"],
        tasks_completed=row["tasks_completed"],
        termination_reason=row["termination_reason"],
    )


def _view_of(row: asyncpg.Record) -> AgentView:
    return AgentView.of(
        _state_of(row),
        version=row["aggregate_version"],
        sequence=row["last_sequence"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class AgentProjection:
    """Projects ``evt.agent.>`` into ``lifecycle.agents`` and ``lifecycle.agent_events``."""

    name: str = PROJECTION_NAME
    filter_subjects: Sequence[str] = ("evt.agent.>",)
    schema: Sequence[str] = SCHEMA
    #: ``apply`` verifies, reads and checks, and only then writes (one statement): a rejection writes nothing.
    checks_before_writes: bool = True

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def apply(self, conn: Any, message: RawMessage) -> None:
        """Verify, decrypt and apply one stored message inside the runner's transaction."""
        rec = await self.store.open_one(message.data, message.subject, message.sequence, CODEC)
        h = rec.header
        seq, subject = message.sequence, message.subject
        if h.aggregate_type != AGGREGATE_TYPE:
            raise IntegrityError(f"a {h.aggregate_type} event on an agent subject", sequence=seq, subject=subject)
        row = await conn.fetchrow(_SELECT_FOR_UPDATE, h.aggregate_id)
        applied = int(row["aggregate_version"]) if row is not None else 0
        if h.aggregate_version <= applied:
            return  # a redelivery of an event this row already reflects
        if h.aggregate_version != applied + 1:
            raise VersionGap(
                f"agent event version {h.aggregate_version} does not follow {applied}", sequence=seq, subject=subject
            )
        if h.prev_hash != (bytes(row["last_hash"]) if row is not None else bytes(32)):
            raise BrokenChain(
                f"event {h.event_id} does not link to the agent's previous event", sequence=seq, subject=subject
            )
        try:
            state = apply(_state_of(row) if row is not None else initial(h.aggregate_id), rec.event)
        except IntegrityError as err:
            raise IntegrityError(err.message, sequence=seq, subject=subject) from None
        if state.config is None or state.status is None:
            raise IntegrityError(
                f"agent {h.aggregate_id} has events but was never registered", sequence=seq, subject=subject
            )
        row_values = (
            h.aggregate_id,
            state.config.name,
            state.config.version,
            state.status.value,
            _json.encode(state.config).decode(),
            _json.encode(state.errors).decode(),
            state.current_task,
            state.suspension_reason,
            state.termination_reason,
            state.tasks_completed,
            h.aggregate_version,
            message.sequence,
            rec.hash,
            from_ns(h.occurred_at),
            h.event_id,
            h.event_type,
            h.producer,
            h.correlation_id,
            h.causation_id,
            _json.encode(rec.event).decode(),
        )
        # PostgreSQL cannot store a NUL (text, jsonb): writing one fails the whole batch, over and over, and stops
        # the projection of every agent. Nothing writes one any more, but a stored event may hold one: reject it.
        if any(isinstance(v, str) and _holds_nul(v) for v in row_values):
            raise IntegrityError(
                f"agent event version {h.aggregate_version} holds a NUL character, which the read model cannot store",
                sequence=seq,
                subject=subject,
            )
        await conn.execute(_UPSERT, *row_values)


#: A NUL escaped in JSON text: ``\u0000`` after an even number of backslashes (``\\u0000`` is a backslash and text).
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _holds_nul(text: str) -> bool:
    """Whether ``text`` (a column value, or JSON text of one) holds a NUL character, raw or JSON-escaped."""
    return "\x00" in text or ("\\u0000" in text and _JSON_NUL.search(text) is not None)


# --- queries ---------------------------------------------------------------------------------------


_CURSOR_PREFIX = "agents-after:"


def encode_cursor(agent_id: str) -> str:
    """An opaque cursor for keyset paging after ``agent_id``."""
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + agent_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The agent id a cursor continues after; :class:`BadRequest` if it is not one of ours."""
    try:
        text = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(_CURSOR_PREFIX):
        raise BadRequest("cursor is not a cursor this API returned; start without one", field="cursor")
    return text[len(_CURSOR_PREFIX) :]


async def get_agent(pool: asyncpg.Pool, agent_id: str) -> AgentView:
    """One agent from the read model; :class:`NotFound` if it is not (yet) there."""
    row = await pool.fetchrow(_SELECT_ONE, agent_id)
    if row is None:
        raise NotFound(f"agent {agent_id} is not registered (or not yet projected)", agent_id=agent_id)
    return _view_of(row)


async def list_agents(
    pool: asyncpg.Pool, *, state: AgentStatus | None, name: str | None, limit: int, cursor: str | None
) -> AgentPage:
    """Agents ordered by id, filtered by state and/or name, ``limit`` per page (keyset paging)."""
    after = decode_cursor(cursor) if cursor else None
    rows = await pool.fetch(
        _SELECT_PAGE,
        state.value if state is not None else None,
        name,
        after,
        limit + 1,
    )
    items = [_view_of(r) for r in rows[:limit]]
    more = len(rows) > limit
    return AgentPage(items=items, next_cursor=encode_cursor(items[-1].id) if more and items else None)


async def agent_history(pool: asyncpg.Pool, agent_id: str, *, after_version: int, limit: int) -> list[EventView]:
    """An agent's events after ``after_version``, oldest first; :class:`NotFound` for an unknown agent."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT aggregate_version, sequence, event_id, event_type, occurred_at, producer, correlation_id,
                      causation_id, payload
               FROM lifecycle.agent_events WHERE agent_id = $1 AND aggregate_version > $2
               ORDER BY aggregate_version LIMIT $3""",
            agent_id,
            after_version,
            limit,
        )
        if not rows and not await conn.fetchval("SELECT 1 FROM lifecycle.agents WHERE id = $1", agent_id):
            raise NotFound(f"agent {agent_id} is not registered (or not yet projected)", agent_id=agent_id)
    return [
        EventView(
            sequence=r["sequence"],
            aggregate_version=r["aggregate_version"],
            event_id=r["event_id"],
            type=r["event_type"],
            occurred_at=r["occurred_at"],
            producer=r["producer"],
            correlation_id=r["correlation_id"],
            causation_id=r["causation_id"],
            data=msgspec.json.decode(r["payload"]),
        )
        for r in rows
    ]
