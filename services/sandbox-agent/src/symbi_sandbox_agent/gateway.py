"""The action gateway of one run: decides each request of the workload, performs it or holds it.

Requests are served one at a time, in the order the workload printed them. Each is decided through the
service's one :class:`~symbi_common.policy.hooks.Enforcer` (enforcement points ``GATEWAY_READ``, which
enforces ``redact`` on what a read returns, and ``GATEWAY_ACTION``, which enforces no condition: an allow
with a condition the point cannot enforce is a denial) and recorded as ``execution.action`` with the
decision's id: one whose record could not be stored is refused ``too_large``, neither performed nor held; an
allowed one is performed (``memory.write`` / ``memory.read`` through the context service, as the agent) and
answered on stdin (``internal``, saying so, should its outcome not be recorded).
A denied one is not answered: the container is frozen, ``execution.paused`` (``action_denied``) is
appended, and the request waits, pending, for the task's ``resume`` command. Resuming first brings the
policy view up to the newest policy event in the stream, then decides the request again: allowed, it is
performed, answered and the container thawed; still denied, the command fails with ``action_denied``
and the container stays frozen. Terminating the run drops the pending request: it never happens.

Requests of the channel protocol (docs/agent-protocol.md) — every line of the run's socket, and a stderr
line whose JSON names an ``op`` — are answered by :class:`~symbi_sandbox_agent.agent_ops.ProtocolServer`
through the same enforcer, recorder and performing services; a denial is a typed error there, not a hold.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats.js.errors
import structlog
from symbi_common.decisions import Decision, DecisionRecord, DecisionRequest, Deny
from symbi_common.errors import SymbiError, Timeout
from symbi_common.policy.conditions import redact
from symbi_common.policy.enforcement import GATEWAY_ACTION, GATEWAY_READ
from symbi_common.policy.events import POLICY_SETS_SUBJECT
from symbi_common.policy.hooks import UNDECIDED, Enforcer
from symbi_common.streams import EVENTS_STREAM
from symbi_common.telemetry import traced
from symbi_contracts.agent_protocol import MAX_REQUEST_BYTES as PROTOCOL_MAX_REQUEST_BYTES
from symbi_contracts.agent_protocol import encode_reply
from symbi_contracts.context.commands import Retrieved, Stored
from symbi_contracts.sandbox_agent.errors import ActionDenied
from symbi_contracts.sandbox_agent.events import ActionOutcome, ExecutionAction

from symbi_sandbox_agent.actions import (
    MAX_REQUESTS,
    PERFORMED,
    RESOURCE_TYPES,
    ActionRequest,
    MemoryReadArgs,
    MemoryWriteArgs,
    RequestLine,
    RequestLines,
    allowed_reply,
    check_against_schema,
    context_retrieve_body,
    context_store_body,
    decision_request,
    error_reply,
    parse_args,
    parse_request,
    read_result,
)
from symbi_sandbox_agent.agent_ops import ProtocolServer
from symbi_sandbox_agent.channel import Channel
from symbi_sandbox_agent.errors import ActionRequestError, TooManyActions, UnsupportedAction
from symbi_sandbox_agent.metrics import ACTIONS
from symbi_sandbox_agent.recorder import action_fits, unrecordable
from symbi_sandbox_agent.run import Pending, Running
from symbi_sandbox_agent.run_ports import RunHost

log = structlog.get_logger(__name__)
#: How long a ``resume`` waits for the policy follower to reach the newest policy event.
POLICY_SYNC_TIMEOUT_S = 5.0
#: How long the performing service may take to answer.
PERFORM_TIMEOUT_S = 10.0
#: When the workload ends, how long a request being served may take to finish and be recorded.
CLOSE_GRACE_S = 5.0


class _Probe(msgspec.Struct):
    op: str | None = None


class ActionGateway:
    def __init__(self, agent: RunHost, run: Running, reply: Callable[[bytes], Awaitable[None]] | None = None) -> None:
        self.agent = agent
        self.run = run
        #: Writes a reply line to the workload's stdin (set once the container is attached).
        self.reply: Callable[[bytes], Awaitable[None]] = reply or _no_stdin
        self.protocol = ProtocolServer(self)
        #: The run's socket listener, when it has one (see :meth:`open_channel`).
        self.channel: Channel | None = None
        #: Read up to the protocol's own bound (what ``hello`` tells); a legacy line has its smaller one.
        self.lines = RequestLines(PROTOCOL_MAX_REQUEST_BYTES)
        self.queue: asyncio.Queue[RequestLine] = asyncio.Queue()
        self.seq = 0
        self.pending: Pending | None = None
        #: Stream sequence of the run's last memory write, so a later read sees it.
        self.last_write = 0
        self._lock = asyncio.Lock()  # one request (or one resume) at a time
        self._busy = asyncio.Event()
        self._busy.set()  # set: idle
        self._task: asyncio.Task[None] | None = None

    @property
    def task_id(self) -> str:
        return self.run.spec.task_id

    def next_seq(self) -> int:
        """The next number of the run's requests (legacy lines and protocol requests share it)."""
        self.seq += 1
        return self.seq

    def saw_write(self, sequence: int) -> None:
        """A write of the run landed at stream ``sequence``: later reads of the run see it."""
        self.last_write = max(self.last_write, sequence)

    async def open_channel(self, directory: str, owner: tuple[int, int]) -> None:
        """Serve the protocol on a socket in ``directory`` (mounted into the sandbox), for this run only."""
        channel = Channel(directory, owner, self.protocol.answer, written=self.protocol.written)
        await channel.open()
        self.channel = channel
        if self.run.spec.messaging is not None:  # its inbox, as declared, before it runs (docs/bus.md)
            await self.protocol.messages.declare_now()

    async def remove_channel(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve(), name=f"actions:{self.task_id}")

    def feed(self, stderr: bytes) -> None:
        """A chunk of the workload's stderr, as it arrives."""
        for line in self.lines.feed(stderr):
            self.queue.put_nowait(line)

    async def close(self) -> None:
        """The run is over: let a request being served finish (unless it is held pending), then stop."""
        if self.channel is not None:
            await self.channel.drain(CLOSE_GRACE_S)  # requests being served finish and are recorded
        if self.pending is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._busy.wait(), CLOSE_GRACE_S)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.pending = None

    # --- serving requests --------------------------------------------------------------------------

    async def _serve(self) -> None:
        while True:
            line = await self.queue.get()
            self._busy.clear()
            try:
                async with self._lock:
                    pending = await self._handle(line)
                if pending is not None:
                    await pending.resolved.wait()  # frozen until a resume allows it (or the run ends)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. the container vanished mid-request: the run's end reports it
                log.exception("action request failed", task_id=self.task_id)
                self.agent.rt.note_error(f"action of {self.task_id}: {type(exc).__name__}")  # (its text: agent data)
            finally:
                self._busy.set()

    async def _handle(self, line: RequestLine) -> Pending | None:
        if _of_the_protocol(line):
            answer = await self.protocol.answer(line, "stdio")
            try:
                await self.reply(encode_reply(answer))
            except BaseException:
                await self.protocol.written(answer, False)
                raise
            await self.protocol.written(answer, True)
            return None
        seq = self.next_seq()
        if seq > MAX_REQUESTS:
            err = TooManyActions(f"a run may send at most {MAX_REQUESTS} requests")
            await self.reply(error_reply(seq, err.code, err.message))
            return None
        try:
            request = parse_request(line)
        except ActionRequestError as err:
            await self._refused_before_deciding(seq, _action_named(line), err)
            return None
        question = decision_request(self.run.agent_id or "unknown", request)
        try:
            check_against_schema(question)
        except ActionRequestError as err:
            await self._refused_before_deciding(seq, request.action, err, request)
            return None
        with traced(
            f"action.{request.action}", attributes={"symbi.task_id": self.task_id, "symbi.action.seq": seq}
        ) as span:
            decision, record = await self.decide(question)
            span.set_attribute("symbi.decision", record.effect)
            if await self._unrecordable(seq, request, record):  # neither performed nor held without its record
                return None
            if isinstance(decision, Deny) and decision.code in UNDECIDED:
                # No decision could be had (e.g. the policy service does not answer): nothing happens, the
                # workload is told why and may ask again; the run is not frozen for an outage.
                await self._record(seq, request, record, "failed", f"{decision.code}: {decision.reason}")
                await self.reply(error_reply(seq, decision.code, decision.reason))
                return None
            if isinstance(decision, Deny):
                await self._record(seq, request, record, "denied", decision.reason)
                pending = Pending(seq, request, question)
                self.pending = pending
                try:
                    await self.agent.freeze(self.run, "action_denied")
                except BaseException:
                    self.pending = None  # the run is ending (killed, exited): nothing to hold
                    raise
                return pending
            await self._perform_and_reply(seq, request, record)
            return None

    async def _refused_before_deciding(
        self, seq: int, action: str, err: SymbiError, request: ActionRequest | None = None
    ) -> None:
        """Record and answer a request that was not decided (malformed, unknown, or no decision to be had)."""
        bare = request or ActionRequest(action=action, resource="")
        await self.agent.store_action(self.run, self._event(seq, bare, None, "failed", f"{err.code}: {err.message}"))
        ACTIONS.labels(action if action in RESOURCE_TYPES else "unknown", "failed").inc()
        await self.reply(error_reply(seq, err.code, err.message))

    async def decide(self, question: DecisionRequest) -> tuple[Decision, DecisionRecord]:
        """Decide through the service's one enforcer: a failed decision point denies (typed), a condition
        the gateway cannot enforce denies, and the decision is logged under the id its event records."""
        point = GATEWAY_READ if question.action == "memory.read" else GATEWAY_ACTION
        verdict = await Enforcer.around(await self.agent.rt.decision_point()).decide(question, point)
        return verdict.decision, verdict.record

    def _event(
        self, seq: int, request: ActionRequest, record: DecisionRecord | None, outcome: ActionOutcome, detail: str = ""
    ) -> ExecutionAction:
        return ExecutionAction(
            attempt=self.run.spec.attempt,
            seq=seq,
            action=request.action,
            resource=request.resource,
            context=dict(request.context),
            decision=record,
            outcome=outcome,
            detail=detail,
            agent_id=self.run.agent_id,
        )

    async def _record(
        self, seq: int, request: ActionRequest, record: DecisionRecord, outcome: ActionOutcome, detail: str = ""
    ) -> None:
        await self.agent.store_action(self.run, self._event(seq, request, record, outcome, detail))
        ACTIONS.labels(request.action, outcome).inc()

    async def _unrecordable(self, seq: int, request: ActionRequest, record: DecisionRecord) -> bool:
        """Whether the request's record (any outcome) could not be stored: then, before it is performed or held, it
        is refused ``too_large`` and recorded without its context (which does fit), as no action goes unrecorded."""
        if action_fits(self._event(seq, request, record, "allowed"), self.agent.rt.store.max_event_bytes):
            return False
        message = unrecordable(request.action)
        await self._record(seq, msgspec.structs.replace(request, context={}), record, "failed", f"too_large: {message}")
        await self.reply(error_reply(seq, "too_large", message))
        return True

    async def _perform_and_reply(self, seq: int, request: ActionRequest, record: DecisionRecord) -> None:
        """Perform an allowed request whose record can be stored, record the outcome, answer the workload; an
        outcome whose record could not be stored is answered ``internal``, saying so: the workload never waits."""
        if await self._unrecordable(seq, request, record):
            return
        outcome: ActionOutcome = "allowed"
        try:
            result = await self._perform(request)
        except SymbiError as err:
            outcome, detail, line = "failed", f"{err.code}: {err.message}", error_reply(seq, err.code, err.message)
        else:  # only conditions the point enforces get here: redact what goes back
            detail, line = "", allowed_reply(seq, redact(result, record.conditions) if record.conditions else result)
        try:
            await self._record(seq, request, record, outcome, detail)
        except Exception as exc:
            done = "was performed" if outcome == "allowed" else "failed"
            message = f"{request.action} {done}, but its record could not be stored ({type(exc).__name__})"
            await self.reply(error_reply(seq, "internal", message))
            raise
        await self.reply(line)

    async def _perform(self, request: ActionRequest) -> dict[str, Any]:
        if request.action not in PERFORMED:
            raise UnsupportedAction(
                f"{request.action} was decided and recorded, but the runtime does not perform it "
                f"(it performs {', '.join(sorted(PERFORMED))})",
                action=request.action,
            )
        args = parse_args(request)
        client = self.agent.rt.client
        agent_id = self.run.agent_id or "unknown"
        if isinstance(args, MemoryWriteArgs):
            body = context_store_body(agent_id, self.task_id, request, args)
            written = await client.call("context", "store", body, Stored, timeout=PERFORM_TIMEOUT_S)
            ids = written.ids
            self.saw_write(written.sequence)
            return {"memory_id": ids[0] if ids else None, "ids": ids, "sequence": written.sequence}
        assert isinstance(args, MemoryReadArgs)
        query = context_retrieve_body(agent_id, request, args, self.last_write)
        found = await client.call("context", "retrieve", query, Retrieved, timeout=PERFORM_TIMEOUT_S)
        return read_result(found)

    # --- resume of a held request ------------------------------------------------------------------

    async def resume(self) -> dict[str, Any]:
        """Decide the pending request again against the newest policies; allowed → perform, answer, thaw."""
        async with self._lock:
            pending = self.pending
            if pending is None:
                return await self.agent.thaw(self.run, "resumed")
            await self.sync_policy()
            request = pending.request
            attributes: dict[str, str | int] = {"symbi.task_id": self.task_id, "symbi.action.seq": pending.seq}
            with traced(f"action.{request.action}", attributes=attributes) as span:
                decision, record = await self.decide(pending.question)
                span.set_attribute("symbi.decision", record.effect)
                if isinstance(decision, Deny):
                    await self._record(pending.seq, request, record, "denied", decision.reason)
                    names = f" [{', '.join(decision.policies)}]" if decision.policies else ""
                    raise ActionDenied(
                        f"task {self.task_id} stays suspended: {request.action} {request.resource!r} is still "
                        f"denied: {decision.reason}{names}",
                        action=request.action,
                        policies=list(decision.policies),
                        policy_version=decision.policy_version,
                    )
                # No longer pending before it is performed: should recording it fail, a resume sent again only
                # thaws the run; it does not perform the request a second time.
                self.pending = None
                pending.resolved.set()
                await self._perform_and_reply(pending.seq, request, record)
            return await self.agent.thaw(self.run, "action_allowed")

    async def sync_policy(self) -> None:
        """Read-your-writes for policies: wait until the decision point has applied the newest ``evt.policy``
        event in the stream, so a resume sent right after a policy change is decided by the changed policy.

        Only an embedded decision point follows the stream itself; a remote one asks the policy service,
        which has applied its own writes, and allow-all has nothing to follow."""
        point = await self.agent.rt.decision_point()
        follower = getattr(point, "follower", None)
        if follower is None:
            return
        try:
            last = await self.agent.rt.js.get_last_msg(EVENTS_STREAM, POLICY_SETS_SUBJECT)
        except nats.js.errors.NotFoundError:
            return  # no policy event at all
        if not await follower.wait_for(last.seq, timeout=POLICY_SYNC_TIMEOUT_S):
            raise Timeout(
                f"the policy view did not reach policy event {last.seq} within {POLICY_SYNC_TIMEOUT_S} s "
                f"(it is at {follower.version}); try the resume again"
            )


def _action_named(line: RequestLine) -> str:
    """The action a refused request named, if it can be read (for the record and the metric)."""
    if line.too_long or line.too_deep:
        return ""
    try:
        raw = msgspec.json.decode(line.body)
    except Exception:
        return ""
    action = raw.get("action") if isinstance(raw, dict) else None
    return action[:64] if isinstance(action, str) else ""


def _of_the_protocol(line: RequestLine) -> bool:
    """Whether a stderr request line is of the channel protocol, answered in its format: one naming an ``op``;
    one cut off at the protocol's bound unless what was kept of it names an ``action`` (and no ``op``)."""
    if line.too_long:
        return b'"op"' in line.body or b'"action"' not in line.body
    return _names_op(line.body)


def _names_op(body: bytes) -> bool:
    """Whether a stderr request line is of the channel protocol (a JSON object naming an ``op``); a line that is
    not valid UTF-8 is probed with the invalid bytes replaced (the protocol then answers it ``malformed_request``)."""
    try:
        return msgspec.json.decode(body, type=_Probe).op is not None
    except UnicodeDecodeError:
        return _names_op(body.decode("utf-8", "replace").encode())
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return False


async def _no_stdin(line: bytes) -> None:
    raise RuntimeError("the run's stdin is not attached yet")
