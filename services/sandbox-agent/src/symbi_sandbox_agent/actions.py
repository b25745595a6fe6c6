"""The action gateway's wire format and rules (see docs/contracts/tasks.md, "Actions during a task"). Pure.

A workload with ``actions: true`` asks the runtime to act for it by printing one line on stderr,
``@symbi {"action": …, "resource": …, "context": {…}, "args": {…}}``, and reads the reply, one JSON line,
on stdin. This module finds the request lines in the stderr stream (they may arrive split across
chunks, and a line is read only up to :data:`MAX_REQUEST_BYTES`), parses and checks them, builds the
policy question for each (principal the agent, resource typed by the action as the Cedar schema wants,
context validated against the schema) and encodes the replies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from symbi_common.bounds import check_ints, json_nests_deeper_than
from symbi_common.decisions import DecisionRequest, EntityRef
from symbi_common.errors import BadRequest, ValidationError
from symbi_common.policy.engine import schema_errors
from symbi_contracts.agent_protocol import (
    MAX_CONTEXT_BYTES,
    MAX_REQUEST_DEPTH,
    OPS,
    BoundedId,
    Request,
    RequestId,
    resource_of,
)
from symbi_contracts.context.commands import Query, Retrieved, StoreRequest

from symbi_sandbox_agent.errors import (
    ActionRequestError,
    ActionRequestTooLarge,
    MalformedActionRequest,
    UnknownAction,
)

T = TypeVar("T")
PREFIX = b"@symbi "
#: A request line is read up to this many bytes; a longer one is answered ``request_too_large``.
MAX_REQUEST_BYTES = 64 * 1024
#: Requests one run may send; later ones are answered ``too_many_requests`` without being decided.
MAX_REQUESTS = 1000
MAX_RESOURCE_CHARS = 256


class ContextTooLarge(ActionRequestError):
    """A request's ``context`` is larger than :data:`MAX_CONTEXT_BYTES` (its record could not be bounded)."""

    code = "too_large"


#: The actions a workload may ask for, and the Cedar entity type of their resource (the schema's ``appliesTo``).
RESOURCE_TYPES: dict[str, str] = {
    "memory.read": "Memory",
    "memory.write": "Memory",
    "tool.invoke": "Tool",
    "data.read": "Data",
    "data.write": "Data",
    "message.send": "Agent",
}
#: The actions the gateway performs once allowed; the others are decided and audited, then refused.
PERFORMED = frozenset({"memory.read", "memory.write"})


MetaValue = str | int | float | bool


class MemoryWriteArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``memory.write``: one memory of the agent's own, stored with the task as its origin."""

    text: str
    kind: str = "long_term"
    tags: tuple[str, ...] = ()
    metadata: dict[str, MetaValue] = msgspec.field(default_factory=dict)
    ttl_s: float | None = None
    #: The workload's id for the memory: a retried write with the same id and content stores it once.
    memory_id: str | None = None


class MemoryReadArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``memory.read``: a search of the agent's own memories."""

    query: str
    limit: int = 5
    kinds: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


ARGS: dict[str, type[MemoryWriteArgs] | type[MemoryReadArgs]] = {
    "memory.write": MemoryWriteArgs,
    "memory.read": MemoryReadArgs,
}
#: ``resource`` of a memory request names a collection of the agent's memories; ``*`` means all of them.
ALL_COLLECTIONS = "*"
COLLECTION_KEY = "collection"


class ActionRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One request of a workload, as it printed it."""

    action: str
    resource: str
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    args: dict[str, Any] = msgspec.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestLine:
    """A complete ``@symbi`` line (without the prefix), or one that was cut off at the length bound."""

    body: bytes
    too_long: bool = False
    #: It nests lists or objects more than :data:`MAX_REQUEST_DEPTH` deep: refused before anything decodes it
    #: (decoding, checking or logging such a request would recurse past the stack).
    too_deep: bool = False


class RequestLines:
    """Finds ``@symbi`` request lines in a stream of stderr chunks.

    Only lines that start with the prefix are requests; every other line is log output and is skipped
    without being kept. A request line is kept up to :data:`MAX_REQUEST_BYTES` and the rest of it dropped,
    so memory stays bounded whatever the workload prints; a line cut off that way is reported once as
    ``too_long``."""

    def __init__(self, limit: int = MAX_REQUEST_BYTES, prefix: bytes = PREFIX) -> None:
        self.limit = limit
        #: Empty on the channel socket, where every line is a request.
        self.prefix = prefix
        self._line = bytearray()
        self._skipping = False  # inside a line that is not a request, or a request past the limit
        self._at_start = True

    def feed(self, chunk: bytes) -> list[RequestLine]:
        found: list[RequestLine] = []
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            self._take(piece, found)
            if end < 0:
                break
            self._end_line(found)
            start = end + 1
        return found

    def _take(self, piece: bytes, found: list[RequestLine]) -> None:
        if self._skipping or not piece:
            return
        self._line += piece
        prefix = self.prefix
        if len(self._line) < len(prefix) and prefix.startswith(bytes(self._line)):
            return  # could still become a request
        if not self._line.startswith(prefix):
            self._line.clear()
            self._skipping = True
        elif len(self._line) > len(prefix) + self.limit:
            found.append(RequestLine(bytes(self._line[len(prefix) : len(prefix) + 200]), too_long=True))
            self._line.clear()
            self._skipping = True

    def _end_line(self, found: list[RequestLine]) -> None:
        # On the socket (no prefix) an empty line is no request; after the stderr prefix it is a malformed one.
        if not self._skipping and self._line.startswith(self.prefix) and (self.prefix or self._line.strip()):
            body = bytes(self._line[len(self.prefix) :]).rstrip(b"\r")
            found.append(RequestLine(body, too_deep=json_nests_deeper_than(body, MAX_REQUEST_DEPTH)))
        self._line.clear()
        self._skipping = False


class _IdOnly(msgspec.Struct):
    id: BoundedId | None = None


def id_of(body: bytes) -> RequestId | None:
    """The id of a request that is otherwise unreadable, so its error can still name it."""
    try:
        return msgspec.json.decode(body, type=_IdOnly).id
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return None


def memory_question(agent_id: str, request: Request, args: Any) -> DecisionRequest:
    """The question a memory or knowledge request asks (the agent's own memory has the agent as its parent);
    :class:`MalformedActionRequest` if its resource cannot name one."""
    resource, own = resource_of(request.op, args)
    if not resource or len(resource) > MAX_RESOURCE_CHARS or not resource.isprintable():
        raise MalformedActionRequest(
            f"the resource must be 1-{MAX_RESOURCE_CHARS} printable characters, got {resource[:80]!r}"
        )
    return DecisionRequest(
        principal=EntityRef(type="Agent", id=agent_id),
        action=OPS[request.op].action,
        resource=EntityRef(type="Memory", id=resource, parents=(f'Agent::"{agent_id}"',) if own else ()),
        context=dict(request.context),
    )


class _AgentIdOnly(msgspec.Struct):
    agent_id: Any = msgspec.UNSET


def carries_agent_id(body: bytes) -> bool:
    """Whether a request (that decoded) carries the key ``agent_id``, even as ``null``."""
    if b'"agent_id"' not in body and b"\\u" not in body:  # (the key may be written with escapes)
        return False
    return msgspec.json.decode(body, type=_AgentIdOnly).agent_id is not msgspec.UNSET


def parse_request(line: RequestLine) -> ActionRequest:
    """The request on a line; :class:`ActionRequestError` (with the reply's code) if it is not one."""
    if line.too_long or len(line.body) > MAX_REQUEST_BYTES:
        raise ActionRequestTooLarge(f"a request line may have at most {MAX_REQUEST_BYTES} bytes after '@symbi '")
    if line.too_deep:
        raise MalformedActionRequest(f"the request nests lists or objects more than {MAX_REQUEST_DEPTH} levels deep")
    try:
        request = msgspec.json.decode(line.body, type=ActionRequest)
    except msgspec.ValidationError as exc:
        raise MalformedActionRequest(f"the request does not have the request's shape: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedActionRequest(f"the request is not a JSON object: {exc}") from None
    except UnicodeDecodeError as exc:
        raise MalformedActionRequest(f"the request is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    check_context(request.context)
    if request.action not in RESOURCE_TYPES:
        raise UnknownAction(
            f"{request.action!r} is not an action a workload can ask for; use one of {', '.join(RESOURCE_TYPES)}",
            action=request.action,
        )
    if not request.resource or len(request.resource) > MAX_RESOURCE_CHARS or not request.resource.isprintable():
        raise MalformedActionRequest(
            f"resource must be 1-{MAX_RESOURCE_CHARS} printable characters, got {request.resource[:80]!r}"
        )
    parse_args(request)
    return request


def check_context(context: dict[str, Any]) -> None:
    """Refuse a ``context`` whose record could not be stored or whose numbers Cedar cannot hold, before any
    decision: :class:`ContextTooLarge` past :data:`MAX_CONTEXT_BYTES` (encoded as JSON), else
    ``invalid_request`` for an integer outside the signed 64-bit range (anywhere in it: ``check_ints``)."""
    size = len(msgspec.json.encode(context))
    if size > MAX_CONTEXT_BYTES:
        raise ContextTooLarge(
            f"the request's context has {size} bytes as JSON; at most {MAX_CONTEXT_BYTES} are allowed"
        )
    try:
        check_ints(context, "context")
    except BadRequest as err:
        raise ActionRequestError(f"{err.message}: Cedar decides on signed 64-bit integers") from None


def parse_args(request: ActionRequest) -> MemoryWriteArgs | MemoryReadArgs | None:
    """The typed ``args`` of an action the gateway performs (None for the others, which take any)."""
    kind = ARGS.get(request.action)
    if kind is None:
        return None
    try:
        return msgspec.convert(request.args, kind)
    except msgspec.ValidationError as exc:
        raise MalformedActionRequest(f"args of {request.action}: {exc}") from None


def context_store_body(agent_id: str, task_id: str, request: ActionRequest, args: MemoryWriteArgs) -> StoreRequest:
    """``cmd.context.store``: the memory as the agent's own, the task as its origin, the collection in metadata.

    Built through the contract's own decoder, so arguments it refuses (an unknown kind, a text or tag list over
    its bounds) are the workload's :class:`MalformedActionRequest`, not a command the context service refuses."""
    memory = {
        "kind": args.kind,
        "text": args.text,
        "tags": list(args.tags),
        "metadata": {**args.metadata, COLLECTION_KEY: request.resource},
        "origin": {"task_id": task_id},
        "ttl_s": args.ttl_s,
    }
    if args.memory_id is not None:
        memory["id"] = args.memory_id
    return _contract({"agent_id": agent_id, "memories": [memory]}, StoreRequest, "memory.write")


def context_retrieve_body(agent_id: str, request: ActionRequest, args: MemoryReadArgs, min_sequence: int) -> Query:
    """``cmd.context.retrieve`` over the agent's own memories (of one collection unless ``*``); after the
    run's own writes (``min_sequence``), so a workload reads what it just wrote."""
    body: dict[str, Any] = {
        "agent_id": agent_id,
        "query": args.query,
        "limit": args.limit,
        "kinds": list(args.kinds),
        "tags": list(args.tags),
        "min_sequence": min_sequence,
    }
    if request.resource != ALL_COLLECTIONS:
        body["metadata"] = {COLLECTION_KEY: request.resource}
    return _contract(body, Query, "memory.read")


def _contract(body: dict[str, Any], type_: type[T], action: str) -> T:
    try:
        return msgspec.convert(body, type_)
    except msgspec.ValidationError as exc:
        raise MalformedActionRequest(f"args of {action}: {exc}") from None


def read_result(found: Retrieved) -> dict[str, Any]:
    """What a workload gets back from a read: the memories, without the index's internals."""
    return {"memories": [msgspec.structs.asdict(r) for r in found.results]}


def decision_request(agent_id: str, request: ActionRequest) -> DecisionRequest:
    """``Agent::"<agent>"`` may ``<action>`` ``<Type>::"<resource>"`` in the request's context?

    A Memory belongs to the agent that owns it (the baseline lets an agent use its own memory), and the
    gateway only ever acts on the asking agent's own memory, so ``Memory::"<resource>"`` has the agent as
    its parent."""
    kind = RESOURCE_TYPES[request.action]
    parents = (f'Agent::"{agent_id}"',) if kind == "Memory" else ()
    return DecisionRequest(
        principal=EntityRef(type="Agent", id=agent_id),
        action=request.action,
        resource=EntityRef(type=kind, id=request.resource, parents=parents),
        context=dict(request.context),
    )


#: Shapes of requests the schema accepted. The schema is fixed for the process and checks types, not
#: values, so a request of an accepted shape is accepted again without asking Cedar (~0.2-0.3 ms a request).
_ACCEPTED: set[tuple[Any, ...]] = set()
_MAX_SHAPES = 4096
_LONG = range(-(2**63), 2**63)


def _shape(request: DecisionRequest) -> tuple[Any, ...] | None:
    """What the schema check of ``request`` depends on, or None when a value itself could matter (entity
    attributes, nested or fractional context values, a number outside Cedar's Long)."""
    p, r = request.principal, request.resource
    if p.attrs or r.attrs:
        return None
    context: list[tuple[str, str]] = []
    for key, value in request.context.items():
        if isinstance(value, bool):
            kind = "bool"
        elif isinstance(value, int) and value in _LONG:
            kind = "long"
        elif isinstance(value, str):
            kind = "string"
        else:
            return None
        context.append((key, kind))
    types = (p.type, r.type, (p.type, p.id) == (r.type, r.id))
    parents = tuple(x.partition("::")[0] for x in p.parents), tuple(x.partition("::")[0] for x in r.parents)
    return (request.action, types, parents, tuple(sorted(context)))


def check_against_schema(request: DecisionRequest) -> None:
    """Refuse a request the Cedar schema rejects (an unknown context attribute, a wrong type) with a clear
    reason, before it is decided: the policies would only ever see it as an evaluation error."""
    shape = _shape(request)
    if shape is not None and shape in _ACCEPTED:
        return
    try:
        errors = schema_errors(request)
    except ValidationError as exc:
        raise MalformedActionRequest(f"the request's context cannot be expressed in Cedar: {exc}") from None
    if errors is not None:
        raise ActionRequestError(
            f"the policy schema rejects the request: {errors.removeprefix('failed to build request: ')}"
        )
    if shape is not None:
        if len(_ACCEPTED) >= _MAX_SHAPES:
            _ACCEPTED.clear()
        _ACCEPTED.add(shape)


def allowed_reply(seq: int, result: Any) -> bytes:
    return msgspec.json.encode({"seq": seq, "outcome": "allowed", "result": result}) + b"\n"


def error_reply(seq: int, code: str, message: str) -> bytes:
    return msgspec.json.encode({"seq": seq, "outcome": "error", "error": {"code": code, "message": message}}) + b"\n"
