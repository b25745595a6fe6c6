"""Serving the protocol's ``messages.*`` operations: the communication bus between agents, for one run.

The sender is the listener's agent, never anything the request says. ``send``, ``publish`` and ``request``
are decided through the gateway's one enforcer as ``message.send`` (resource ``Agent::"<to>"`` or
``Channel::"<topic>"``, context ``classification`` / ``topic`` / ``size_bytes``); a denial is the typed error
``denied`` and recorded ``refused``. ``receive`` hands over the agent's waiting messages (a topic message and
a replayed one are decided again at delivery, as ``message.send`` from its sender to this agent; refused ones
go to the dead letters). Each send, and each receive that handed something over, is recorded as an
``execution.action`` (metadata only: ids, peers, sizes; never a body); an allowed send whose record could
not be stored (its context over the event size limit) is refused ``too_large`` and nothing is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import nats.errors
import structlog
from symbi_common.bus_streams import inbox_metadata
from symbi_common.caps import resource_caps
from symbi_common.decisions import AllowWithConditions, Decision, DecisionRecord, DecisionRequest, Deny, EntityRef
from symbi_common.errors import SymbiError
from symbi_common.policy.enforcement import BUS_SEND
from symbi_common.policy.hooks import UNDECIDED, Enforcer
from symbi_contracts.agent_protocol import Reply, Request, RequestId, Result, error
from symbi_contracts.bus import MAX_RECEIVE, MAX_WAIT_S, Ask, Kind, Meta, Publish, Receive, Send, valid_agent_id
from symbi_contracts.sandbox_agent.events import ActionOutcome

from symbi_sandbox_agent.actions import check_against_schema
from symbi_sandbox_agent.bus.carrier import Carrier
from symbi_sandbox_agent.bus.codec import sendable
from symbi_sandbox_agent.bus.decisions import remembered
from symbi_sandbox_agent.bus.delivered import Batch
from symbi_sandbox_agent.bus.errors import BadMessage, RateLimited, Undecided
from symbi_sandbox_agent.bus.limits import SendLimits
from symbi_sandbox_agent.bus.runtime import bus_of
from symbi_sandbox_agent.errors import ActionRequestError
from symbi_sandbox_agent.recorder import Fits, fits_nothing, unrecordable
from symbi_sandbox_agent.run import Running

log = structlog.get_logger(__name__)
SEND = "message.send"
RECEIVE = "message.receive"
RETRY_AFTER_S = 1.0
SUSPENDED_POLL_S = 0.1
ARGS: dict[str, type[Any]] = {
    "messages.send": Send,
    "messages.publish": Publish,
    "messages.request": Ask,
    "messages.receive": Receive,
}

Record = Callable[[int, str, str, dict[str, Any], DecisionRecord | None, ActionOutcome, str], Awaitable[None]]


class MessageOps:
    """The ``messages.*`` operations of one run's agent; ``record`` appends an ``execution.action``."""

    def __init__(self, rt: Any, run: Running, record: Record, fits: Fits = fits_nothing) -> None:
        self.rt = rt
        self.run = run
        self.agent_id = run.agent_id or "unknown"
        self.record = record
        #: Whether a send's record can be stored, asked before it is sent (``ProtocolServer.record_fits``).
        self.fits = fits
        self._receiving = asyncio.Lock()  # one inbox fetch at a time (a pull subscription is not shared)
        #: Batches handed over in an answer not yet written, by the answer's identity (see :meth:`written`).
        self._unwritten: dict[int, tuple[Reply, Batch]] = {}
        #: The definition's bus limits and subscriptions (none: the host's defaults, no topics).
        self.messaging = run.spec.messaging
        self._declared = False

    async def answer(self, seq: int, request: Request) -> Reply:
        try:
            args = msgspec.convert(request.args, ARGS[request.op])
        except msgspec.ValidationError as exc:
            message = f"args of {request.op}: {exc}"
            await self.record(seq, SEND, "", {}, None, "failed", f"malformed_request: {message}")
            return error(request.id, "malformed_request", message)
        carrier = await bus_of(self.rt)
        await self.declare(carrier)
        if isinstance(args, Receive):
            return await self._receive(seq, request.id, args, carrier)
        return await self._send(seq, request, args, carrier)

    async def declare(self, carrier: Carrier) -> None:
        """Once per run: the agent's inbox exists with the depth and the topics its definition declares."""
        if self._declared or self.messaging is None:
            return
        depth = carrier.limiter.limits.lowered(self.messaging).queue_depth
        declared = inbox_metadata(depth, self.messaging.clearances)
        await carrier.ensure_inbox(self.agent_id, self.messaging.subscriptions, declared)
        self._declared = True

    async def declare_now(self) -> None:
        """:meth:`declare` at the start of the run; if the bus cannot be reached now, its first
        ``messages.*`` request declares it (the run is not held up for it)."""
        try:
            await self.declare(await bus_of(self.rt))
        except (SymbiError, OSError, nats.errors.Error) as exc:
            log.warning("the agent's inbox could not be declared at the start of its run", error=repr(exc))

    def limits(self, host: SendLimits, decision: Decision) -> SendLimits:
        """The sender's limits for one allowed message: host, definition and the policy's caps, tightest."""
        caps = resource_caps(decision.conditions) if isinstance(decision, AllowWithConditions) else {}
        return host.lowered(self.messaging, caps)

    async def decide(self, question: DecisionRequest) -> tuple[Decision, DecisionRecord]:
        """Through the one enforcer (point ``BUS_SEND``), its answers remembered per policy version."""
        point = remembered(await self.rt.decision_point())
        verdict = await Enforcer.around(point).decide(question, BUS_SEND)
        return verdict.decision, verdict.record

    # --- sending -----------------------------------------------------------------------------------

    def question(
        self, sender: str, meta_to: str, topic: str, context: dict[str, Any], size: int, clearances: Sequence[str] = ()
    ) -> DecisionRequest:
        """``message.send`` from ``sender``; the recipient agent carries the ``clearances`` its definition declares."""
        attrs = {"clearances": sorted(clearances)} if clearances else {}
        resource = (
            EntityRef(type="Channel", id=topic)
            if topic and not meta_to
            else EntityRef(type="Agent", id=meta_to, attrs=attrs)
        )
        ctx = {**context, "size_bytes": size}
        if topic:
            ctx["topic"] = topic
        return DecisionRequest(
            principal=EntityRef(type="Agent", id=sender), action=SEND, resource=resource, context=ctx
        )

    async def _send(self, seq: int, request: Request, args: Send | Publish | Ask, carrier: Carrier) -> Reply:
        to = "" if isinstance(args, Publish) else args.to
        topic = args.topic if isinstance(args, Publish) else ""
        try:  # checked before it is encoded (a deep body would raise RecursionError), encoded once
            body = sendable(args.body, 0.0 if isinstance(args, Ask) else args.ttl_s)
        except BadMessage as err:
            await self.record(seq, SEND, to or topic, {}, None, "failed", f"invalid_request: {err.message}")
            return error(request.id, "invalid_request", err.message, **err.details)
        size = len(body.payload)
        clearances = await carrier.recipients.clearances(to) if valid_agent_id(to) else ()
        question = self.question(self.agent_id, to, topic, dict(request.context), size, clearances)
        target = to or topic
        try:
            carrier.check_room(target)
            check_against_schema(question)
        except ActionRequestError as err:
            await self.record(seq, SEND, target, question.context, None, "failed", f"invalid_request: {err.message}")
            return error(request.id, "invalid_request", err.message)
        except RateLimited as err:
            await self.record(seq, SEND, target, question.context, None, "failed", f"rate_limited: {err.message}")
            return error(request.id, "rate_limited", err.message, retry_after=err.details["retry_after"])
        decision, record = await self.decide(question)
        if isinstance(decision, Deny):
            if decision.code in UNDECIDED:
                await self.record(
                    seq, SEND, target, question.context, record, "failed", f"unavailable: {decision.reason}"
                )
                return error(request.id, "unavailable", decision.reason, retry_after=RETRY_AFTER_S, cause=decision.code)
            await self.record(seq, SEND, target, question.context, record, "refused", decision.reason)
            return error(
                request.id,
                "denied",
                f"{request.op} to {target!r} is denied: {decision.reason}",
                policies=list(decision.policies),
                policy_version=decision.policy_version,
            )
        if not self.fits(seq, SEND, target, question.context, record):  # no message without its record
            message = unrecordable(SEND)
            await self.record(seq, SEND, "", {}, record, "failed", f"too_large: {message}")
            return error(request.id, "too_large", message)
        classification = str(request.context.get("classification", ""))
        limits = self.limits(carrier.limiter.limits, decision)
        try:
            if isinstance(args, Ask):
                wait = min(max(args.timeout_s, 0.0), MAX_WAIT_S)
                got = await carrier.request(self.agent_id, to, body, wait, classification=classification, limits=limits)
                await self.record(
                    seq, SEND, target, question.context, record, "allowed", f"{request.op} replied {got.meta.id}"
                )
                return Result(id=request.id, result=got.as_dict())
            if isinstance(args, Publish):
                meta = await carrier.send(
                    self.agent_id,
                    "topic",
                    body,
                    topic=topic,
                    ttl_s=args.ttl_s,
                    classification=classification,
                    limits=limits,
                )
            else:
                kind: Kind = "reply" if args.in_reply_to else "direct"
                meta = await carrier.send(
                    self.agent_id,
                    kind,
                    body,
                    to=to,
                    ttl_s=args.ttl_s,
                    classification=classification,
                    in_reply_to=args.in_reply_to,
                    limits=limits,
                )
        except SymbiError as err:
            outcome: ActionOutcome = "failed"
            await self.record(seq, SEND, target, question.context, record, outcome, f"{err.code}: {err.message}")
            extra = (
                {"retry_after": err.details.get("retry_after", RETRY_AFTER_S)} if isinstance(err, RateLimited) else {}
            )
            return error(request.id, err.code, err.message, **extra)
        await self.record(seq, SEND, target, question.context, record, "allowed", f"{request.op} {meta.id}")
        return Result(id=request.id, result={"id": meta.id, "sent_at": meta.sent_at})

    # --- receiving ---------------------------------------------------------------------------------

    async def _check_delivery(self, sender: str, recipient: str, meta: Meta) -> str | None:
        """A topic (or replayed) message is decided again for its recipient: ``None`` if it may have it."""
        ctx: dict[str, Any] = {"size_bytes": meta.size}
        if meta.classification:
            ctx["classification"] = meta.classification
        if meta.topic:
            ctx["topic"] = meta.topic
        mine = self.messaging.clearances if self.messaging is not None else ()
        attrs = {"clearances": sorted(mine)} if mine else {}
        question = DecisionRequest(
            principal=EntityRef(type="Agent", id=sender),
            action=SEND,
            resource=EntityRef(type="Agent", id=recipient, attrs=attrs),
            context=ctx,
        )
        decision, _ = await self.decide(question)
        if isinstance(decision, Deny) and decision.code in UNDECIDED:
            raise Undecided(f"no decision on delivering message {meta.id}: {decision.reason}")
        return decision.reason if isinstance(decision, Deny) else None

    async def _receive(self, seq: int, request_id: RequestId, args: Receive, carrier: Carrier) -> Reply:
        most = min(max(args.max, 0), MAX_RECEIVE)
        wait = min(max(args.timeout_s, 0.0), MAX_WAIT_S)
        try:
            if args.subscribe:
                await carrier.ensure_inbox(self.agent_id, args.subscribe)
                await self.record(seq, RECEIVE, "inbox", {}, None, "allowed", f"subscribed {', '.join(args.subscribe)}")
            if most == 0:
                return Result(id=request_id, result={"messages": []})
            refused: list[str] = []
            async with self._receiving:
                batch = await self._fetch(carrier, most, wait, refused)
        except SymbiError as err:
            await self.record(seq, RECEIVE, "inbox", {}, None, "failed", f"{err.code}: {err.message}")
            return error(request_id, err.code, err.message)
        if refused:  # refused at delivery (dead letters): on the recipient's trail too, metadata only
            detail = "refused at delivery (dead letters): " + ", ".join(refused)
            await self.record(seq, RECEIVE, "inbox", {}, None, "refused", detail[:2000])
        got = batch.delivered
        if batch.undecided and not got:  # (none refused for it: they wait in the inbox, delivered again later)
            message = f"{batch.undecided} message(s) wait: no policy decision on their delivery could be had"
            await self.record(seq, RECEIVE, "inbox", {}, None, "failed", f"unavailable: {message}")
            return error(request_id, "unavailable", message, retry_after=RETRY_AFTER_S)
        if got:
            detail = "received " + " ".join(f"{d.meta.id}<{d.meta.sender}" for d in got)
            await self.record(seq, RECEIVE, "inbox", {}, None, "allowed", detail[:2000])
        reply = Result(id=request_id, result={"messages": [d.as_dict() for d in got]})
        if batch.held:
            self._unwritten[id(reply)] = (reply, batch)
        return reply

    async def written(self, reply: Reply, ok: bool) -> None:
        """``reply`` was written to the agent's channel (``ok``) or could not be: the batch it hands over is
        committed (recorded as delivered, acked), or handed back to the inbox to be delivered again. Until
        then it is neither: a crash in between redelivers it, and the SDK drops an id it already has."""
        found = self._unwritten.pop(id(reply), None)
        if found is None or found[0] is not reply:
            return
        carrier = await bus_of(self.rt)
        batch = found[1]
        if ok:
            await carrier.commit(batch)
        else:
            await carrier.release(batch.held)

    def _suspended(self) -> bool:
        return self.run.paused_since is not None and not self.run.done.is_set()

    async def _fetch(self, carrier: Carrier, most: int, wait: float, refused: list[str]) -> Batch:
        """The waiting messages, never taken while the run is suspended: a batch fetched just as it was
        suspended is handed back (it waits in the inbox) and fetched again once the run is resumed."""
        deadline = time.monotonic() + wait
        while True:
            while self._suspended():  # noqa: ASYNC110 (a run has no resumed event; a resume is rare)
                await asyncio.sleep(SUSPENDED_POLL_S)
            fetched = await carrier.fetch(self.agent_id, most, max(deadline - time.monotonic(), 0.0))
            if fetched and self._suspended():
                await carrier.release(fetched)
                continue
            got = await carrier.take(self.agent_id, fetched, self._check_delivery, refused)
            if got.delivered or time.monotonic() >= deadline:
                return got  # (a batch of only refused or duplicate messages: wait on for the rest of the time)
