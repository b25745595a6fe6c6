"""``http.request`` of the channel protocol: an HTTP(S) request the daemon makes for the workload through
the run's own egress proxy (docs/network.md), so the same rules hold as for the workload's own clients —
the allow-list, name resolution and address checks, Cedar's ``network.connect`` (``access = "gateway"``),
the token buckets — and the connection is recorded as ``execution.egress``; the request itself as
``execution.action``. A refusal of the proxy is the typed error ``denied`` naming its reason.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit

import msgspec
from symbi_common.decisions import DecisionRecord
from symbi_contracts.agent_protocol import Reply, Request, Result, error
from symbi_contracts.sandbox_agent.events import ActionOutcome

from symbi_sandbox_agent.egress import http1
from symbi_sandbox_agent.egress.rules import BadTarget, parse_authority
from symbi_sandbox_agent.run import Running

ACTION = "network.connect"
#: The largest answer body passed back over the channel (its line is at most 8 MiB as base64 or text).
MAX_BYTES = 4 * 1024 * 1024
Record = Callable[[int, str, str, dict[str, Any], DecisionRecord | None, ActionOutcome, str], Awaitable[None]]


class HttpRequestArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str
    method: str = "GET"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    #: The request body as text, or ``body_b64`` for bytes (not both).
    body: str = ""
    body_b64: str = ""
    timeout_s: float = 30.0
    max_bytes: int = 1024 * 1024


#: What stays as it is when a path or a query is percent-encoded (RFC 3986's reserved characters and "%").
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
#: An HTTP token (RFC 9110): a method or a header name.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}\Z")


def _check_head(method: str, headers: dict[str, str]) -> None:
    """:class:`Refusal` (``malformed_request``) unless the method and header names are HTTP tokens and each
    header value is Latin-1 text without CR, LF or NUL (nothing can be added to the request's head)."""
    if not _TOKEN.match(method):
        raise Refusal("malformed_request", f"method {method[:40]!r} is not an HTTP method")
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise Refusal("malformed_request", f"header name {name[:40]!r} is not an HTTP token")
        if any(c in value for c in "\r\n\0") or not _latin1(value):
            raise Refusal("malformed_request", f"the value of header {name} must be Latin-1 text on one line")


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


class Refusal(Exception):
    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class HttpOps:
    def __init__(self, run: Running, record: Record) -> None:
        self.run = run
        self.record = record

    async def answer(self, seq: int, request: Request) -> Reply:
        try:
            args = msgspec.convert(request.args, HttpRequestArgs)
        except msgspec.ValidationError as exc:
            return await self._fail(seq, request, "", "malformed_request", f"args of http.request: {exc}")
        resource = args.url[:200]
        try:
            result = await asyncio.wait_for(self._perform(args), max(0.1, min(args.timeout_s, 120.0)))
        except Refusal as err:
            outcome: ActionOutcome = "refused" if err.code == "denied" else "failed"
            await self.record(seq, ACTION, resource, {}, None, outcome, f"{err.code}: {err}")
            return error(request.id, err.code, str(err), **err.details)
        except TimeoutError:
            return await self._fail(
                seq, request, resource, "timeout", f"no answer from {resource} in {args.timeout_s} s"
            )
        except (OSError, ssl.SSLError, http1.BadRequest, asyncio.IncompleteReadError) as exc:
            return await self._fail(seq, request, resource, "unavailable", f"{resource}: {exc}")
        await self.record(seq, ACTION, resource, {}, None, "allowed", f"http.request {result['status']}")
        return Result(id=request.id, result=result)

    async def _fail(self, seq: int, request: Request, resource: str, code: str, message: str) -> Reply:
        await self.record(seq, ACTION, resource, {}, None, "failed", f"{code}: {message}")
        return error(request.id, code, message)

    async def _perform(self, args: HttpRequestArgs) -> dict[str, Any]:
        egress = self.run.egress
        if egress is None:
            raise Refusal("not_available", "this agent has no network: its definition allows no network access")
        try:
            url = urlsplit(args.url)
        except ValueError as exc:  # e.g. an unclosed [ of an IPv6 host
            raise Refusal("malformed_request", f"{args.url[:100]!r} is not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.netloc or "@" in url.netloc:
            raise Refusal("malformed_request", f"{args.url[:100]!r} is not an http:// or https:// URL")
        try:
            target = parse_authority(url.netloc, 443 if url.scheme == "https" else 80)
        except BadTarget as exc:
            raise Refusal("malformed_request", str(exc)) from None
        if args.body and args.body_b64:
            raise Refusal("malformed_request", "send body or body_b64, not both")
        try:
            body = base64.b64decode(args.body_b64, validate=True) if args.body_b64 else args.body.encode()
        except ValueError:  # (binascii.Error is one)
            raise Refusal("malformed_request", "body_b64 is not base64") from None
        # Percent-encoded where it is not ASCII (what clients do); what is escaped already stays as it is.
        path = quote(url.path or "/", safe=_PATH_SAFE) + (f"?{quote(url.query, safe=_QUERY_SAFE)}" if url.query else "")
        authority = str(target) if target.port != (443 if url.scheme == "https" else 80) else target.host
        _check_head(args.method, args.headers)
        headers = [(k, v) for k, v in args.headers.items() if k.lower() not in ("host", "content-length")]
        headers = [("Host", authority), *headers, ("Content-Length", str(len(body)))]
        reader, writer = await egress.connect()
        try:
            if url.scheme == "https":
                writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                answer = await reader.readuntil(b"\r\n\r\n")
                if not answer.startswith(b"HTTP/1.1 200"):
                    rest = await reader.read(64 * 1024)
                    self._refused(http1.parse_response(answer + rest))
                await writer.start_tls(egress.tls, server_hostname=target.host)
                head = http1.encode_request(args.method.upper(), path, headers)
            else:
                head = http1.encode_request(args.method.upper(), f"http://{authority}{path}", headers)
            writer.write(head + body)
            await writer.drain()
            limit = min(args.max_bytes, MAX_BYTES)
            raw = await reader.read(limit + 64 * 1024)
            while chunk := await reader.read(64 * 1024):
                raw += chunk
                if len(raw) > limit + 64 * 1024:
                    raise Refusal("too_large", f"the answer is larger than {limit} bytes", max_bytes=limit)
        finally:
            writer.close()
        response = http1.parse_response(raw)
        if url.scheme == "http":
            self._refused(response)
        if len(response.body) > limit:
            raise Refusal("too_large", f"the answer is larger than {limit} bytes", max_bytes=limit)
        out: dict[str, Any] = {"status": response.status, "headers": [list(h) for h in response.headers]}
        try:
            out["body"] = response.body.decode()
        except UnicodeDecodeError:
            out["body_b64"] = base64.b64encode(response.body).decode()
        return out

    @staticmethod
    def _refused(response: http1.Response) -> None:
        reason = next((v for k, v in response.headers if k.lower() == http1.REFUSED_HEADER.lower()), None)
        if reason is not None:
            code = "denied" if response.status == 403 else "unavailable"
            raise Refusal(code, response.body.decode(errors="replace").strip(), reason=reason)
