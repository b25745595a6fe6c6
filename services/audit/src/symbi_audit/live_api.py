"""The audit service's live feed over HTTP: ``GET /v1/audit/stream?agent=&event_type=``, Server-Sent Events, one
``event`` per verified event (metadata only); it ends (``event: unauthenticated``) once the operator token is
revoked or expires."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from symbi_common.errors import SymbiError, Unauthenticated, to_wire
from symbi_common.openapi import TEXT, query_params
from symbi_common.operator_auth import OperatorGuard, bearer_token, claims_of

from symbi_audit.live import EventItem, LiveFeed, LiveFilter
from symbi_audit.queries import text_param

router = APIRouter(prefix="/v1/audit", tags=["audit"])
#: How often an open event stream checks its operator token again while no event comes (a revoked token's
#: stream ends within this; an expiring one at its expiry, and either before the next event is sent).
STREAM_RECHECK_S = 5.0
_json = msgspec.json.Encoder()


def _token_check(request: Request) -> tuple[Callable[[], SymbiError | None], float]:
    """For a long-lived response: a check of the request's operator token, as the guard makes it on every call
    (:meth:`OperatorGuard.authenticate`: expiry, then revocation — a set lookup and a time compare once the
    token is cached), answering the refusal (None while the token is good); and the token's expiry (Unix time)."""
    guard: OperatorGuard | None = getattr(request.app.state, "operator_guard", None)
    claims = claims_of(request)
    if guard is None or claims is None:
        raise Unauthenticated("no authenticated operator for this request")
    token = bearer_token(request.scope.get("headers") or [])

    def refusal() -> SymbiError | None:
        try:
            guard.authenticate(token)
        except SymbiError as err:
            return err
        return None

    return refusal, float(claims.exp)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    openapi_extra=query_params(agent=TEXT, event_type=TEXT),
    responses={200: {"description": "Server-Sent Events", "content": {"text/event-stream": {}}}},
)
async def stream(request: Request) -> StreamingResponse:
    """Verified events' metadata as they come. The operator token is checked again before each event is sent and
    at least every :data:`STREAM_RECHECK_S` seconds (and at its expiry): once it is revoked or expired, the stream
    sends ``event: unauthenticated`` (``data``: the typed error) and ends."""
    live: LiveFeed = request.app.state.audit_live
    q = request.query_params
    flt = LiveFilter(
        agent=text_param(q.get("agent"), "agent"), event_type=text_param(q.get("event_type"), "event_type")
    )
    refusal, expires = _token_check(request)
    sub = live.subscribe(flt)  # before the response starts: nothing verified from now on is missed

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b": audit live feed\n\n"
            while True:
                arrived = True
                item: EventItem | None = None
                try:
                    item = sub.queue.get_nowait()  # a busy feed: no timer per event
                except asyncio.QueueEmpty:
                    wait = min(STREAM_RECHECK_S, max(expires - time.time(), 0.0) + 0.01)
                    try:
                        item = await asyncio.wait_for(sub.get(), timeout=wait)
                    except TimeoutError:
                        arrived = False  # nothing came: only the token is checked again
                refused = refusal()
                if refused is not None:
                    yield b"event: unauthenticated\ndata: " + _json.encode({"error": to_wire(refused)}) + b"\n\n"
                    return
                if not arrived:
                    continue
                if item is None:
                    yield b"event: overflow\ndata: {}\n\n"
                    return
                yield b"event: audit\nid: " + str(item.sequence).encode() + b"\ndata: " + _json.encode(item) + b"\n\n"
        finally:
            sub.close()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
