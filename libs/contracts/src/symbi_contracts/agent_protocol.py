"""The agent channel protocol, version 1: what a sandboxed agent and its host's gateway say (docs/agent-protocol.md).

Language-neutral JSON lines. A request is ``{"v": 1, "id": …, "op": "memory.store", "args": {…}, "context": {…}}``;
its answer names the same ``id`` and is either ``{"v": 1, "id": …, "type": "result", "result": {…}}`` or
``{"v": 1, "id": …, "type": "error", "error": {"code", "message", "retry_after"?, "details"?}}``. The same
messages travel over the per-sandbox Unix socket (one per line) and over stdio (requests on stderr after the
``@symbi `` prefix, answers on stdin). The agent never names itself: the gateway knows it from the listener.
Pure: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from symbi_common.bounds import INT64_MAX, INT64_MIN

#: The protocol versions a gateway speaks; a request with another ``v`` is answered ``unsupported_version``.
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
#: Longest request line the gateway reads (bytes, without the newline); a longer one is ``request_too_large``.
MAX_REQUEST_BYTES = 1024 * 1024
#: Deepest nesting of lists and objects in a request; a deeper one is ``malformed_request``.
MAX_REQUEST_DEPTH = 64
#: Requests of one agent being served at once; the gateway stops reading its socket while this many are open.
MAX_IN_FLIGHT = 16
#: Longest string ``id`` of a request; an integer ``id`` is a signed 64-bit one. Another is ``malformed_request``.
MAX_ID_CHARS = 64
#: Largest ``context`` of a request (bytes, encoded as JSON); a larger one is ``too_large``, before any decision.
MAX_CONTEXT_BYTES = 16 * 1024
#: Where the channel directory is mounted in the sandbox, the socket in it, and the variable naming it.
CHANNEL_MOUNT = "/symbi/run"
SOCKET_NAME = "agent.sock"
SOCKET_ENV = "SYMBI_SOCKET"
#: The egress proxy's socket in the same channel directory (docs/network.md), and the variable naming it.
EGRESS_SOCKET_NAME = "egress.sock"
EGRESS_SOCKET_ENV = "SYMBI_EGRESS_SOCKET"
#: Prefix of a request line on stderr when the channel is stdio (the fallback).
STDIO_PREFIX = b"@symbi "

ErrorCode = Literal[
    "malformed_request",
    "request_too_large",
    "unsupported_version",
    "unknown_op",
    "not_available",
    "identity_refused",
    "invalid_request",
    "denied",
    "unavailable",
    "too_many_requests",
    "rate_limited",
    "timeout",
    "recipient_terminated",
    "internal",
    "not_found",
    "too_large",
    "read_only",
    "exists",
    "budget_exceeded",
]
#: Every code of the protocol itself; a performing service's own code (e.g. ``invalid_context``) passes through.
ERROR_CODES: tuple[str, ...] = ErrorCode.__args__  # type: ignore[attr-defined]

RequestId = str | int
#: A request's ``id`` as the gateway accepts it: at most :data:`MAX_ID_CHARS` characters, or a 64-bit integer.
BoundedId = (
    Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)] | Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
)


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One request of an agent."""

    id: BoundedId
    op: str
    v: int = PROTOCOL_VERSION
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    #: Cedar context of the decision (e.g. ``{"classification": "confidential"}``), checked against the schema.
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    #: Never trusted: a request that carries ``agent_id`` at all (a name, or ``null``) is refused
    #: ``identity_refused`` (the listener names the agent).
    agent_id: str | None = None


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    code: str
    message: str
    #: Seconds after which asking again may succeed (``unavailable``, ``too_many_requests``).
    retry_after: float | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class Result(msgspec.Struct, frozen=True, kw_only=True, tag="result", tag_field="type"):
    id: RequestId | None
    result: Any
    v: int = PROTOCOL_VERSION


class Error(msgspec.Struct, frozen=True, kw_only=True, tag="error", tag_field="type"):
    id: RequestId | None
    error: ErrorBody
    v: int = PROTOCOL_VERSION


Reply = Result | Error
REPLY_DECODER: msgspec.json.Decoder[Reply] = msgspec.json.Decoder(Reply)
_ENCODER = msgspec.json.Encoder()


def encode_reply(reply: Reply) -> bytes:
    """One answer line (with its newline)."""
    return _ENCODER.encode(reply) + b"\n"


def error(request_id: RequestId | None, code: str, message: str, **extra: Any) -> Error:
    retry_after = extra.pop("retry_after", None)
    return Error(id=request_id, error=ErrorBody(code=code, message=message, retry_after=retry_after, details=extra))


# --- operations ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """An operation of the protocol and the Cedar action that decides it (empty: not an action)."""

    action: str


OPS: dict[str, Op] = {
    "hello": Op(""),
    "memory.store": Op("memory.write"),
    "memory.recall": Op("memory.read"),
    "memory.forget": Op("memory.write"),
    "knowledge.share": Op("memory.write"),
    "knowledge.query": Op("memory.read"),
    "data.read": Op("data.read"),
    "data.list": Op("data.read"),
    "data.write": Op("data.write"),
    "messages.send": Op("message.send"),
    "messages.publish": Op("message.send"),
    "messages.request": Op("message.send"),
    "messages.receive": Op("message.receive"),
    "tools.list": Op(""),
    "tools.call": Op("tool.invoke"),
    "tools.invoke": Op("tool.invoke"),
    "http.request": Op("network.connect"),
    "models.complete": Op("model.invoke"),
}

MetaValue = str | int | float | bool


class MemoryStore(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``memory.store``: one memory of the agent's own, in ``collection``, with the task as its origin.

    ``memory_id`` (1-128 ASCII letters, digits, ``-``, ``_``) makes a retry safe: the same id and content is
    answered again without storing twice; the same id with other content is refused (``memory_conflict``)."""

    text: str
    collection: str = "default"
    kind: str = "long_term"
    tags: tuple[str, ...] = ()
    metadata: dict[str, MetaValue] = msgspec.field(default_factory=dict)
    ttl_s: float | None = None
    memory_id: str | None = None


class MemoryRecall(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``memory.recall``: a search of the agent's own memories (of ``collection``; ``*`` means all)."""

    query: str
    collection: str = "*"
    limit: int = 5
    kinds: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


class MemoryForget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``memory.forget``: erase memories of the agent's own, by id."""

    ids: tuple[str, ...]


class KnowledgeShare(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``knowledge.share``: add a document to knowledge base ``kb`` (policy decides who may write it).

    ``document_id`` (1-128 ASCII letters, digits, ``-``, ``_``) makes a retry safe: the same id and content is
    answered again without storing twice; the same id with other content is refused (``document_conflict``)."""

    kb: str
    title: str
    text: str
    tags: tuple[str, ...] = ()
    metadata: dict[str, MetaValue] = msgspec.field(default_factory=dict)
    document_id: str | None = None


class KnowledgeQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``knowledge.query``: search knowledge base ``kb`` (policy decides who may read it)."""

    kb: str
    query: str
    limit: int = 5


#: Bytes one ``data.read`` returns or one ``data.write`` writes at most (read larger files in pieces with
#: ``offset``/``length``, write them with ``mode = "append"``); past it the answer is ``too_large``.
MAX_DATA_BYTES = 512 * 1024
#: The largest ``data.read`` offset (a larger one is ``malformed_request``, never handed to the system).
MAX_DATA_OFFSET = 2**62
#: Entries one ``data.list`` returns at most (then ``truncated`` is true).
MAX_LIST_ENTRIES = 1000
DataEncoding = Literal["utf-8", "base64"]


class DataRead(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``data.read``: a file under ``/symbi/data`` (``<root>/<dir>/<file>``), within the agent's grants."""

    path: str
    #: Where to start (0 to 2**62: no file is larger).
    offset: Annotated[int, msgspec.Meta(ge=0, le=MAX_DATA_OFFSET)] = 0
    #: Bytes to read from ``offset``; none: to the end of the file (at most :data:`MAX_DATA_BYTES`).
    length: int | None = None
    encoding: DataEncoding = "utf-8"


class DataList(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``data.list``: the entries of a granted directory (``<root>`` or ``<root>/<dir>``)."""

    path: str
    limit: int = MAX_LIST_ENTRIES


class DataWrite(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``data.write``: write a file under a grant with mode ``read_write`` (its directory must exist).

    ``mode``: ``overwrite`` (create or replace), ``append`` (create or add to the end), ``create`` (only a
    new file: an existing one is the error ``exists``)."""

    path: str
    content: str
    encoding: DataEncoding = "utf-8"
    mode: Literal["overwrite", "append", "create"] = "overwrite"


class Hello(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``hello``: the versions the client speaks; the answer names the one chosen and what the gateway offers."""

    versions: tuple[int, ...] = (PROTOCOL_VERSION,)
    client: str = ""


ARGS: dict[str, type[Any]] = {
    "hello": Hello,
    "memory.store": MemoryStore,
    "memory.recall": MemoryRecall,
    "memory.forget": MemoryForget,
    "knowledge.share": KnowledgeShare,
    "knowledge.query": KnowledgeQuery,
    "data.read": DataRead,
    "data.list": DataList,
    "data.write": DataWrite,
}


def resource_of(op: str, args: Any) -> tuple[str, bool]:
    """The resource an operation acts on and whether it is the agent's own memory (parent: the agent)."""
    if isinstance(args, MemoryStore | MemoryRecall):
        return args.collection, True
    if isinstance(args, MemoryForget):
        return "*", True
    if isinstance(args, KnowledgeShare | KnowledgeQuery):
        return args.kb, False
    if isinstance(args, DataRead | DataList | DataWrite):
        return args.path, False
    return op, False
