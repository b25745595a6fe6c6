"""The scheduler's interfaces: an HTTP API under ``/v1`` and NATS commands ``cmd.scheduler.*``.

HTTP::

    POST /v1/tasks                     {"agent_id", "input"? | "input_base64"?, "priority"?, "resources"?, "task_id"?}
                                       -> 201, the task (queued)
    GET  /v1/tasks?state=&agent=&limit=50&after=
                                       the tasks (queued by priority, running, finished newest first), filtered
                                       by state (queued|running|finished) and agent: {"items", "total",
                                       "next_after"}; pass ``next_after`` back as ``after`` for the next page
                                       (null on the last page); a task that stays in its state is listed once
    GET  /v1/tasks/{id}?wait=0         the task: status, attempt, host, tier, outcome, exit code, decision;
                                       with ``wait`` (seconds, at most 30) answered once it has ended, or then
    GET  /v1/tasks/{id}/output?stream=stdout&after=0&max_bytes=262144&wait=0
                                       a page of the latest attempt's output from byte ``after`` (base64; at most
                                       512 KiB), ``next_offset``, ``done`` (ended and no page left), and once ended
                                       the size and SHA-256 the sandbox reported (``intact``); with ``wait``,
                                       answered once there is output past ``after`` or the task has ended, or then
    POST /v1/tasks/{id}/cancel         {"reason"?}: withdraw a queued task; a placed one gets a recorded stop
                                       request (who, why, attempt) and its run is stopped or never starts
    GET  /v1/status                    queue depths, hosts and their free capacity, running tasks

NATS: ``cmd.scheduler.submit|get|output|cancel|status`` with the same bodies (plus ``task_id``), served
in a queue group by every replica. Errors are ``{"error": {"code", "message", "details"}}`` with the
status of the typed error (400 undecodable, 404 unknown agent or task, 409 agent cannot take tasks or
task already exists or finished, 422 invalid field).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from fastapi import APIRouter, Request, Response
from symbi_common.bounds import check_ints, check_json_depth, parse_int, query_text
from symbi_common.commands import CommandMeta, CommandServer
from symbi_common.openapi import INT64, TEXT, json_body, json_response, query_params
from symbi_common.operator_auth import operator_of
from symbi_contracts.wire import decode_json

from symbi_scheduler.application import (
    CancelRequest,
    OutputRequest,
    OutputView,
    SchedulerService,
    StatusRequest,
    SubmitRequest,
    TaskQuery,
    TaskView,
)
from symbi_scheduler.listing import DEFAULT_LIMIT, STATES, TaskList
from symbi_scheduler.projections import OUTPUT_PAGE_BYTES

T = TypeVar("T")
_json = msgspec.json.Encoder()

router = APIRouter(prefix="/v1", tags=["tasks"])


def _service(request: Request) -> SchedulerService:
    service: SchedulerService = request.app.state.scheduler
    return service


def _reply(value: Any, status: int = 200) -> Response:
    return Response(_json.encode(value), status_code=status, media_type="application/json")


def _who(headers: Any) -> str:
    return str(headers.get("x-submitted-by") or headers.get("Symbi-Submitted-By") or "api")[:128]


def _operator_who(request: Request) -> str:
    """Who submits or cancels over HTTP: the authenticated operator, then the caller's own label
    (``X-Submitted-By``, e.g. ``console:alice``) after "via"; the label alone names no one."""
    operator = operator_of(request) or "api"
    label = request.headers.get("x-submitted-by", "")
    return (f"{operator} via {label}" if label and label != operator else operator)[:128]


@router.post(
    "/tasks",
    status_code=201,
    openapi_extra=json_body(SubmitRequest),
    responses={201: json_response(TaskView, "The task, queued")},
)
async def submit(request: Request) -> Response:
    """Queue a task for an agent; its input reaches the workload on stdin, its stdout is the result."""
    body = decode_json(check_json_depth(await request.body()), SubmitRequest)
    check_ints(body)
    return _reply(await _service(request).submit(body, submitted_by=_operator_who(request)), 201)


@router.get(
    "/tasks",
    responses={200: json_response(TaskList)},
    openapi_extra=query_params(state={"type": "string", "enum": list(STATES)}, agent=TEXT, limit=INT64, after=TEXT),
)
async def tasks(request: Request) -> Response:
    """The tasks of this replica's state: queued by priority, running, finished newest first."""
    q = request.query_params
    limit = parse_int(q.get("limit") or str(DEFAULT_LIMIT), "limit")
    state, agent = query_text(q.get("state"), "state"), query_text(q.get("agent"), "agent")
    after = query_text(q.get("after"), "after")
    return _reply(_service(request).tasks(state=state, agent=agent, limit=limit, after=after))


@router.get("/tasks/{task_id}", responses={200: json_response(TaskView)}, openapi_extra=query_params(wait=INT64))
async def get_task(task_id: str, request: Request) -> Response:
    """One task as the scheduler sees it; with ``wait`` (seconds, at most 30), once it has ended or then."""
    wait = parse_int(request.query_params.get("wait") or "0", "wait")
    return _reply(await _service(request).get(TaskQuery(task_id=task_id, wait=wait)))


@router.get(
    "/tasks/{task_id}/output",
    responses={200: json_response(OutputView)},
    openapi_extra=query_params(
        stream={"type": "string", "enum": ["stdout", "stderr"]}, after=INT64, max_bytes=INT64, wait=INT64
    ),
)
async def task_output(task_id: str, request: Request) -> Response:
    """The latest attempt's output on ``stream`` from byte ``after`` on; with ``wait`` (seconds, at most 30), once
    there is some or the task has ended, or then."""
    q = request.query_params
    after = parse_int(q.get("after") or "0", "after")
    max_bytes = parse_int(q.get("max_bytes") or str(OUTPUT_PAGE_BYTES), "max_bytes")
    wait = parse_int(q.get("wait") or "0", "wait")
    stream = q.get("stream") or "stdout"
    body = OutputRequest(task_id=task_id, stream=stream, after=after, max_bytes=max_bytes, wait=wait)
    return _reply(await _service(request).output(body))


class _CancelBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: str = "cancelled on request"


@router.post("/tasks/{task_id}/cancel", openapi_extra=json_body(_CancelBody), responses={200: json_response(TaskView)})
async def cancel_task(task_id: str, request: Request) -> Response:
    """Withdraw a queued task; a running one is stopped on its host and completes as killed."""
    body = decode_json(check_json_depth(await request.body()), _CancelBody)
    view = await _service(request).cancel(CancelRequest(task_id=task_id, reason=body.reason), _operator_who(request))
    return _reply(view)


@router.get("/status")
async def status(request: Request) -> Response:
    """Queue depths per priority, hosts with their free capacity, running tasks, and who holds the lease."""
    return _reply(_service(request).status())


def register_commands(server: CommandServer, service: SchedulerService) -> None:
    """Serve ``cmd.scheduler.*`` with ``service``."""

    async def submit_(request: SubmitRequest, meta: CommandMeta) -> Any:
        return await service.submit(request, submitted_by=_who(meta.headers))

    async def get_(request: TaskQuery, meta: CommandMeta) -> Any:
        return await service.get(request)

    async def output_(request: OutputRequest, meta: CommandMeta) -> Any:
        return await service.output(request)

    async def cancel_(request: CancelRequest, meta: CommandMeta) -> Any:
        return await service.cancel(request, _who(meta.headers))

    async def status_(request: StatusRequest, meta: CommandMeta) -> Any:
        return service.status()

    server.register("submit", SubmitRequest, submit_)
    server.register("get", TaskQuery, get_)
    server.register("output", OutputRequest, output_)
    server.register("cancel", CancelRequest, cancel_)
    server.register("status", StatusRequest, status_)
