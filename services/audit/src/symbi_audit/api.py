"""The audit service's HTTP API (under ``/v1/audit``) and NATS commands (``cmd.audit.*``).

HTTP::

    GET  /v1/audit/status                                   position, tree size, findings, latest checkpoint, critical
    GET  /v1/audit/findings?kind=&after=&limit=             typed findings (paged by id)
    GET  /v1/audit/events?agent=&event_type=&producer=&aggregate=&correlation_id=&since=&until=
                         &after=&limit=&details=&min_sequence=
    GET  /v1/audit/events/{sequence}?details=
    GET  /v1/audit/stream?agent=&event_type=                 Server-Sent Events, one ``event`` per verified event;
                                                            ends (``unauthenticated``) once the token is revoked or expires
    GET  /v1/audit/checkpoints?limit=&before=               signed checkpoints, newest first
    GET  /v1/audit/checkpoints/latest, /checkpoints/{size}  the signed note (text/plain)
    GET  /v1/audit/proofs/inclusion?sequence=&size=         RFC 6962 inclusion proof (size: default latest checkpoint)
    GET  /v1/audit/proofs/consistency?from=&to=             RFC 6962 consistency proof between two tree sizes
    GET  /v1/audit/reports/{hipaa|gdpr|sox|models}?since=&until=&format=json|csv
    POST /v1/audit/reports/custom?since=&until=&format=     body: the framework in TOML
    POST /v1/audit/erasures                                 {"aggregate": "agent.a1", "reason"?} crypto-shred

The caller is named by the ``X-Symbi-Principal`` header (``User::"alice"`` or ``alice``) — an operator may
name only itself, an admin anyone (``operator_auth.acting_for``); event
details (decrypted payloads) are returned only where the policy allows it ``data.read`` on
``Data::"<type>.<id>"``, and an erasure needs ``data.write`` (context ``purpose = "erasure"``) on the same resource.

NATS: ``cmd.audit.status``, ``cmd.audit.findings`` ({"kind"?, "after"?, "limit"?}),
``cmd.audit.checkpoint`` ({"size"?}) and ``cmd.audit.erase`` (the erasure body; the sender is the operator of
the ``Authorization: Bearer <operator token>`` header it carries, which must be allowed ``api.admin`` —
:mod:`symbi_audit.command_auth`).
Findings are also published on ``audit.alert`` and verified events on ``audit.live.<type>.<id>.<event type>``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from symbi_common.bounds import INT64_MAX, check_ints, check_json_depth, check_no_nul, parse_int
from symbi_common.commands import CommandMeta, CommandServer
from symbi_common.errors import BadRequest, NotFound
from symbi_common.openapi import FLAG, INT64, TEXT, TIME, json_body, query_params
from symbi_common.operator_auth import OperatorGuard, acting_for
from symbi_common.streams import EVENTS_STREAM

from symbi_audit.application import AuditService
from symbi_audit.command_auth import command_operator, own_principal
from symbi_audit.erasure import EraseRequest
from symbi_audit.errors import AuditBehind, BadQuery
from symbi_audit.queries import (
    PRINCIPAL_HEADER,
    EventQuery,
    get_event,
    list_events,
    parse_principal,
    parse_time,
    text_param,
)
from symbi_audit.reports import BUILT_IN, Framework, parse_framework, report_csv

router = APIRouter(prefix="/v1/audit", tags=["audit"])
#: How long a read with ``min_sequence`` waits for the audit log to reach it before a 503 ``audit_behind``.
WAIT_S = 5.0
_json = msgspec.json.Encoder()


def _service(request: Request) -> AuditService:
    service: AuditService = request.app.state.audit
    return service


def _reply(value: Any, status: int = 200) -> Response:
    return Response(_json.encode(value), status_code=status, media_type="application/json")


def _int(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse_int(raw, name)
    except BadRequest:
        raise BadQuery(f"expected a 64-bit integer, got {raw!r}", field=name) from None


def _with_principal(extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` plus the optional ``X-Symbi-Principal`` header (who the caller acts for)."""
    header = {"name": PRINCIPAL_HEADER, "in": "header", "required": False, "schema": TEXT}
    return {**extra, "parameters": [*extra.get("parameters", ()), header]}


_REPORT_QUERY = query_params(since=TIME, until=TIME, format={"type": "string", "enum": ["json", "csv"]})


def _text(request: Request, name: str) -> str | None:
    return text_param(request.query_params.get(name), name)


def _limit(request: Request, default: int = 100, most: int = 1000) -> int:
    """The ``limit`` query parameter: 1 to ``most`` (default ``default``)."""
    limit = _int(request, "limit", default) or default
    if not 1 <= limit <= most:
        raise BadQuery(f"must be between 1 and {most}, got {limit}", field="limit")
    return limit


def _bool(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


async def _status(service: AuditService) -> dict[str, Any]:
    status = await service.store.status()
    latest = await service.store.checkpoint()
    status["checkpoint"] = None if latest is None else {"size": latest.size, "note": latest.note}
    status["critical"] = dict(service.guard.critical) if service.guard is not None else {}
    return status


@router.get("/status")
async def status(request: Request) -> Response:
    return _reply(await _status(_service(request)))


@router.get("/findings", openapi_extra=query_params(kind=TEXT, after=INT64, limit=INT64))
async def findings(request: Request) -> Response:
    service = _service(request)
    rows = await service.store.findings(
        kind=_text(request, "kind"),
        after=_int(request, "after", 0) or 0,
        limit=_limit(request),
    )
    return _reply({"items": rows})


async def _with_details(service: AuditService, request: Request, rows: list[dict[str, Any]]) -> None:
    principal = parse_principal(acting_for(request, request.headers.get(PRINCIPAL_HEADER)))
    aggregates = [f"{r['aggregate_type']}.{r['aggregate_id']}" for r in rows if r.get("aggregate_type")]
    allowed = await service.reader.allowed(principal, aggregates)
    for r in rows:
        agg = f"{r['aggregate_type']}.{r['aggregate_id']}" if r.get("aggregate_type") else None
        conditions = allowed.get(agg) if agg is not None else None
        if conditions is not None:
            r["details"] = await service.reader.details(int(r["sequence"]), conditions)
        else:
            r["details"] = None
            r["details_withheld"] = True


async def _wait(service: AuditService, request: Request) -> None:
    min_seq = _int(request, "min_sequence")
    if min_seq is None:
        return
    if min_seq > service.runner.position:
        # A position past the stream's end was never answered by a write: refuse it rather than wait for it.
        last = (await service.runner.js.stream_info(EVENTS_STREAM)).state.last_seq
        if min_seq > last:
            raise BadQuery(
                f"{min_seq} is past the end of the event stream (at {last}); pass the sequence a write answered with",
                field="min_sequence",
            )
    if not await service.runner.wait_for(min_seq, WAIT_S):
        raise AuditBehind(wanted=min_seq, position=service.runner.position, waited_s=WAIT_S)


@router.get(
    "/events",
    openapi_extra=_with_principal(
        query_params(
            agent=TEXT,
            event_type=TEXT,
            producer=TEXT,
            aggregate=TEXT,
            correlation_id=TEXT,
            since=TIME,
            until=TIME,
            after=INT64,
            limit=INT64,
            details=FLAG,
            min_sequence=INT64,
        )
    ),
)
async def events(request: Request) -> Response:
    service = _service(request)
    await _wait(service, request)
    p = request.query_params
    query = EventQuery(
        agent=_text(request, "agent"),
        event_type=_text(request, "event_type"),
        producer=_text(request, "producer"),
        aggregate=_text(request, "aggregate"),
        correlation_id=_text(request, "correlation_id"),
        since=parse_time(p.get("since"), "since"),
        until=parse_time(p.get("until"), "until"),
        after=_int(request, "after", 0) or 0,
        limit=_int(request, "limit", 100) or 0,
    )
    rows, cursor = await list_events(service.pool, query)
    if _bool(request, "details"):
        await _with_details(service, request, rows)
    return _reply({"items": rows, "next_after": cursor})


def _path_int(value: str, name: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 30 or int(value) > INT64_MAX:
        raise BadQuery(f"expected a positive 64-bit integer, got {value!r}", field=name)
    return int(value)


@router.get("/events/{sequence}", openapi_extra=_with_principal(query_params(details=FLAG, min_sequence=INT64)))
async def event(request: Request, sequence: str) -> Response:
    seq = _path_int(sequence, "sequence")
    service = _service(request)
    await _wait(service, request)
    row = await get_event(service.pool, seq)
    if row is None:
        raise NotFound(f"stream sequence {seq} is not in the audit log (yet)")
    if _bool(request, "details"):
        await _with_details(service, request, [row])
    return _reply(row)


@router.get("/checkpoints", openapi_extra=query_params(limit=INT64, before=INT64))
async def checkpoints(request: Request) -> Response:
    service = _service(request)
    rows = await service.store.checkpoints(limit=_limit(request), before=_int(request, "before"))
    return _reply(
        {
            "items": [
                {
                    "size": c.size,
                    "last_sequence": c.last_sequence,
                    "created_at": c.created_at.isoformat(),
                    "note": c.note,
                }
                for c in rows
            ]
        }
    )


@router.get("/checkpoints/latest", response_class=PlainTextResponse)
async def latest_checkpoint(request: Request) -> PlainTextResponse:
    cp = await _service(request).store.checkpoint()
    if cp is None:
        raise NotFound("no checkpoint yet")
    return PlainTextResponse(cp.note)


@router.get("/checkpoints/{size}", response_class=PlainTextResponse)
async def checkpoint(request: Request, size: str) -> PlainTextResponse:
    cp = await _service(request).store.checkpoint(_path_int(size, "size"))
    if cp is None:
        raise NotFound(f"no checkpoint of tree size {size}")
    return PlainTextResponse(cp.note)


@router.get("/proofs/inclusion", openapi_extra=query_params(sequence=INT64, size=INT64))
async def inclusion(request: Request) -> Response:
    sequence = _int(request, "sequence")
    if sequence is None:
        raise BadQuery("is required", field="sequence")
    return _reply(await _service(request).inclusion_proof(sequence, _int(request, "size")))


@router.get("/proofs/consistency", openapi_extra=query_params(**{"from": INT64, "to": INT64}))
async def consistency(request: Request) -> Response:
    old, new = _int(request, "from"), _int(request, "to")
    if old is None or new is None:
        raise BadQuery("from and to are required", field="from" if old is None else "to")
    return _reply(await _service(request).consistency_proof(old, new))


async def _report(request: Request, framework: Framework) -> Response:
    p = request.query_params
    since = parse_time(p.get("since"), "since") or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    until = parse_time(p.get("until"), "until") or dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    fmt = p.get("format", "json")
    if fmt not in ("json", "csv"):
        raise BadQuery(f"expected json or csv, got {fmt!r}", field="format")
    report = await _service(request).report(framework, since, until)
    if fmt == "csv":
        return Response(report_csv(report), media_type="text/csv")
    return _reply(report)


@router.get("/reports/{framework}", openapi_extra=_REPORT_QUERY)
async def builtin_report(request: Request, framework: str) -> Response:
    if framework not in BUILT_IN:
        raise NotFound(f"no built-in framework {framework!r}; known: {', '.join(BUILT_IN)} (or POST reports/custom)")
    return await _report(request, BUILT_IN[framework])


@router.post(
    "/reports/custom",
    openapi_extra={
        **_REPORT_QUERY,
        "requestBody": {"required": True, "content": {"application/toml": {"schema": {"type": "string"}}}},
    },
)
async def custom_report(request: Request) -> Response:
    return await _report(request, parse_framework((await request.body()).decode("utf-8", "replace")))


def _decode(body: bytes, type_: type[Any]) -> Any:
    try:
        decoded = msgspec.json.decode(check_json_depth(body) or b"{}", type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRequest(f"request body: {exc}") from None
    check_ints(decoded)
    check_no_nul(decoded)  # an erasure's reason reaches PostgreSQL through the verifier, which could not store it
    return decoded


@router.post("/erasures", openapi_extra=_with_principal(json_body(EraseRequest)))
async def erasures(request: Request) -> Response:
    body = _decode(await request.body(), EraseRequest)
    principal = parse_principal(acting_for(request, request.headers.get(PRINCIPAL_HEADER)))
    result = await _service(request).erase(body, principal)
    return _reply(result, status=201)


# --- NATS commands ---------------------------------------------------------------------------------


class FindingsRequest(msgspec.Struct, frozen=True, kw_only=True):
    kind: str | None = None
    after: int = 0
    limit: int = 100


class CheckpointRequest(msgspec.Struct, frozen=True, kw_only=True):
    size: int | None = None


class EraseCommand(EraseRequest, frozen=True, kw_only=True):
    #: Optional; if given, it must be the operator the command's token names (the principal is never taken from it).
    principal: str = ""


class Empty(msgspec.Struct, frozen=True):
    pass


def register_commands(server: CommandServer, service: AuditService, operators: OperatorGuard | None = None) -> None:
    """The ``cmd.audit.*`` commands; ``operators`` authenticates the sender of ``erase`` (its operator token)."""

    async def status_cmd(_: Empty, meta: CommandMeta) -> dict[str, Any]:
        return await _status(service)

    async def findings_cmd(req: FindingsRequest, meta: CommandMeta) -> dict[str, Any]:
        if not 1 <= req.limit <= 1000:
            raise BadQuery(f"must be between 1 and 1000, got {req.limit}", field="limit")
        rows = await service.store.findings(kind=req.kind, after=req.after, limit=req.limit)
        return {"items": rows}

    async def checkpoint_cmd(req: CheckpointRequest, meta: CommandMeta) -> dict[str, Any]:
        cp = await service.store.checkpoint(req.size)
        if cp is None:
            raise NotFound("no checkpoint yet" if req.size is None else f"no checkpoint of tree size {req.size}")
        return {"size": cp.size, "last_sequence": cp.last_sequence, "note": cp.note}

    async def erase_cmd(req: EraseCommand, meta: CommandMeta) -> Any:
        check_no_nul(req)
        claims = await command_operator(operators, meta.headers, "cmd.audit.erase")
        principal = own_principal(claims, req.principal, meta.headers.get(PRINCIPAL_HEADER, ""), req.requested_by)
        request = EraseRequest(aggregate=req.aggregate, reason=req.reason, requested_by=claims.sub)
        return await service.erase(request, principal)

    server.register("status", Empty, status_cmd)
    server.register("findings", FindingsRequest, findings_cmd)
    server.register("checkpoint", CheckpointRequest, checkpoint_cmd)
    server.register("erase", EraseCommand, erase_cmd)
