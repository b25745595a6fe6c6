"""The operator's interface to MCP tools (``symbi tools``): HTTP routes of the sandbox-agent.

``POST /v1/tools/servers`` registers a server and ``DELETE /v1/tools/servers/{server}`` removes one (admin),
``GET /v1/tools`` lists every tool with its status,
pin, SchemaPin verification and flags (re-read from the servers), ``GET /v1/tools/{name}`` shows one with
its definition, ``POST /v1/tools/{name}/approve`` and ``/revoke`` (admin) change what agents may call.
Each change is an event of ``evt.toolserver.<server>`` naming the operator.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from fastapi import APIRouter, Request
from symbi_common.bounds import check_json_depth
from symbi_common.operator_auth import ACCESS_EXTENSION, operator_of
from symbi_contracts.tools.errors import ToolServerUnavailable
from symbi_contracts.tools.events import ToolServerRegistered

from symbi_sandbox_agent.tools.names import split
from symbi_sandbox_agent.tools.registry import ServerState, ToolRecord
from symbi_sandbox_agent.tools.service import ToolService

router = APIRouter(prefix="/v1/tools", tags=["tools"])
ADMIN = {ACCESS_EXTENSION: "admin"}


class ServerBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    server: str
    transport: Literal["stdio", "http"] = "stdio"
    image: str = ""
    command: list[str] = msgspec.field(default_factory=list)
    url: str = ""
    domain: str = ""
    #: The sandbox tier asked for; "" (or none): the risk assessment's. Never lower than the assessment.
    tier: str = ""
    env: dict[str, str] = msgspec.field(default_factory=dict)


class ApproveBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pin: str = ""


class RevokeBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: str = ""


def _tools(request: Request) -> ToolService:
    tools: ToolService | None = request.app.state.sandbox.service.tools
    if tools is None:
        raise ToolServerUnavailable("this host has no tool registry yet; retry in a moment")
    return tools


async def _body(request: Request, kind: type[Any]) -> Any:
    from symbi_common.errors import ValidationError

    raw = await request.body()
    try:
        return msgspec.json.decode(check_json_depth(raw) or b"{}", type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValidationError(str(exc), field="body") from None


def _record(name: str, record: ToolRecord) -> dict[str, Any]:
    return {
        "name": name,
        "status": record.status,
        "pin": record.seen_pin,
        "approved_pin": record.approved_pin,
        "verification": record.verification,
        "key_fingerprint": record.key_fingerprint,
        "flags": list(record.flags),
        "description": record.description,
    }


def _server(state: ServerState) -> dict[str, Any]:
    """The server as registered, with its sandbox tier and the risk assessment behind it (environment
    variables by name only: their values may be secrets)."""
    reg = state.registration
    if reg is None:
        return {"server": state.server, "registered": False}
    return {
        "server": reg.server,
        "transport": reg.transport,
        "image": reg.image,
        "url": reg.url,
        "domain": reg.domain,
        "env": sorted(reg.env),
        "tier": reg.tier,
        "requested_tier": reg.requested_tier,
        "assessed_tier": reg.assessed_tier,
        "risk_factors": list(reg.risk_factors),
        "registered_by": reg.registered_by,
    }


@router.post(
    "/servers", summary="Register an MCP server (an image pinned by digest + command, or a URL)", openapi_extra=ADMIN
)
async def add_server(request: Request) -> dict[str, Any]:
    body: ServerBody = await _body(request, ServerBody)
    reg = ToolServerRegistered(
        server=body.server,
        transport=body.transport,
        image=body.image,
        command=tuple(body.command),
        url=body.url,
        domain=body.domain,
        requested_tier=body.tier,
        env=body.env,
        registered_by=operator_of(request),
    )
    state = await _tools(request).register(reg)
    tools = [_record(f"{body.server}.{t}", r) for t, r in sorted(state.tools.items())]
    return {"server": body.server, "sandbox": _server(state), "tools": tools}


@router.delete(
    "/servers/{server}",
    summary="Remove a server: its sandbox stopped, its tools unknown; adding the name again starts fresh",
    openapi_extra=ADMIN,
)
async def remove_server(server: str, request: Request, reason: str = "") -> dict[str, Any]:
    removed = await _tools(request).remove(server, by=operator_of(request), reason=reason)
    return {"server": server, "removed": True, "tools": removed}


@router.get("", summary="Every tool: status, pin, SchemaPin verification and poisoning flags")
async def list_tools(request: Request) -> dict[str, Any]:
    return {"tools": [t.as_dict() for t in await _tools(request).list(refresh=True)]}


@router.get("/{name}", summary="One tool with its definition")
async def show_tool(name: str, request: Request) -> dict[str, Any]:
    tools = _tools(request)
    server, tool = split(name)  # (a malformed name is a bad request, and no subject wildcard reaches the store)
    found = [t for t in await tools.list(refresh=True) if t.name == name]
    state = await tools.registry.state(server, fresh=True)
    if not found or tool not in state.tools:
        from symbi_contracts.tools.errors import UnknownTool

        raise UnknownTool(f"no tool named {name!r}; `symbi tools list` shows them")
    return {
        **_record(name, state.tools[tool]),
        "server": _server(state),
        "definition": tools.definitions[server][tool],
    }


@router.post(
    "/{name}/approve", summary="Approve the tool's definition as listed now (or the pin given)", openapi_extra=ADMIN
)
async def approve_tool(name: str, request: Request) -> dict[str, Any]:
    body: ApproveBody = await _body(request, ApproveBody)
    return _record(name, await _tools(request).approve(name, body.pin, by=operator_of(request)))


@router.post(
    "/{name}/revoke", summary="Revoke the tool: no agent may call it until it is approved again", openapi_extra=ADMIN
)
async def revoke_tool(name: str, request: Request) -> dict[str, Any]:
    body: RevokeBody = await _body(request, RevokeBody)
    return _record(name, await _tools(request).revoke(name, by=operator_of(request), reason=body.reason))
