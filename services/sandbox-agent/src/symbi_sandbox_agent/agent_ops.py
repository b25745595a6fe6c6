"""Serving the agent channel protocol, version 1 (docs/agent-protocol.md), for one run.

The same answer path for the run's socket and its stdio: parse the request, refuse what cannot be served
(typed), decide it through the gateway's one enforcer, perform it as the agent the *listener* belongs to,
record it as ``execution.action`` and answer. A denial is answered with the typed error ``denied`` and
recorded with outcome ``refused``: over this protocol the run goes on (the legacy ``@symbi`` requests keep
the hold-and-freeze of :mod:`symbi_sandbox_agent.gateway`). Requests are served concurrently, up to the
channel's in-flight bound.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from symbi_common.decisions import DecisionRecord, DecisionRequest, Deny
from symbi_common.errors import InfrastructureError, PolicyDenied, SymbiError
from symbi_common.policy.conditions import redact
from symbi_common.policy.hooks import UNDECIDED
from symbi_common.telemetry import traced
from symbi_contracts.agent_protocol import (
    ARGS,
    MAX_IN_FLIGHT,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_DEPTH,
    OPS,
    SUPPORTED_VERSIONS,
    Error,
    Hello,
    KnowledgeQuery,
    KnowledgeShare,
    MemoryForget,
    MemoryRecall,
    MemoryStore,
    Reply,
    Request,
    RequestId,
    Result,
    error,
)
from symbi_contracts.context.commands import Retrieved
from symbi_contracts.sandbox_agent.events import ActionOutcome, ExecutionAction

from symbi_sandbox_agent.actions import (
    RequestLine,
    carries_agent_id,
    check_against_schema,
    check_context,
    id_of,
    memory_question,
    read_result,
)
from symbi_sandbox_agent.data_ops import DATA_OPS, DataOps
from symbi_sandbox_agent.errors import ActionRequestError
from symbi_sandbox_agent.http_ops import HttpOps
from symbi_sandbox_agent.message_ops import ARGS as MESSAGE_OPS
from symbi_sandbox_agent.message_ops import MessageOps
from symbi_sandbox_agent.metrics import ACTIONS
from symbi_sandbox_agent.model_ops import MODEL_OPS, ModelOps
from symbi_sandbox_agent.recorder import action_fits, unrecordable
from symbi_sandbox_agent.run_ports import RunGateway
from symbi_sandbox_agent.tool_ops import TOOL_OPS, ToolOps

log = structlog.get_logger(__name__)
#: Requests one run may send over the protocol; later ones are answered ``too_many_requests``.
MAX_REQUESTS_V1 = 100_000
#: How long a performing service may take.
PERFORM_TIMEOUT_S = 10.0
#: Suggested wait before asking again when no decision or no service could be had.
RETRY_AFTER_S = 1.0


class ProtocolServer:
    """Answers the run's protocol requests; ``channel`` is ``socket`` or ``stdio`` (told in ``hello``)."""

    def __init__(self, gateway: RunGateway) -> None:
        self.gateway = gateway
        self.served = 0
        self.data = DataOps(gateway, self._record, self.record_fits)
        self.tool_ops = ToolOps(self, gateway.decide, lambda: gateway.agent.tools, self.record_fits)
        self.model_ops = ModelOps(
            self, gateway.task_id, gateway.run.spec.tier, gateway.run.spec.attempt, lambda: gateway.agent.models
        )
        self._messages: MessageOps | None = None
        self.http = HttpOps(gateway.run, self._record)

    @property
    def messages(self) -> MessageOps:
        if self._messages is None:
            self._messages = MessageOps(self.gateway.agent.rt, self.gateway.run, self._record, self.record_fits)
        return self._messages

    @property
    def agent_id(self) -> str:
        return self.gateway.run.agent_id or "unknown"

    async def written(self, reply: Reply, ok: bool) -> None:
        """``reply`` reached the agent's channel (``ok``) or could not: what it handed over is committed or
        handed back (messages: delivery is acknowledged only once the agent has its answer)."""
        if self._messages is not None:
            await self._messages.written(reply, ok)

    async def answer(self, line: RequestLine, channel: str) -> Reply:
        """The answer to one request line; a fault of the gateway (e.g. its record could not be stored) is
        the typed error ``internal``, so the caller is never left waiting."""
        try:
            return await self._answer(line, channel)
        except Exception as exc:
            log.exception("serving a protocol request failed", task_id=self.gateway.task_id)
            # Only the error's type: its text may hold what the agent sent (a URL, a header, a credential), and
            # the recent errors are shown on /readyz.
            self.gateway.agent.rt.note_error(f"channel request of {self.gateway.task_id}: {type(exc).__name__}")
            return error(
                id_of(line.body), "internal", f"the gateway could not serve the request ({type(exc).__name__})"
            )

    async def _answer(self, line: RequestLine, channel: str) -> Reply:
        self.served += 1
        seq = self.gateway.next_seq()
        if self.served > MAX_REQUESTS_V1:
            return error(id_of(line.body), "too_many_requests", f"a run may send at most {MAX_REQUESTS_V1} requests")
        if line.too_long:
            message = f"a request may have at most {MAX_REQUEST_BYTES} bytes"
            await self._record(seq, "", "", {}, None, "failed", f"request_too_large: {message}")
            return error(None, "request_too_large", message, max_request_bytes=MAX_REQUEST_BYTES)
        if line.too_deep:  # (not decoded at all, not even for its id: that is what would recurse)
            message = f"a request may nest lists or objects at most {MAX_REQUEST_DEPTH} levels deep"
            await self._record(seq, "", "", {}, None, "failed", f"malformed_request: {message}")
            return error(None, "malformed_request", message, max_request_depth=MAX_REQUEST_DEPTH)
        try:
            request = msgspec.json.decode(line.body, type=Request)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return await self._refuse(seq, id_of(line.body), "", "malformed_request", f"not a request: {exc}")
        except UnicodeDecodeError as exc:
            message = f"not a request: invalid UTF-8 ({exc.reason}) at byte {exc.start}"
            return await self._refuse(seq, None, "", "malformed_request", message)
        if request.v not in SUPPORTED_VERSIONS:
            return error(
                request.id,
                "unsupported_version",
                f"protocol version {request.v} is not spoken here",
                supported=list(SUPPORTED_VERSIONS),
            )
        op = OPS.get(request.op)
        if request.agent_id is not None or carries_agent_id(line.body):
            message = (
                f"a request may not carry agent_id (it carried {request.agent_id!r:.80}); the gateway knows "
                f"the caller by its channel: {self.agent_id}"
            )
            return await self._refuse(seq, request.id, op.action if op else "", "identity_refused", message)
        try:
            check_context(request.context)  # so that its record can always be stored (and Cedar can hold it)
        except ActionRequestError as err:
            return await self._refuse(seq, request.id, op.action if op else "", err.code, err.message)
        if op is None:
            message = f"{request.op[:64]!r} is not an operation; use one of {', '.join(OPS)}"
            return await self._refuse(seq, request.id, "", "unknown_op", message)
        if request.op == "hello":
            return self._hello(request, channel)
        if request.op in MESSAGE_OPS:  # the bus between agents (message_ops)
            return await self.messages.answer(seq, request)
        if request.op in DATA_OPS:  # data.* (data_ops): confined to the run's grants, then decided
            return await self.data.answer(seq, request, self.agent_id)
        if request.op in TOOL_OPS:
            return await self.tool_ops.answer(seq, request, op.action)
        if request.op in MODEL_OPS:
            return await self.model_ops.answer(seq, request)
        if request.op == "http.request":  # through the run's egress proxy (http_ops)
            return await self.http.answer(seq, request)
        try:
            args = msgspec.convert(request.args, ARGS[request.op])
        except msgspec.ValidationError as exc:
            return await self._refuse(seq, request.id, op.action, "malformed_request", f"args of {request.op}: {exc}")
        try:
            question = memory_question(self.agent_id, request, args)
        except ActionRequestError as err:
            return await self._refuse(seq, request.id, op.action, "malformed_request", err.message)
        try:
            check_against_schema(question)
        except ActionRequestError as err:
            return await self._refuse(seq, request.id, op.action, "invalid_request", err.message, question=question)
        attributes: dict[str, str | int] = {"symbi.task_id": self.gateway.task_id, "symbi.action.seq": seq}
        with traced(f"action.{request.op}", attributes=attributes) as span:
            decision, record = await self.gateway.decide(question)
            span.set_attribute("symbi.decision", record.effect)
            return await self._decided(seq, request, question, args, decision, record)

    async def _decided(
        self, seq: int, request: Request, question: DecisionRequest, args: Any, decision: Any, record: DecisionRecord
    ) -> Reply:
        if isinstance(decision, Deny):
            if decision.code in UNDECIDED:
                detail = f"unavailable: {decision.code}: {decision.reason}"
                await self._record(
                    seq, question.action, question.resource.id, question.context, record, "failed", detail
                )
                return error(request.id, "unavailable", decision.reason, retry_after=RETRY_AFTER_S, cause=decision.code)
            await self._record(
                seq, question.action, question.resource.id, question.context, record, "refused", decision.reason
            )
            return error(
                request.id,
                "denied",
                f"{request.op} on {question.resource.id!r} is denied: {decision.reason}",
                policies=list(decision.policies),
                policy_version=decision.policy_version,
            )
        if not self.record_fits(seq, question.action, question.resource.id, question.context, record):
            return await self._unrecordable(seq, request.id, question.action, record)
        try:
            result = await self._perform(args)
        except SymbiError as err:
            code, extra = _code_of(err)
            detail = f"{code}: {err.message}"
            await self._record(seq, question.action, question.resource.id, question.context, record, "failed", detail)
            return error(request.id, code, err.message, **extra)
        if record.conditions:
            result = redact(result, record.conditions)
        await self._record(seq, question.action, question.resource.id, question.context, record, "allowed", request.op)
        return Result(id=request.id, result=result)

    def _hello(self, request: Request, channel: str) -> Reply:
        try:
            hello = msgspec.convert(request.args, Hello)
        except msgspec.ValidationError as exc:
            return error(request.id, "malformed_request", f"args of hello: {exc}")
        common = sorted(set(hello.versions) & set(SUPPORTED_VERSIONS))
        if not common:
            return error(
                request.id, "unsupported_version", "no protocol version in common", supported=list(SUPPORTED_VERSIONS)
            )
        return Result(
            id=request.id,
            result={
                "version": common[-1],
                "agent_id": self.agent_id,
                "task_id": self.gateway.task_id,
                "channel": channel,
                "ops": {name: self._performed(name) for name in OPS},
                "max_request_bytes": MAX_REQUEST_BYTES,
                "max_in_flight": MAX_IN_FLIGHT,
            },
        )

    def _performed(self, op: str) -> bool:
        """Whether this run can have ``op`` performed: tools and models need them configured on the host,
        ``http.request`` a definition that allows network access; the rest always (then decided by policy)."""
        if op in TOOL_OPS:
            return self.gateway.agent.tools is not None
        if op in MODEL_OPS:
            return self.gateway.agent.models is not None
        if op == "http.request":
            return self.gateway.run.egress is not None
        return True

    async def _perform(self, args: Any) -> dict[str, Any]:
        """Perform an allowed operation through the context service, as the listener's agent."""
        client = self.gateway.agent.rt.client
        agent, task_id = self.agent_id, self.gateway.task_id
        min_sequence = self.gateway.last_write

        async def call(command: str, body: dict[str, Any]) -> dict[str, Any]:
            found: dict[str, Any] = await client.call("context", command, body, dict, timeout=PERFORM_TIMEOUT_S)
            return found

        if isinstance(args, MemoryStore):
            memory: dict[str, Any] = {
                "kind": args.kind,
                "text": args.text,
                "tags": list(args.tags),
                "metadata": {**args.metadata, "collection": args.collection},
                "origin": {"task_id": task_id},
            }
            if args.ttl_s is not None:
                memory["ttl_s"] = args.ttl_s
            if args.memory_id is not None:  # the workload's id: its retries store the memory once
                memory["id"] = args.memory_id
            written = await call("store", {"agent_id": agent, "memories": [memory]})
            ids = list(written.get("ids", []))
            self.gateway.saw_write(int(written.get("sequence", 0)))
            return {"memory_id": ids[0] if ids else None, "ids": ids, "sequence": written.get("sequence", 0)}
        if isinstance(args, MemoryRecall):
            body: dict[str, Any] = {
                "agent_id": agent,
                "query": args.query,
                "limit": args.limit,
                "kinds": list(args.kinds),
                "tags": list(args.tags),
                "min_sequence": min_sequence,
            }
            if args.collection != "*":
                body["metadata"] = {"collection": args.collection}
            return read_result(msgspec.convert(await call("retrieve", body), Retrieved))
        if isinstance(args, MemoryForget):
            forgotten = await call("forget", {"agent_id": agent, "ids": list(args.ids)})
            self.gateway.saw_write(int(forgotten.get("sequence", 0)))
            return {"ids": forgotten.get("ids", []), "sequence": forgotten.get("sequence", 0)}
        if isinstance(args, KnowledgeShare):
            document: dict[str, Any] = {
                "agent_id": agent,
                "kb_id": args.kb,
                "title": args.title,
                "text": args.text,
                "tags": list(args.tags),
                "metadata": dict(args.metadata),
                "origin": {"task_id": task_id},
            }
            if args.document_id is not None:  # the workload's id: its retries store the document once
                document["document_id"] = args.document_id
            shared = await call("ingest", document)
            self.gateway.saw_write(int(shared.get("sequence", 0)))
            return {"document_id": shared.get("document_id"), "sequence": shared.get("sequence", 0)}
        assert isinstance(args, KnowledgeQuery)
        query = {
            "agent_id": agent,
            "query": args.query,
            "knowledge_bases": [args.kb],
            "limit": args.limit,
            "min_sequence": min_sequence,
        }
        return {"results": read_result(msgspec.convert(await call("search_knowledge", query), Retrieved))["memories"]}

    async def _refuse(
        self,
        seq: int,
        request_id: RequestId | None,
        action: str,
        code: str,
        message: str,
        question: DecisionRequest | None = None,
        **extra: Any,
    ) -> Error:
        """Record and answer a request refused before any decision."""
        resource = question.resource.id if question else ""
        context = dict(question.context) if question else {}
        await self._record(seq, action, resource, context, None, "failed", f"{code}: {message}")
        return error(request_id, code, message, **extra)

    def record_fits(
        self, seq: int, action: str, resource: str, context: dict[str, Any], record: DecisionRecord | None
    ) -> bool:
        """Whether the record of this action, whatever its outcome, can be stored: checked before it is
        performed, as no action is performed without its record."""
        event = self._event(seq, action, resource, context, record, "allowed", "")
        return action_fits(event, self.gateway.agent.rt.store.max_event_bytes)

    async def _unrecordable(
        self, seq: int, request_id: RequestId | None, action: str, record: DecisionRecord | None
    ) -> Error:
        """Refuse an action whose record could not be stored (recorded without its context, which does fit)."""
        message = unrecordable(action or "request", self.gateway.agent.rt.store.max_event_bytes)
        await self._record(seq, action, "", {}, record, "failed", f"too_large: {message}")
        return error(request_id, "too_large", message)

    def _event(
        self,
        seq: int,
        action: str,
        resource: str,
        context: dict[str, Any],
        record: DecisionRecord | None,
        outcome: ActionOutcome,
        detail: str,
    ) -> ExecutionAction:
        return ExecutionAction(
            attempt=self.gateway.run.spec.attempt,
            seq=seq,
            action=action,
            resource=resource,
            context=context,
            decision=record,
            outcome=outcome,
            detail=detail,  # cut to MAX_DETAIL_CHARS where it is stored (recorder.store_action)
            agent_id=self.agent_id,
        )

    async def _record(
        self,
        seq: int,
        action: str,
        resource: str,
        context: dict[str, Any],
        record: DecisionRecord | None,
        outcome: ActionOutcome,
        detail: str,
    ) -> None:
        event = self._event(seq, action, resource, context, record, outcome, detail)
        await self.gateway.agent.store_action(self.gateway.run, event)
        ACTIONS.labels(action or "unknown", outcome).inc()


def _code_of(err: SymbiError) -> tuple[str, dict[str, Any]]:
    """The protocol's code for a performing service's error: its own code, except that a service that
    cannot be reached is ``unavailable`` (ask again) and its policy refusal is ``denied``."""
    if isinstance(err, InfrastructureError):
        return "unavailable", {"retry_after": RETRY_AFTER_S, "cause": err.code}
    if isinstance(err, PolicyDenied) or err.code == "policy_denied":
        return "denied", dict(err.details)
    return err.code, {}
