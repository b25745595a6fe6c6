"""The model gateway: an :class:`~symbi_sandbox_agent.egress.internal.InternalService` answering
``POST /v1/chat/completions`` (``stream: true``: server-sent events, passed on chunk by chunk),
``POST /v1/embeddings`` and ``GET /v1/models`` for sandboxes, with OpenAI-compatible errors.

A call: resolve the model; read the caller's tenant and budget from its task; estimate what the call may cost;
ask Cedar (``model.invoke`` on ``Model::"provider/model"``, what is left of the budgets in the context) and
reserve that much (:mod:`.ledger`); send it to the provider with the credential the host holds; reconcile the
reservation with the usage the provider reports — or release it when the call fails before anything came back.
Settling happens in the background (off the caller's path); :meth:`ModelGateway.drain` waits for it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import structlog
from symbi_common.decisions import Decision, DecisionRecord, DecisionRequest, Deny, EntityRef
from symbi_common.policy.hooks import UNDECIDED
from symbi_contracts.models.events import BudgetReconciled, BudgetReleased, BudgetReserved

from symbi_sandbox_agent.egress.internal import Caller, InternalRequest, InternalResponse
from symbi_sandbox_agent.models.budget import shortfalls
from symbi_sandbox_agent.models.callers import Budgeted, CallerDirectory
from symbi_sandbox_agent.models.catalog import Catalog, Route
from symbi_sandbox_agent.models.errors import (
    BadModelRequest,
    BudgetExceeded,
    ModelDenied,
    ModelError,
    ModelUnavailable,
    UnknownModel,
    UpstreamFailed,
)
from symbi_sandbox_agent.models.ledger import BudgetLedger, Hold
from symbi_sandbox_agent.models.pricing import (
    Spend,
    chat_prompt_tokens,
    cost,
    embedding_input_tokens,
    reservation,
    text_tokens,
)
from symbi_sandbox_agent.models.relay import (
    CALLER_STALL_S,
    MAX_CALL_S,
    MAX_ERROR_BYTES,
    MAX_REPLY_BYTES,
    Ending,
    Relay,
    read_at_most,
)
from symbi_sandbox_agent.models.upstream import Upstreams
from symbi_sandbox_agent.models.wire import (
    JSON,
    SSE,
    StreamTally,
    check_depth,
    encode,
    error_body,
    max_completion_tokens,
    parse_body,
    reply_text,
    usage_of,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")
#: A request body larger than this is parsed and counted on a thread; :data:`HEAVY_AT_ONCE` such at a time.
OFF_LOOP_BYTES = 64 * 1024
HEAVY_AT_ONCE = 2

Decide = Callable[[DecisionRequest], Awaitable[tuple[Decision, DecisionRecord]]]
#: The sandbox's paths and the provider's (relative to its base URL).
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}
UPSTREAM_PATHS = {"chat": "chat/completions", "embeddings": "embeddings"}
UNIT_NAMES = {"tokens": "token", "micro_usd": "money (micro-dollar)"}


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def error_response(err: ModelError) -> InternalResponse:
    data = error_body(err)
    headers = [("content-type", JSON)]
    retry = err.details.get("retry_after")
    if retry is not None:
        headers.append(("retry-after", str(max(1, round(float(retry))))))
    return InternalResponse(err.http_status, headers, _once(data), len(data))


@dataclass
class _Call:
    route: Route
    hold: Hold
    prompt_tokens: int
    response: httpx.Response
    stream: bool
    tally: StreamTally = field(default_factory=StreamTally)


class ModelGateway:
    """Serves model calls of sandboxes; ``decide`` is the host's enforcer (enforcement point: the gateway)."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        upstreams: Upstreams,
        ledger: BudgetLedger,
        callers: CallerDirectory,
        decide: Decide,
        default_max_tokens: int = 1024,
        max_request_bytes: int = 4 * 1024 * 1024,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        max_call_s: float = MAX_CALL_S,
        caller_stall_s: float = CALLER_STALL_S,
    ) -> None:
        self.catalog = catalog
        self.upstreams = upstreams
        self.ledger = ledger
        self.callers = callers
        self.decide = decide
        self.default_max_tokens = default_max_tokens
        self.max_request_bytes = max_request_bytes
        self.max_reply_bytes = max_reply_bytes
        #: How long a provider's answer may take to come in whole, and a stream may wait for its caller to read
        #: on (:mod:`.relay`); past either the call is cut off, its provider connection closed, charged whole.
        self.max_call_s = max_call_s
        self.caller_stall_s = caller_stall_s
        self._background: set[asyncio.Task[None]] = set()
        #: Large request bodies are parsed and counted on a thread, a few at a time (:meth:`_off_loop`).
        self._heavy = asyncio.Semaphore(HEAVY_AT_ONCE)

    # --- the HTTP face (InternalService) --------------------------------------------------------

    async def handle(self, caller: Caller, request: InternalRequest) -> InternalResponse:
        path = request.path.split("?", 1)[0]
        try:
            if path == "/v1/models" and request.method == "GET":
                data = encode(await self.list_models(caller))
                return InternalResponse(200, [("content-type", JSON)], _once(data), len(data))
            endpoint = ENDPOINTS.get(path)
            if endpoint is None or request.method != "POST":
                raise UnknownModel(f"{request.method} {path[:100]} is not served here; use POST /v1/chat/completions, "
                                   "POST /v1/embeddings or GET /v1/models")  # fmt: skip
            body = await self._off_loop(len(request.body), parse_body, request.body, self.max_request_bytes)
            call = await self._open(caller, endpoint, body, len(request.body))
            if call.stream:
                return InternalResponse(200, [("content-type", SSE), ("cache-control", "no-cache")], self._relay(call))
            data, _ = await self._read(call)
            return InternalResponse(call.response.status_code, [("content-type", JSON)], _once(data), len(data))
        except ModelError as err:
            return error_response(err)

    # --- the protocol op (models.complete) ------------------------------------------------------

    async def complete(self, caller: Caller, body: dict[str, Any]) -> tuple[dict[str, Any], DecisionRecord]:
        """One chat completion, not streamed: the provider's reply and the decision that allowed it."""
        if body.get("stream"):
            raise BadModelRequest("models.complete is not streamed; stream through http://models.symbi.internal/v1")
        call = await self._open(caller, "chat", check_depth(body))
        _, reply = await self._read(call)
        return reply, call.hold.record

    async def list_models(self, caller: Caller) -> dict[str, Any]:
        """The models the caller may call now (each decided like a call that reserves nothing)."""
        who = await self.callers.of(caller)
        budget = await self.ledger.context(who.tenant, who.agent_id, who.limit, Spend())
        listed = []
        for route in sorted(self.catalog.routes.values(), key=lambda r: r.name):
            decision, _ = await self.decide(self._question(who, route, "list", False, 0, budget))
            if not isinstance(decision, Deny):
                listed.append({"id": route.name, "object": "model", "owned_by": route.provider})
        return {"object": "list", "data": listed}

    # --- a call ---------------------------------------------------------------------------------

    def _question(
        self, who: Budgeted, route: Route, endpoint: str, stream: bool, max_tokens: int, budget: dict[str, Any]
    ) -> DecisionRequest:
        return DecisionRequest(
            principal=EntityRef(type="Agent", id=who.agent_id),
            action="model.invoke",
            resource=EntityRef(type="Model", id=route.name, attrs={"provider": route.provider}),
            context={
                "endpoint": endpoint,
                "stream": stream,
                "tenant": who.tenant,
                "max_tokens": max_tokens,
                "budget": budget,
            },
        )

    async def _off_loop(self, size: int, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` for a request body of ``size`` bytes: in place when small, else on a thread (a few at
        a time): parsing and counting megabytes of crafted JSON would hold up the event loop every run of the
        host shares."""
        if size <= OFF_LOOP_BYTES:
            return work(*args)
        async with self._heavy:
            return await asyncio.to_thread(work, *args)

    async def _open(self, caller: Caller, endpoint: str, body: dict[str, Any], size: int = 0) -> _Call:
        route = self.catalog.resolve(body.get("model"))
        who = await self.callers.of(caller)
        stream = endpoint == "chat" and body.get("stream") is True
        if endpoint == "chat":
            # Anything but a boolean could be read as true by the provider: a stream read as one reply counts
            # no completion tokens, and it would not be asked for its usage.
            if body.get("stream") is not None and not isinstance(body["stream"], bool):
                raise BadModelRequest(f"stream must be true or false, got {body['stream']!r:.100}")
            if stream and not isinstance(body.get("stream_options") or {}, dict):
                raise BadModelRequest("stream_options must be an object")
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                raise BadModelRequest("a chat completion needs messages: a list of {role, content}")
            per_choice = max_completion_tokens(body, self.default_max_tokens)
            prompt = await self._off_loop(size, chat_prompt_tokens, body)
            choices = body.get("n", 1)
            if not isinstance(choices, int) or isinstance(choices, bool) or not 1 <= choices <= 128:
                raise BadModelRequest(f"n must be a whole number from 1 to 128, got {choices!r:.100}")
            completion = per_choice * choices  # each choice may use max_tokens
        else:
            prompt, completion = await self._off_loop(size, embedding_input_tokens, body), 0
            if prompt == 0:
                raise BadModelRequest("an embeddings request needs input: a string or a list of strings")
        requested = reservation(route.price, prompt, completion)
        event = BudgetReserved(
            reservation_id=uuid.uuid4().hex,
            agent_id=who.agent_id,
            task_id=who.task_id,
            model=route.name,
            tokens=requested.tokens,
            micro_usd=requested.micro_usd,
        )

        async def ask(budget: dict[str, Any]) -> tuple[Decision, DecisionRecord]:
            return await self.decide(self._question(who, route, endpoint, stream, completion, budget))

        held = await self.ledger.reserve(who.tenant, who.limit, event, ask)
        if not isinstance(held, Hold):
            raise _refusal(who, route, *held)
        upstream: dict[str, Any] = {**body, "model": route.model}
        if endpoint == "chat":
            # The provider may not use more than was reserved, told in the one parameter it knows (a reasoning
            # model refuses max_tokens; a limit under the other name would be ignored, the completion unbounded).
            upstream.pop("max_tokens", None)
            upstream.pop("max_completion_tokens", None)
            upstream[route.completion_limit] = per_choice
        if stream:
            upstream["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        try:
            response = await self.upstreams.send(
                route.provider, UPSTREAM_PATHS[endpoint], encode(upstream), accept=SSE if stream else JSON
            )
        except BaseException as exc:
            if isinstance(exc, UpstreamFailed | ModelUnavailable) and exc.details.get("sent") is False:
                self._settle(
                    held, BudgetReleased(reservation_id=event.reservation_id, reason=f"not sent: {exc!r}"[:500])
                )
            else:  # sent (a timeout waiting for the answer, a cancellation): the provider may have done the work
                self._charge_whole(route, held, prompt)
            raise
        if response.status_code >= 400:
            try:
                error = await read_at_most(response, MAX_ERROR_BYTES) or b"(an error answer of more than 64 KiB)"
                detail = self.upstreams.scrub(route.provider, response.status_code, error)
            finally:
                await response.aclose()
            reason = f"provider {route.provider} answered {response.status_code}"
            self._settle(held, BudgetReleased(reservation_id=event.reservation_id, reason=reason))
            raise UpstreamFailed(f"{reason}: {detail}", upstream_status=response.status_code)
        return _Call(route, held, prompt, response, stream)

    async def _read(self, call: _Call) -> tuple[bytes, dict[str, Any]]:
        """The whole reply of a call that is not streamed; its reservation is reconciled (released if the
        reply never came; charged whole if the reply is too large to read, as what it reports is unknown)."""
        rid = call.hold.event.reservation_id
        try:
            async with asyncio.timeout(self.max_call_s) as deadline:  # a reply trickled forever is no reply
                data = await read_at_most(call.response, self.max_reply_bytes)
        except BaseException as exc:  # the provider answered: it did the work, whatever became of the reply
            log.warning("a model reply was not read; charged whole", reservation=rid, error=repr(exc))
            self._charge_whole(call.route, call.hold, call.prompt_tokens)
            if isinstance(exc, httpx.HTTPError):
                raise UpstreamFailed(f"the reply of provider {call.route.provider} broke off: {exc}") from None
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise UpstreamFailed(
                    f"the reply of provider {call.route.provider} did not come within {self.max_call_s:g} s"
                ) from None
            raise
        finally:
            await call.response.aclose()
        if data is None:
            self._charge_whole(call.route, call.hold, call.prompt_tokens)
            limit = self.max_reply_bytes
            raise UpstreamFailed(f"the reply of provider {call.route.provider} is larger than {limit} bytes")
        try:
            reply = parse_body(data, len(data))
        except BadModelRequest:
            reply = {}
        used = usage_of(reply)
        estimated = used is None
        if used is None:
            used = (call.prompt_tokens, text_tokens(reply_text(reply)))
        self._reconcile(call, used, estimated)
        return data, reply

    def _relay(self, call: _Call) -> Relay:
        """Pass a stream on as it comes; when it ends (or is closed, or breaks off) reconcile with its reported
        usage or what was counted, or release when nothing came at all."""

        def finish(sent: bool, ending: Ending) -> None:
            if call.tally.usage is not None:
                self._reconcile(call, call.tally.usage, False)
            elif ending in ("caller", "limit"):  # ended before the end: what the provider generated is unknown
                self._charge_whole(call.route, call.hold, call.prompt_tokens)
            elif sent:
                self._reconcile(call, (call.prompt_tokens, call.tally.text_tokens), True)
            else:
                reason = "the stream ended before any data"
                self._settle(call.hold, BudgetReleased(reservation_id=call.hold.event.reservation_id, reason=reason))

        return Relay(call.response, call.tally, finish, max_s=self.max_call_s, stall_s=self.caller_stall_s)

    def _reconcile(self, call: _Call, used: tuple[int, int], estimated: bool) -> None:
        self._settle(call.hold, _reconciled(call.route, call.hold, used, estimated))

    def _charge_whole(self, route: Route, hold: Hold, prompt: int) -> None:
        """Reconcile at the whole reservation (estimated): what the call used cannot be known."""
        self._settle(hold, _reconciled(route, hold, (prompt, max(hold.event.tokens - prompt, 0)), True))

    def _settle(self, hold: Hold, event: BudgetReconciled | BudgetReleased) -> None:
        task = asyncio.get_running_loop().create_task(self._settle_now(hold, event))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _settle_now(self, hold: Hold, event: BudgetReconciled | BudgetReleased) -> None:
        try:
            await self.ledger.settle(hold.aggregate_id, event)
        except Exception as exc:  # the reservation stays held: it counts against the budget (fail closed)
            log.error(
                "a budget reservation could not be settled", reservation=hold.event.reservation_id, error=repr(exc)
            )

    async def drain(self) -> None:
        """Wait until every reservation being settled is written."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()
        await self.upstreams.aclose()


def _refusal(
    who: Budgeted, route: Route, decision: Decision, record: DecisionRecord, budget: dict[str, Any]
) -> ModelError:
    """The typed error of a denied call: unavailable when no decision could be had, the budget it exceeds when a
    forbid matched and the call does not fit, else denied (the model is not allowed, or no budget is set)."""
    assert isinstance(decision, Deny)
    if decision.code in UNDECIDED:
        return ModelUnavailable(f"no policy decision for {route.name}: {decision.reason}", retry_after=1.0)
    short = shortfalls(budget)
    if decision.code == "forbidden" and short:
        s = short[0]
        err: ModelError = BudgetExceeded(
            f"the {s.scope} {UNIT_NAMES[s.unit]} budget of today ({who.agent_id if s.scope == 'agent' else who.tenant})"
            f" has {s.left} left; calling {route.name} would reserve {s.requested}",
            scope=s.scope,
            unit=s.unit,
            left=s.left,
            requested=s.requested,
            policies=",".join(decision.policies),
        )
    elif not budget.get("limited"):
        err = ModelDenied(
            f"calling {route.name} is denied: {decision.reason}; no budget applies to agent {who.agent_id} (tenant "
            f"{who.tenant}): give the agent a budget or set [models.tenants.{who.tenant}]",
            policies=",".join(decision.policies),
        )
    else:
        err = ModelDenied(f"calling {route.name} is denied: {decision.reason}", policies=",".join(decision.policies))
    err.record = record  # type: ignore[attr-defined]
    return err


def _reconciled(route: Route, hold: Hold, used: tuple[int, int], estimated: bool) -> BudgetReconciled:
    return BudgetReconciled(
        reservation_id=hold.event.reservation_id,
        input_tokens=used[0],
        output_tokens=used[1],
        micro_usd=cost(route.price, used[0], used[1]),
        estimated=estimated,
        agent_id=hold.event.agent_id,
        model=route.name,
    )
