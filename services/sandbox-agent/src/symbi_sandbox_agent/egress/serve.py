"""Answering a plain-HTTP request for an internal service's reserved name (:mod:`.internal`) on the proxy."""

from __future__ import annotations

import asyncio

from symbi_sandbox_agent.egress import http1
from symbi_sandbox_agent.egress.decisions import Refused
from symbi_sandbox_agent.egress.internal import Caller, InternalRequest, InternalService
from symbi_sandbox_agent.egress.pipe import Meter

#: The largest request body an internal service is handed.
MAX_BODY = 8 * 1024 * 1024
#: How long the sandbox has to send that body.
BODY_TIMEOUT_S = 30.0


def request_of(head: http1.RequestHead, path: str, body: bytes) -> InternalRequest:
    """The request as the service sees it: lower-cased names, no hop-by-hop, ``Proxy-*`` or ``X-Symbi-*``."""
    headers = {k.lower(): v for k, v in http1.forwarded_headers(head) if k.lower() != "content-length"}
    return InternalRequest(method=head.method, path=path, headers=headers, body=body)


def body_length(head: http1.RequestHead) -> int:
    if head.header("transfer-encoding"):
        raise Refused(411, "bad_request", "send the request body with Content-Length, not chunked")
    text = head.header("content-length") or "0"
    if not (text.isascii() and text.isdigit()):
        raise Refused(400, "bad_request", f"Content-Length {text[:40]!r} is not a number")
    if int(text) > MAX_BODY:
        raise Refused(400, "bad_request", f"a request body to an internal service is at most {MAX_BODY} bytes")
    return int(text)


async def internal(
    service: InternalService,
    caller: Caller,
    head: http1.RequestHead,
    path: str,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    into: Meter,
) -> tuple[int, int, int]:
    """Hand the request to ``service`` and write its answer back; ``(status, bytes_out, bytes_in)``."""
    length = body_length(head)
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):  # a body sent a byte at a time holds no memory for long
            body = await reader.readexactly(length) if length else b""
    except TimeoutError:
        raise Refused(408, "bad_request", f"the request body did not arrive within {BODY_TIMEOUT_S:g} s") from None
    response = await service.handle(caller, request_of(head, path, body))
    head_bytes = http1.response_head(response.status, response.headers, response.length)
    sent = 0
    try:
        writer.write(head_bytes)
        sent = len(head_bytes)
        async for piece in response.body:
            if not piece:
                continue
            data = piece if response.length is not None else http1.chunk(piece)
            await into.pay(len(data))
            writer.write(data)
            sent += len(data)
            await writer.drain()
        if response.length is None:
            writer.write(http1.LAST_CHUNK)
            sent += len(http1.LAST_CHUNK)
        await writer.drain()
    finally:
        # The body is closed whatever happened (its end, a sandbox that went away, a cancellation): a
        # streamed model answer settles its budget reservation when it is closed.
        close = getattr(response.body, "aclose", None)
        if close is not None:
            await close()
    return response.status, len(raw_head(head)) + length, sent


def raw_head(head: http1.RequestHead) -> bytes:
    return http1.encode_request(head.method, head.target, list(head.headers))
