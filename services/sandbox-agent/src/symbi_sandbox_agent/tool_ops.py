"""The ``tools.*`` operations of the agent channel protocol (docs/tools.md): ``tools.list`` and ``tools.call``
(``tools.invoke`` is the same call under its first name).

A call goes: the tool must be known, approved, verified and listed with the approved definition (the
registry's typed refusal otherwise); the per-agent, per-tool rate limit; the one enforcer decides
``tool.invoke`` on ``Tool::"server.tool"`` with the arguments in the context (their names, each scalar as
``name=value`` and the canonical JSON), so Cedar can limit them; then the call with its timeout and result
size cap. Each call is recorded as ``execution.action`` with the decision and, for a result, its size and
SHA-256; past :data:`MAX_RECORDED_ARGUMENTS` bytes the record holds the arguments once, as their SHA-256 and
size, and a call whose record would not fit the event size limit is refused ``too_large`` before it is made. The result is passed on as the server sent it: untrusted data, never interpreted here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from symbi_common.decisions import DecisionRecord, DecisionRequest, Deny, EntityRef
from symbi_common.errors import InfrastructureError, SymbiError
from symbi_common.policy.conditions import redact
from symbi_common.policy.hooks import UNDECIDED
from symbi_contracts.agent_protocol import Reply, Request, RequestId, Result, error
from symbi_contracts.sandbox_agent.events import ActionOutcome
from symbi_contracts.tools.errors import ToolNotApproved

from symbi_sandbox_agent.actions import MAX_RESOURCE_CHARS, check_against_schema
from symbi_sandbox_agent.errors import ActionRequestError
from symbi_sandbox_agent.recorder import Fits
from symbi_sandbox_agent.tools.canon import canonical_json

if TYPE_CHECKING:
    from symbi_common.decisions import Decision

    from symbi_sandbox_agent.tools.service import ToolService

TOOL_OPS = ("tools.list", "tools.call", "tools.invoke")
RETRY_AFTER_S = 1.0
#: Bytes of canonical JSON arguments a call's record holds as they are; larger ones are recorded as a digest.
MAX_RECORDED_ARGUMENTS = 64 * 1024


class ToolsCall(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``tools.call``: call tool ``name`` (``server.tool``) with ``arguments``."""

    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class Serving(Protocol):
    """What the tool operations need of the protocol server (``agent_ops.ProtocolServer``)."""

    @property
    def agent_id(self) -> str: ...

    async def _record(
        self,
        seq: int,
        action: str,
        resource: str,
        context: dict[str, Any],
        record: DecisionRecord | None,
        outcome: ActionOutcome,
        detail: str,
    ) -> None: ...


def argument_context(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments as Cedar can test them: names, ``name=value`` of each scalar, canonical JSON."""
    values = []
    for name, value in arguments.items():
        if isinstance(value, str):
            values.append(f"{name}={value}")
        elif value is None or isinstance(value, bool | int | float):
            values.append(f"{name}={canonical_json(value).decode()}")
    return {
        "arguments": sorted(arguments),
        "argument_values": sorted(values),
        "arguments_json": canonical_json(arguments).decode(),
    }


def recorded_context(context: dict[str, Any]) -> dict[str, Any]:
    """The decision's context as a call's record holds it: as decided, unless the arguments are larger than
    :data:`MAX_RECORDED_ARGUMENTS` bytes of canonical JSON; then only once, as their SHA-256 and size (not as
    ``arguments_json`` nor the ``arguments`` and ``argument_values`` derived from it), so the record of any call
    stays within the event size limit."""
    as_json = context.get("arguments_json")
    if not isinstance(as_json, str) or len(as_json) <= MAX_RECORDED_ARGUMENTS // 4:
        return context
    data = as_json.encode()
    if len(data) <= MAX_RECORDED_ARGUMENTS:
        return context
    kept = {k: v for k, v in context.items() if k not in ("arguments", "argument_values", "arguments_json")}
    return {**kept, "arguments_sha256": hashlib.sha256(data).hexdigest(), "arguments_bytes": len(data)}


Decide = Callable[[DecisionRequest], Awaitable[tuple["Decision", DecisionRecord]]]


class ToolOps:
    """``tools`` is the host's :class:`ToolService`, looked up at each request (None: no tools here)."""

    def __init__(self, server: Serving, decide: Decide, tools: Callable[[], ToolService | None], fits: Fits) -> None:
        self.server = server
        self.decide = decide
        self._tools = tools
        #: Checked before a call is made (``ProtocolServer.record_fits``).
        self.fits = fits

    @property
    def tools(self) -> ToolService | None:
        return self._tools()

    async def answer(self, seq: int, request: Request, action: str) -> Reply:
        tools = self.tools
        if tools is None:
            message = f"{request.op} is not available: no MCP tool servers are configured on this host"
            await self.server._record(seq, action, "", {}, None, "failed", f"not_available: {message}")
            return error(request.id, "not_available", message, op=request.op)
        if request.op == "tools.list":
            listed = await tools.list(refresh=True, callable_only=True)
            return Result(id=request.id, result={"tools": [t.as_dict() for t in listed]})
        raw = dict(request.args)
        if request.op == "tools.invoke" and "tool" in raw and "name" not in raw:
            raw["name"] = raw.pop("tool")
        try:
            args = msgspec.convert(raw, ToolsCall)
        except msgspec.ValidationError as exc:
            return await self._fail(seq, request.id, "", {}, None, "malformed_request", f"args of {request.op}: {exc}")
        return await self._call(seq, request, args)

    async def _call(self, seq: int, request: Request, args: ToolsCall) -> Reply:
        tools = self.tools
        assert tools is not None
        name, rid = args.name, request.id
        if not name or len(name) > MAX_RESOURCE_CHARS or not name.isprintable():
            message = f"a tool name is 1-{MAX_RESOURCE_CHARS} printable characters, got {name[:80]!r}"
            return await self._fail(seq, rid, "", {}, None, "malformed_request", message)
        try:
            tool = await tools.callable_record(name)
        except SymbiError as err:
            return await self._fail(seq, rid, name, {}, None, err.code, err.message, **err.details)
        server = name.partition(".")[0]
        ours = {
            **argument_context(args.arguments),
            "server": server,
            "tool": tool.name,
            "pin": tool.seen_pin,
            "verification": tool.verification,
            "flags": list(tool.flags),
        }
        question = DecisionRequest(
            principal=EntityRef(type="Agent", id=self.server.agent_id),
            action="tool.invoke",
            resource=EntityRef(type="Tool", id=name),
            # What the gateway knows of the tool and the call overrides anything the agent said.
            context={**request.context, **ours},
        )
        recorded = recorded_context(question.context)
        try:
            check_against_schema(question)
        except ActionRequestError as err:
            return await self._fail(seq, rid, name, recorded, None, "invalid_request", err.message)
        decision, record = await self.decide(question)
        if isinstance(decision, Deny):
            if decision.code in UNDECIDED:
                return await self._fail(
                    seq, rid, name, recorded, record, "unavailable", decision.reason, cause=decision.code
                )
            await self.server._record(seq, "tool.invoke", name, recorded, record, "refused", decision.reason)
            return error(
                rid,
                "denied",
                f"calling {name} is denied: {decision.reason}",
                policies=list(decision.policies),
                policy_version=decision.policy_version,
            )
        wait = tools.rate_wait(self.server.agent_id, name)
        if wait > 0:
            message = f"{name} is called too often (at most {tools.limits.rate_per_s:g}/s)"
            return await self._fail(seq, rid, name, recorded, record, "too_many_requests", message, retry_after=wait)
        if not self.fits(seq, "tool.invoke", name, recorded, record):
            message = f"the record of this call of {name} would exceed the event size limit; it was not made"
            return await self._fail(seq, rid, name, {}, record, "too_large", message)
        try:
            # Still callable, with the definition the decision was about: the tool may have been revoked, or its
            # server replaced, while the call was being decided.
            if (await tools.callable_record(name)).seen_pin != tool.seen_pin:
                raise ToolNotApproved(f"{name} changed while the call was decided; ask again", status="changed")
            called = await tools.call(name, args.arguments)
        except SymbiError as err:
            code = "unavailable" if isinstance(err, InfrastructureError) else err.code
            return await self._fail(seq, rid, name, recorded, record, code, err.message, **err.details)
        result: Any = {**called.result, "digest": called.digest, "bytes": called.size}
        if record.conditions:
            result = redact(result, record.conditions)
        detail = f"tools.call {name}: {called.size} bytes, {called.digest}"
        await self.server._record(seq, "tool.invoke", name, recorded, record, "allowed", detail)
        return Result(id=rid, result=result)

    async def _fail(
        self,
        seq: int,
        request_id: RequestId,
        name: str,
        context: dict[str, Any],
        record: DecisionRecord | None,
        code: str,
        message: str,
        **extra: Any,
    ) -> Reply:
        await self.server._record(seq, "tool.invoke", name, context, record, "failed", f"{code}: {message}")
        if code == "unavailable":
            extra.setdefault("retry_after", RETRY_AFTER_S)
        return error(request_id, code, message, **extra)
