"""Historical queries over the event metadata projection (``audit.events``), and payload details for
callers the policy allows to read them.

Metadata (who, what, when, which aggregate, whether it verified) is always returned. Details — the
decrypted payload — only when the caller, named by the ``X-Symbi-Principal`` request header, is
allowed ``data.read`` on ``Data::"<aggregate type>.<aggregate id>"`` by the policy decision point.
A crypto-shredded aggregate's details are gone for everyone (``erased: true``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import nats.errors
from symbi_common.bounds import query_text
from symbi_common.datakeys import DataKeys
from symbi_common.decisions import Condition, DecisionPoint, DecisionRequest, EntityRef
from symbi_common.errors import BadRequest, DataKeyDestroyed, InfrastructureError, IntegrityError, Timeout
from symbi_common.keyring import KeyRegistry
from symbi_common.policy.conditions import redact
from symbi_common.policy.enforcement import AUDIT_EVENT_DETAILS
from symbi_common.policy.hooks import Enforcer
from symbi_common.sealing import decrypt, open_envelope
from symbi_common.streams import EVENTS_STREAM

from symbi_audit.errors import BadQuery

PRINCIPAL_HEADER = "X-Symbi-Principal"
Conditions = tuple[Condition, ...]
MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class EventQuery:
    agent: str | None = None
    event_type: str | None = None
    producer: str | None = None
    aggregate: str | None = None
    correlation_id: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    after: int = 0
    limit: int = 100


def parse_time(value: str | None, field: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadQuery(f"expected an ISO 8601 time, got {value!r}", field=field) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.UTC)
    try:  # in UTC here: a time at the edge of the calendar (0001-01-01+01:00) has no UTC form
        return parsed.astimezone(dt.UTC)
    except OverflowError:
        raise BadQuery(f"{value!r} is out of range in UTC", field=field) from None


def text_param(value: str | None, name: str) -> str | None:
    """A text query parameter (None if absent): no NUL (PostgreSQL refuses it), at most 1024 characters."""
    try:
        return query_text(value, name)
    except BadRequest as exc:
        raise BadQuery(exc.message.removeprefix(f"{name}: "), field=name) from None


def parse_principal(value: str | None) -> EntityRef | None:
    """``User::"alice"`` / ``Agent::"a1"`` (Cedar form) or a bare ``alice`` (a user)."""
    if not value:
        return None
    kind, sep, ident = value.partition("::")
    if not sep:
        return EntityRef(type="User", id=value)
    ident = ident.strip('"')
    if not kind or not ident:
        raise BadQuery(f'expected Type::"id" or a user name, got {value!r}', field=PRINCIPAL_HEADER)
    return EntityRef(type=kind, id=ident)


def _row(r: Any) -> dict[str, Any]:
    out = dict(r)
    out.pop("leaf_index", None)
    for key in ("occurred_at", "stored_at"):
        if out.get(key) is not None:
            out[key] = out[key].isoformat()
    return out


async def list_events(pool: asyncpg.Pool, q: EventQuery) -> tuple[list[dict[str, Any]], int | None]:
    """A page of events (by stream sequence) and the cursor of the next page (None at the end)."""
    if not 1 <= q.limit <= MAX_LIMIT:
        raise BadQuery(f"must be between 1 and {MAX_LIMIT}", field="limit")
    agg_type = agg_id = None
    if q.aggregate:
        agg_type, sep, agg_id = q.aggregate.partition(".")
        if not sep or not agg_id:
            raise BadQuery(f"expected <type>.<id>, got {q.aggregate!r}", field="aggregate")
    rows = await pool.fetch(
        "SELECT * FROM audit.events WHERE sequence > $1"
        " AND ($2::text IS NULL OR aggregate_type = $2) AND ($3::text IS NULL OR aggregate_id = $3)"
        " AND ($4::text IS NULL OR event_type = $4) AND ($5::text IS NULL OR producer = $5)"
        " AND ($6::text IS NULL OR correlation_id = $6)"
        " AND ($7::timestamptz IS NULL OR occurred_at >= $7) AND ($8::timestamptz IS NULL OR occurred_at < $8)"
        " AND ($10::text IS NULL OR agent_id = $10)"
        " ORDER BY sequence LIMIT $9",
        q.after, agg_type, agg_id, q.event_type, q.producer, q.correlation_id, q.since, q.until, q.limit + 1,
        q.agent,
    )  # fmt: skip
    page = [_row(r) for r in rows[: q.limit]]
    return page, (page[-1]["sequence"] if len(rows) > q.limit else None)


async def get_event(pool: asyncpg.Pool, sequence: int) -> dict[str, Any] | None:
    row = await pool.fetchrow("SELECT * FROM audit.events WHERE sequence = $1", sequence)
    return _row(row) if row else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class DetailReader:
    """Reads, re-verifies and decrypts stored events for callers allowed to see their payloads."""

    def __init__(self, nc: Any, registry: KeyRegistry, datakeys: DataKeys, decisions: DecisionPoint) -> None:
        self.nc = nc
        self.registry = registry
        self.datakeys = datakeys
        self.decisions = decisions

    async def allowed(self, principal: EntityRef | None, aggregates: list[str]) -> dict[str, Conditions | None]:
        """For each of ``aggregates`` (``<type>.<id>``): None if ``principal`` may not read it, else the
        conditions to honour (:data:`AUDIT_EVENT_DETAILS` enforces ``redact``; any other condition denies)."""
        unique = sorted(set(aggregates))
        if principal is None or not unique:
            return dict.fromkeys(unique)
        requests = [
            DecisionRequest(principal=principal, action="data.read", resource=EntityRef(type="Data", id=a))
            for a in unique
        ]
        verdicts = await Enforcer.around(self.decisions).decide_batch(requests, AUDIT_EVENT_DETAILS)
        return {a: v.conditions if v.allowed else None for a, v in zip(unique, verdicts, strict=True)}

    async def details(self, sequence: int, conditions: Conditions = ()) -> dict[str, Any]:
        """``{"payload": …}`` decoded from msgpack (``redact`` conditions applied), or ``{"erased": true}`` /
        ``{"error": …}``."""
        try:
            msg = await self.nc.request(
                f"$JS.API.DIRECT.GET.{EVENTS_STREAM}", json.dumps({"seq": sequence}).encode(), timeout=5.0
            )
        except nats.errors.TimeoutError as exc:
            raise Timeout(f"reading stream sequence {sequence} timed out") from exc
        headers = msg.headers or {}
        if headers.get("Status"):
            raise InfrastructureError(f"stream sequence {sequence} cannot be read (status {headers['Status']})")
        try:
            opened = open_envelope(
                bytes(msg.data), subject=headers["Nats-Subject"], sequence=sequence, registry=self.registry
            )
            key = await self.datakeys.by_id(opened.header.data_key_id)
            plaintext = decrypt(opened, key)
        except DataKeyDestroyed:
            return {"erased": True, "payload": None}
        except IntegrityError as err:
            return {"erased": False, "payload": None, "error": err.code}
        payload = _jsonable(msgspec.msgpack.decode(plaintext))
        if conditions:  # the only kind AUDIT_EVENT_DETAILS lets through is redact
            payload = redact({"payload": payload}, conditions)["payload"]
        return {"erased": False, "payload": payload}
