"""The policy service's interfaces: HTTP under ``/v1`` and NATS commands ``cmd.policy.*``.

HTTP::

    POST   /v1/decisions                       a DecisionRequest -> Allow | Deny | AllowWithConditions
    POST   /v1/decisions:batch                 {"requests": [...]} -> {"decisions": [...], "policy_version"}
    POST   /v1/policy-sets                     register {"set_id", "cedar", "description"?} -> 201
    PUT    /v1/policy-sets/{id}                update {"cedar", "expected_revision"?}
    POST   /v1/policy-sets/{id}/retire         {"reason"?, "expected_revision"?}
    GET    /v1/policy-sets?include_retired=&min_version=
    GET    /v1/policy-sets/{id}?min_version=
    POST   /v1/policy-sets/{id}/what-if        {"cedar"? (absent: retire), "limit"?} -> the decisions that change

A policy that does not parse or validate is a 422 ``policy_rejected`` with Cedar's message and the
line. NATS: ``cmd.policy.<action>`` for decide, decide_batch, register, update, retire, get, list,
and what_if, the same bodies (with ``set_id``). The decision log of enforcement points comes from the
``DECISIONS`` stream, not a command (:mod:`symbi_policy.decision_intake`).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from fastapi import APIRouter, Request, Response
from symbi_common.bounds import check_ints, check_json_depth, parse_int
from symbi_common.commands import CommandMeta, CommandServer
from symbi_common.decisions import Decision, DecisionRequest
from symbi_common.errors import BadRequest, ValidationError
from symbi_common.openapi import FLAG, INT64, json_body, json_response, query_params
from symbi_common.policy.points import BatchResult
from symbi_common.streams import EVENTS_STREAM
from symbi_contracts.policy.commands import AGENT_EVENTS_CAUGHT_UP, CaughtUp, CaughtUpRequest

from symbi_policy.agent_events import AgentPolicyFollower
from symbi_policy.application import (
    DecideBatchRequest,
    GetSetRequest,
    ListSetsRequest,
    PolicyService,
    PolicySetPage,
    PolicySetView,
    RegisterSetRequest,
    RetireSetRequest,
    UpdateSetRequest,
    WhatIfRequest,
)
from symbi_policy.whatif import WhatIfReport

T = TypeVar("T")
_json = msgspec.json.Encoder()
router = APIRouter(prefix="/v1", tags=["policy"])


def _service(request: Request) -> PolicyService:
    service: PolicyService = request.app.state.policy
    return service


def _reply(value: Any, status: int = 200) -> Response:
    return Response(_json.encode(value), status_code=status, media_type="application/json")


async def _body(request: Request, type_: type[T]) -> T:
    try:
        body = msgspec.json.decode(check_json_depth(await request.body()) or b"{}", type=type_)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", field="(body)") from None
    check_ints(body)
    return body


def _same_id(body_id: str, path_id: str) -> str:
    if body_id and body_id != path_id:
        raise BadRequest("set_id in the body differs from the one in the path", field="set_id")
    return path_id


def _int(request: Request, name: str) -> int:
    return parse_int(request.query_params.get(name) or "0", name)


@router.post("/decisions", openapi_extra=json_body(DecisionRequest), responses={200: json_response(Decision)})
async def decide(request: Request) -> Response:
    """One decision against the active policy sets."""
    return _reply(await _service(request).decide(await _body(request, DecisionRequest)))


@router.post(
    "/decisions:batch", openapi_extra=json_body(DecideBatchRequest), responses={200: json_response(BatchResult)}
)
async def decide_batch(request: Request) -> Response:
    """Many decisions against one policy version."""
    return _reply(await _service(request).decide_batch(await _body(request, DecideBatchRequest)))


@router.post(
    "/policy-sets",
    status_code=201,
    openapi_extra=json_body(RegisterSetRequest),
    responses={201: json_response(PolicySetView)},
)
async def register(request: Request) -> Response:
    """Register a policy set; it is validated against the schema and active once this returns."""
    return _reply(await _service(request).register(await _body(request, RegisterSetRequest)), 201)


@router.put(
    "/policy-sets/{set_id}", openapi_extra=json_body(UpdateSetRequest), responses={200: json_response(PolicySetView)}
)
async def update(set_id: str, request: Request) -> Response:
    """Replace a policy set's text (a new revision)."""
    body = await _body(request, UpdateSetRequest)
    body = msgspec.structs.replace(body, set_id=_same_id(body.set_id, set_id))
    return _reply(await _service(request).update(body))


@router.post(
    "/policy-sets/{set_id}/retire",
    openapi_extra=json_body(RetireSetRequest),
    responses={200: json_response(PolicySetView)},
)
async def retire(set_id: str, request: Request) -> Response:
    """Retire a policy set: it no longer takes part in decisions."""
    body = await _body(request, RetireSetRequest)
    body = msgspec.structs.replace(body, set_id=_same_id(body.set_id, set_id))
    return _reply(await _service(request).retire(body))


@router.get(
    "/policy-sets",
    responses={200: json_response(PolicySetPage)},
    openapi_extra=query_params(include_retired=FLAG, min_version=INT64),
)
async def list_sets(request: Request) -> Response:
    include = (request.query_params.get("include_retired") or "").lower() in ("1", "true", "yes")
    page = await _service(request).page(
        ListSetsRequest(include_retired=include, min_version=_int(request, "min_version"))
    )
    return _reply(page)


@router.get(
    "/policy-sets/{set_id}",
    responses={200: json_response(PolicySetView)},
    openapi_extra=query_params(min_version=INT64),
)
async def get_set(set_id: str, request: Request) -> Response:
    view = await _service(request).get(GetSetRequest(set_id=set_id, min_version=_int(request, "min_version")))
    return _reply(view)


@router.post(
    "/policy-sets/{set_id}/what-if",
    openapi_extra=json_body(WhatIfRequest),
    responses={200: json_response(WhatIfReport)},
)
async def what_if(set_id: str, request: Request) -> Response:
    """Which recorded decisions the proposed text would change, without activating it."""
    raw = check_json_depth(await request.body())
    try:
        fields = msgspec.json.decode(raw or b"{}", type=dict[str, Any])
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", field="(body)") from None
    fields["set_id"] = _same_id(str(fields.get("set_id") or ""), set_id)
    try:
        body = msgspec.convert(fields, WhatIfRequest)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"request body: {exc}") from None
    check_ints(body)
    return _reply(await _service(request).what_if(body))


# --- NATS -------------------------------------------------------------------------------------------------


def register_commands(server: CommandServer, service: PolicyService) -> None:
    """Serve ``cmd.policy.*`` with ``service``."""

    async def decide(request: DecisionRequest, meta: CommandMeta) -> Any:
        return await service.decide(request)

    async def decide_batch(request: DecideBatchRequest, meta: CommandMeta) -> Any:
        return await service.decide_batch(request)

    async def register(request: RegisterSetRequest, meta: CommandMeta) -> Any:
        return await service.register(request)

    async def update(request: UpdateSetRequest, meta: CommandMeta) -> Any:
        return await service.update(request)

    async def retire(request: RetireSetRequest, meta: CommandMeta) -> Any:
        return await service.retire(request)

    async def get(request: GetSetRequest, meta: CommandMeta) -> Any:
        return await service.get(request)

    async def list_(request: ListSetsRequest, meta: CommandMeta) -> Any:
        return await service.page(request)

    async def what_if(request: WhatIfRequest, meta: CommandMeta) -> Any:
        return await service.what_if(request)

    server.register("decide", DecisionRequest, decide)
    server.register("decide_batch", DecideBatchRequest, decide_batch)
    server.register("register", RegisterSetRequest, register)
    server.register("update", UpdateSetRequest, update)
    server.register("retire", RetireSetRequest, retire)
    server.register("get", GetSetRequest, get)
    server.register("list", ListSetsRequest, list_)
    server.register("what_if", WhatIfRequest, what_if)


def register_caught_up(server: CommandServer, js: Any, agents: AgentPolicyFollower) -> None:
    """Serve ``cmd.policy.agent_events_caught_up``; a sequence past the stream's end is refused at once (no
    write answered with it, so waiting for it could only time out)."""

    async def caught_up(request: CaughtUpRequest, meta: CommandMeta) -> CaughtUp:
        if request.sequence > agents.position:
            last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
            if request.sequence > last:
                raise ValidationError(
                    f"{request.sequence} is past the end of the event stream (at {last})", field="sequence"
                )
        return await agents.caught_up(request, meta)

    server.register(AGENT_EVENTS_CAUGHT_UP, CaughtUpRequest, caught_up)
