"""Framing of the protocol (docs/agent-protocol.md): JSON lines, ids, the version. Pure, stdlib only."""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

from symbi_agent.errors import ChannelError, RequestTooLarge, from_reply

PROTOCOL_VERSION = 1
SOCKET_ENV = "SYMBI_SOCKET"
STDIO_PREFIX = b"@symbi "
#: Matches the gateway's cap; the SDK reads answers up to this size per line.
MAX_LINE_BYTES = 8 * 1024 * 1024
#: The longest request line the gateway reads on the socket (bytes, without the newline), unless ``hello``
#: names another ``max_request_bytes``; a longer one is refused here, before it is sent.
MAX_REQUEST_BYTES = 1024 * 1024

_ids = itertools.count(1)


def next_id() -> int:
    return next(_ids)


def encode_request(request_id: int, op: str, args: dict[str, Any], context: dict[str, Any] | None) -> bytes:
    message: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "op": op, "args": args}
    if context:
        message["context"] = context
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def check_size(line: bytes, op: str, limit: int) -> None:
    """:class:`RequestTooLarge` unless the request ``line`` (newline-terminated) fits the gateway's ``limit``."""
    size = len(line) - 1
    if size > limit:
        message = f"the {op} request has {size} bytes; the gateway reads at most {limit} (nothing was sent)"
        raise RequestTooLarge(message, details={"max_request_bytes": limit, "request_bytes": size})


def request_limit(channel: str, hello: Any = None) -> int:
    """The longest request line on ``channel`` (``socket`` or ``stdio``, the same bound on both): what a ``hello``
    answer names as ``max_request_bytes``, else the documented default."""
    named = hello.get("max_request_bytes") if isinstance(hello, dict) else None
    return named if isinstance(named, int) and not isinstance(named, bool) and named > 0 else MAX_REQUEST_BYTES


def decode_reply(line: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise ChannelError(f"the gateway sent a line that is not JSON: {line[:120]!r} ({exc})") from None
    if not isinstance(reply, dict) or reply.get("type") not in ("result", "error"):
        raise ChannelError(f"the gateway sent a line that is not an answer: {line[:120]!r}")
    return reply


def unwrap(reply: dict[str, Any]) -> Any:
    """The result of an answer, or its typed error raised."""
    if reply["type"] == "error":
        raise from_reply(reply.get("error") or {})
    return reply.get("result")


def socket_path() -> str | None:
    """The channel socket named by ``$SYMBI_SOCKET``, if it is set and exists."""
    path = os.environ.get(SOCKET_ENV, "")
    return path if path and os.path.exists(path) else None
