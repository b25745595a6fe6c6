"""The lifecycle service's interfaces: an HTTP API under ``/v1/agents`` and NATS commands.

HTTP::

    POST /v1/agents                         register ({"agent_id"?, "config": {...}} or {"agent_id"?,
                                            "definition": "<.symbi text>", "file"?}) -> 201, the agent
    POST /v1/agents/{id}/configure          {"config": {...}} or {"definition": "..."} (Ready or Suspended agents)
    POST /v1/agents/{id}/assign-task        {"task_id", "description"?}
    POST /v1/agents/{id}/complete-task      {"task_id"?, "outcome"?}
    POST /v1/agents/{id}/suspend            {"reason"?, "policy_id"?}
    POST /v1/agents/{id}/resume             {"reason"?}
    POST /v1/agents/{id}/terminate          {"reason"?}
    GET  /v1/agents/{id}?min_sequence=N
    GET  /v1/agents?state=&name=&limit=&cursor=&min_sequence=
    GET  /v1/agents/{id}/events?after_version=&limit=&min_sequence=

Commands answer with the agent as the command left it, including ``sequence`` (the stream sequence
of its last event); pass it as ``min_sequence`` to a query to read your own write from the read
model. A body that does not decode is a 400 naming the field; a config that decodes but is invalid
(or a definition with problems) registers the agent in state Failed with ``errors`` naming every
bad field, or giving file, line, column, excerpt and hint for definitions (201). Registration and
configuration are gated by the ``agent.register`` / ``agent.configure`` policy decisions: a denial is
recorded (``agent.denied`` / ``agent.configure_denied``) and answered with 403 and the reason. Errors have the
body ``{"error": {"code", "message", "details"}}`` with the status of the typed error (404, 409 for an
illegal transition or an existing id, 422 for invalid arguments).

NATS: ``cmd.lifecycle.<action>`` for register, configure, assign_task, complete_task, suspend, resume,
terminate (the same bodies plus ``agent_id``), get, list and history, served in a queue group.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import msgspec
from fastapi import APIRouter, Request, Response
from symbi_common.bounds import check_ints, check_json_depth, check_no_nul, parse_int, query_text
from symbi_common.commands import CommandMeta, CommandServer
from symbi_common.errors import BadRequest
from symbi_common.openapi import INT64, TEXT, json_body, json_response, query_params
from symbi_common.operator_auth import acting_for, operator_of
from symbi_contracts.lifecycle.commands import AgentRequest, AssignTaskRequest, CompleteTaskRequest, SuspendRequest
from symbi_contracts.wire import decode_json

from symbi_lifecycle.application import (
    CommandContext,
    ConfigureRequest,
    GetRequest,
    HistoryRequest,
    LifecycleService,
    ListRequest,
    RegisterRequest,
    ResumeRequest,
    TerminateRequest,
)
from symbi_lifecycle.projections import AgentPage, AgentView

R = TypeVar("R", bound=AgentRequest)
_json = msgspec.json.Encoder()

router = APIRouter(prefix="/v1/agents", tags=["agents"])


def _service(request: Request) -> LifecycleService:
    service: LifecycleService = request.app.state.lifecycle
    return service


def _reply(value: Any, context: CommandContext | None = None, status: int = 200) -> Response:
    headers = {"X-Correlation-Id": context.correlation_id} if context is not None else None
    return Response(_json.encode(value), status_code=status, media_type="application/json", headers=headers)


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    return parse_int(raw, name)


async def _change(request: Request, type_: type[R], agent_id: str | None = None, status: int = 200) -> Response:
    body = decode_json(check_json_depth(await request.body()), type_)
    check_ints(body)
    check_no_nul(body)  # the read model (PostgreSQL) could not store it: refused before it becomes an event
    if agent_id is not None:
        if body.agent_id and body.agent_id != agent_id:
            raise BadRequest("agent_id in the body differs from the one in the path", field="agent_id")
        body = msgspec.structs.replace(body, agent_id=agent_id)
    context = CommandContext.from_headers(request.headers)
    # The acting user is the authenticated operator; another one (``X-Symbi-User``) only for an admin.
    context = dataclasses.replace(context, user=acting_for(request, context.user) or operator_of(request))
    view = await _service(request).handle(body, context)
    return _reply(view, context, status)


@router.post(
    "",
    status_code=201,
    openapi_extra=json_body(RegisterRequest),
    responses={201: json_response(AgentView, "The agent as registered: Ready, or Failed with errors")},
)
async def register(request: Request) -> Response:
    """Register an agent: Ready if its config is valid, Failed (with every bad field) otherwise."""
    return await _change(request, RegisterRequest, status=201)


@router.post(
    "/{agent_id}/configure", openapi_extra=json_body(ConfigureRequest), responses={200: json_response(AgentView)}
)
async def configure(agent_id: str, request: Request) -> Response:
    """Replace a Ready or Suspended agent's configuration (validated, then gated by an agent.configure decision)."""
    return await _change(request, ConfigureRequest, agent_id)


@router.post(
    "/{agent_id}/assign-task", openapi_extra=json_body(AssignTaskRequest), responses={200: json_response(AgentView)}
)
async def assign_task(agent_id: str, request: Request) -> Response:
    """Ready → Running."""
    return await _change(request, AssignTaskRequest, agent_id)


@router.post(
    "/{agent_id}/complete-task", openapi_extra=json_body(CompleteTaskRequest), responses={200: json_response(AgentView)}
)
async def complete_task(agent_id: str, request: Request) -> Response:
    """Running → Ready."""
    return await _change(request, CompleteTaskRequest, agent_id)


@router.post("/{agent_id}/suspend", openapi_extra=json_body(SuspendRequest), responses={200: json_response(AgentView)})
async def suspend(agent_id: str, request: Request) -> Response:
    """Running → Suspended (policy violation)."""
    return await _change(request, SuspendRequest, agent_id)


@router.post("/{agent_id}/resume", openapi_extra=json_body(ResumeRequest), responses={200: json_response(AgentView)})
async def resume(agent_id: str, request: Request) -> Response:
    """Suspended → Running (policy cleared)."""
    return await _change(request, ResumeRequest, agent_id)


@router.post(
    "/{agent_id}/terminate", openapi_extra=json_body(TerminateRequest), responses={200: json_response(AgentView)}
)
async def terminate(agent_id: str, request: Request) -> Response:
    """Ready, Suspended or Failed → Terminated."""
    return await _change(request, TerminateRequest, agent_id)


@router.get(
    "",
    responses={200: json_response(AgentPage)},
    openapi_extra=query_params(state=TEXT, name=TEXT, limit=INT64, cursor=TEXT, min_sequence=INT64),
)
async def list_agents(request: Request) -> Response:
    """A page of agents (keyset paging by id); filters ``state`` and ``name``."""
    q = request.query_params
    page = await _service(request).page(
        ListRequest(
            state=query_text(q.get("state"), "state"),
            name=query_text(q.get("name"), "name"),
            limit=_int(request, "limit", 50),
            cursor=query_text(q.get("cursor"), "cursor"),
            min_sequence=_int(request, "min_sequence", 0),
        )
    )
    return _reply(page)


@router.get("/{agent_id}", responses={200: json_response(AgentView)}, openapi_extra=query_params(min_sequence=INT64))
async def get_agent(agent_id: str, request: Request) -> Response:
    """One agent from the read model (``min_sequence`` waits for the projection)."""
    view = await _service(request).get(GetRequest(agent_id=agent_id, min_sequence=_int(request, "min_sequence", 0)))
    return _reply(view)


@router.get("/{agent_id}/events", openapi_extra=query_params(after_version=INT64, limit=INT64, min_sequence=INT64))
async def agent_events(agent_id: str, request: Request) -> Response:
    """The agent's verified, decrypted history, oldest first."""
    events = await _service(request).history(
        HistoryRequest(
            agent_id=agent_id,
            after_version=_int(request, "after_version", 0),
            limit=_int(request, "limit", 100),
            min_sequence=_int(request, "min_sequence", 0),
        )
    )
    return _reply({"items": events})


# --- NATS -------------------------------------------------------------------------------------------

CHANGE_COMMANDS: dict[str, type[AgentRequest]] = {
    "register": RegisterRequest,
    "configure": ConfigureRequest,
    "assign_task": AssignTaskRequest,
    "complete_task": CompleteTaskRequest,
    "suspend": SuspendRequest,
    "resume": ResumeRequest,
    "terminate": TerminateRequest,
}


def register_commands(server: CommandServer, service: LifecycleService) -> None:
    """Serve ``cmd.lifecycle.*`` with ``service``."""

    async def change(request: AgentRequest, meta: CommandMeta) -> Any:
        check_no_nul(request)
        return await service.handle(request, CommandContext.from_headers(meta.headers))

    for action, request_type in CHANGE_COMMANDS.items():
        server.register(action, request_type, change)

    async def get(request: GetRequest, meta: CommandMeta) -> Any:
        return await service.get(request)

    async def list_(request: ListRequest, meta: CommandMeta) -> Any:
        return await service.page(request)

    async def history(request: HistoryRequest, meta: CommandMeta) -> Any:
        return {"items": await service.history(request)}

    server.register("get", GetRequest, get)
    server.register("list", ListRequest, list_)
    server.register("history", HistoryRequest, history)
