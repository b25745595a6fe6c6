"""Enforcement hooks: ask, check, log, and refuse — the one way services gate an action on a policy decision.

    enforcer = await Enforcer.for_runtime(runtime)
    record = await enforcer.check_tool(agent, tool, classification="phi", point=MY_POINT)  # PolicyDenied if denied
    ... perform the action, honouring record.conditions, and store ``record`` in the action's event ...

Every decision goes through :meth:`Enforcer.decide` (or :meth:`Enforcer.decide_batch`), which

- asks the decision point; one that cannot be asked (policy service unreachable, not answering in time,
  any error) yields a denial with a typed code (``policy_unavailable`` / ``policy_timeout``), never an allow;
- checks the allow's conditions against the :class:`~symbi_common.policy.enforcement.EnforcementPoint`
  that received it: a condition the point cannot enforce denies (``unenforceable_condition``);
- gives the decision an id and puts it in the decision log (:mod:`.decision_log`), and returns a
  :class:`Verdict` whose ``record`` (with that ``decision_id``) the caller stores in the event of the
  action it performs — the decision → action link of the audit trail.

:meth:`Enforcer.enforce` is the same, raising on a denial: a denial is logged as an event of its own,
and if the principal is an Agent it is suspended through the lifecycle service (``cmd.lifecycle.suspend``;
only a Running agent can be, any other state is left alone). Then
:class:`~symbi_common.errors.PolicyDenied` is raised with the reason, its ``reason_code`` and the deciding
policies: a denied action is never performed.

The helpers in :mod:`symbi_common.policy.conditions` (``redact``, ``capped``, ``requires_approval`` …)
turn the conditions of an allow into what the caller does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter

from symbi_common.commands import CommandClient
from symbi_common.decisions import (
    AllowWithConditions,
    Condition,
    Decision,
    DecisionPoint,
    DecisionRecord,
    DecisionRequest,
    Deny,
    EntityRef,
    denied,
)
from symbi_common.errors import BadRequest, DomainError, PolicyDenied, SymbiError, Timeout
from symbi_common.policy.enforcement import UNSPECIFIED, EnforcementPoint
from symbi_common.sealing import new_event_id

log = structlog.get_logger(__name__)
ENFORCER_DENIALS = Counter(
    "symbi_policy_enforcer_denials_total",
    "Denials the enforcer made itself: no decision could be had (policy_unavailable, policy_timeout, "
    "invalid_request) or the allow had a condition the point cannot enforce (unenforceable_condition)",
    ["point", "code"],
)


def agent(agent_id: str, **attrs: Any) -> EntityRef:
    """``Agent::"<agent_id>"`` with attributes (``clearances=["phi"]``, ``security_tier="tier2"`` …)."""
    return EntityRef(type="Agent", id=agent_id, attrs=attrs)


def resources_context(
    *,
    memory_mb: int | None = None,
    cpu_cores: float | None = None,
    disk_io_mbps: int | None = None,
    network_io_mbps: int | None = None,
    execution_timeout_s: float | None = None,
) -> dict[str, Any]:
    """The ``resources`` record of a request in the schema's types (cpu and timeout as decimals)."""
    out: dict[str, Any] = {}
    if memory_mb is not None:
        out["memory_mb"] = int(memory_mb)
    if cpu_cores is not None:
        out["cpu_cores"] = float(cpu_cores)
    if disk_io_mbps is not None:
        out["disk_io_mbps"] = int(disk_io_mbps)
    if network_io_mbps is not None:
        out["network_io_mbps"] = int(network_io_mbps)
    if execution_timeout_s is not None:
        out["execution_timeout_s"] = float(execution_timeout_s)
    return out


#: Denial codes that mean no decision could be had (the decision point failed), not that policy said no:
#: a caller may try again later instead of treating it as a policy violation (it must not act meanwhile).
UNDECIDED = frozenset({"policy_unavailable", "policy_timeout"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """One decision as an enforcement point received it: checked against the point, logged, with its record."""

    request: DecisionRequest
    decision: Decision
    record: DecisionRecord

    @property
    def allowed(self) -> bool:
        return not isinstance(self.decision, Deny)

    @property
    def undecided(self) -> bool:
        """Denied because no decision could be had (see :data:`UNDECIDED`)."""
        return isinstance(self.decision, Deny) and self.decision.code in UNDECIDED

    @property
    def conditions(self) -> tuple[Condition, ...]:
        """The conditions the point must honour (all of them enforceable there: checked)."""
        return self.decision.conditions if isinstance(self.decision, AllowWithConditions) else ()

    def denial(self) -> PolicyDenied:
        """The error to raise for a denied verdict."""
        assert isinstance(self.decision, Deny), "only a denied verdict has a denial"
        return denied(self.request, self.decision)


def unavailable(exc: BaseException, version: int) -> Deny:
    """The denial standing in for a decision that could not be had (the decision point failed)."""
    if isinstance(exc, Timeout):
        return Deny(reason=f"no policy decision in time: {exc}", policy_version=version, code="policy_timeout")
    if isinstance(exc, BadRequest):
        return Deny(reason=f"the request cannot be evaluated: {exc}", policy_version=version, code="invalid_request")
    return Deny(reason=f"no policy decision could be had: {exc}", policy_version=version, code="policy_unavailable")


#: The longest ``reason`` and ``policy_id`` a suspension carries (the lifecycle's ``SuspendRequest`` refuses
#: longer ones, and a refused suspension would leave the agent running).
SUSPEND_REASON_CHARS = 1000
SUSPEND_POLICY_ID_CHARS = 512


def suspend_body(request: DecisionRequest, decision: Deny) -> dict[str, Any]:
    """The body of ``cmd.lifecycle.suspend`` for a denied agent: the fields of the lifecycle's
    ``symbi_contracts.lifecycle.commands.SuspendRequest`` (this library cannot import the contracts, which
    build on it; a contract test decodes this body strictly into that type)."""
    reason = f"policy violation: {request.action} on {request.resource.uid} denied: {decision.reason}"
    return {
        "agent_id": request.principal.id,
        "reason": reason[:SUSPEND_REASON_CHARS],
        "policy_id": decision.policies[0][:SUSPEND_POLICY_ID_CHARS] if decision.policies else None,
    }


class Enforcer:
    """The one enforcer of a service: its decision point, decision log and lifecycle client.

    The enforcement points of the service (:mod:`symbi_common.policy.enforcement`) all decide through it.
    """

    def __init__(
        self,
        decisions: DecisionPoint,
        *,
        log: Any | None = None,
        client: CommandClient | None = None,
        suspend_agents: bool = True,
    ) -> None:
        self.decisions = decisions
        self.log = log
        self.client = client
        self.suspend_agents = suspend_agents and client is not None

    @classmethod
    async def for_runtime(cls, runtime: Any, *, suspend_agents: bool = True) -> Enforcer:
        """The enforcer of a running :class:`~symbi_common.service.ServiceRuntime`."""
        point = await runtime.decision_point()
        return cls(point, log=getattr(point, "log", None), client=runtime.client, suspend_agents=suspend_agents)

    @classmethod
    def around(cls, point: DecisionPoint) -> Enforcer:
        """An enforcer over ``point`` with its decision log, for a caller that handles denials itself."""
        return cls(point, log=getattr(point, "log", None), suspend_agents=False)

    @property
    def version(self) -> int:
        """The policy version decisions are currently made against."""
        return self.decisions.version

    async def decide(self, request: DecisionRequest, point: EnforcementPoint = UNSPECIFIED) -> Verdict:
        """The decision on ``request`` as ``point`` may act on it, logged; never raises for a denial.

        A decision point that fails denies (typed code); an allow with a condition ``point`` cannot
        enforce denies (``unenforceable_condition``)."""
        try:
            decision = await self.decisions.decide(request)
        except Exception as exc:  # fail closed: whatever went wrong, the action is not allowed
            log.warning("no policy decision; denied", action=request.action, error=repr(exc))
            denial = unavailable(exc, self.decisions.version)
            ENFORCER_DENIALS.labels(point.name, denial.code).inc()
            decision = denial
        return await self._received(request, decision, point)

    async def decide_batch(
        self, requests: Sequence[DecisionRequest], point: EnforcementPoint = UNSPECIFIED
    ) -> list[Verdict]:
        """:meth:`decide` for each request, asked in one batch."""
        if not requests:
            return []
        try:
            decisions = await self.decisions.decide_batch(list(requests))
        except Exception as exc:  # fail closed, every request of the batch
            log.warning("no policy decisions; denied", requests=len(requests), error=repr(exc))
            denial = unavailable(exc, self.decisions.version)
            ENFORCER_DENIALS.labels(point.name, denial.code).inc(len(requests))
            decisions = [denial] * len(requests)
        return [await self._received(r, d, point) for r, d in zip(requests, decisions, strict=True)]

    async def _received(self, request: DecisionRequest, decision: Decision, point: EnforcementPoint) -> Verdict:
        checked = point.check(decision)
        if checked is not decision:
            ENFORCER_DENIALS.labels(point.name, "unenforceable_condition").inc()
            log.warning("allow with an unenforceable condition denied", point=point.name, action=request.action)
        decision = checked
        record = DecisionRecord.of(request, decision, decision_id=new_event_id(), point=point.name)
        if self.log is not None:
            await self.log.record(request, record)
        return Verdict(request, decision, record)

    async def enforce(self, request: DecisionRequest, point: EnforcementPoint = UNSPECIFIED) -> DecisionRecord:
        """The record of an allowed ``request``; :class:`PolicyDenied` (after logging, suspending) if denied."""
        return await self._settle(await self.decide(request, point))

    async def enforce_batch(
        self, requests: list[DecisionRequest], point: EnforcementPoint = UNSPECIFIED
    ) -> list[DecisionRecord | SymbiError]:
        """Each request's record, or the :class:`PolicyDenied` it would raise (denied ones are not performed)."""
        out: list[DecisionRecord | SymbiError] = []
        for verdict in await self.decide_batch(requests, point):
            try:
                out.append(await self._settle(verdict))
            except SymbiError as err:
                out.append(err)
        return out

    async def settle(
        self, request: DecisionRequest, decision: Decision, point: EnforcementPoint = UNSPECIFIED
    ) -> DecisionRecord:
        """:meth:`enforce` for a decision already had (checked against ``point``, logged, refused if denied)."""
        return await self._settle(await self._received(request, decision, point))

    async def _settle(self, verdict: Verdict) -> DecisionRecord:
        decision = verdict.decision
        if isinstance(decision, Deny):
            if self.suspend_agents and verdict.request.principal.type == "Agent":
                await self._suspend(verdict.request, decision)
            raise verdict.denial()
        return verdict.record

    async def _suspend(self, request: DecisionRequest, decision: Deny) -> None:
        assert self.client is not None
        try:
            await self.client.call("lifecycle", "suspend", suspend_body(request, decision), dict)
        except DomainError as err:  # not Running (or not registered): nothing to suspend
            log.debug("agent not suspended", agent_id=request.principal.id, reason=str(err))
        except SymbiError as err:  # the lifecycle service is unreachable; the action is still refused
            log.warning("agent could not be suspended", agent_id=request.principal.id, error=str(err))

    # --- the hooks of messaging, tool execution and data access ----------------------------------------

    async def check_message(
        self,
        sender: EntityRef,
        recipient: EntityRef,
        *,
        classification: str | None = None,
        topic: str | None = None,
        size_bytes: int | None = None,
        point: EnforcementPoint = UNSPECIFIED,
    ) -> DecisionRecord:
        """May ``sender`` send a message (of ``classification``) to ``recipient`` (an Agent or a Channel)?"""
        context: dict[str, Any] = {}
        if classification is not None:
            context["classification"] = classification
        if topic is not None:
            context["topic"] = topic
        if size_bytes is not None:
            context["size_bytes"] = size_bytes
        return await self.enforce(
            DecisionRequest(principal=sender, action="message.send", resource=recipient, context=context), point
        )

    async def check_tool(
        self,
        caller: EntityRef,
        tool: EntityRef,
        *,
        classification: str | None = None,
        arguments: list[str] | None = None,
        point: EnforcementPoint = UNSPECIFIED,
    ) -> DecisionRecord:
        """May ``caller`` invoke ``tool`` with data of ``classification`` flowing into it?"""
        context: dict[str, Any] = {}
        if classification is not None:
            context["classification"] = classification
        if arguments is not None:
            context["arguments"] = list(arguments)
        return await self.enforce(
            DecisionRequest(principal=caller, action="tool.invoke", resource=tool, context=context), point
        )

    async def check_data(
        self,
        accessor: EntityRef,
        data: EntityRef,
        *,
        write: bool = False,
        destination: str | None = None,
        purpose: str | None = None,
        fields: list[str] | None = None,
        point: EnforcementPoint = UNSPECIFIED,
    ) -> DecisionRecord:
        """May ``accessor`` read (or write) ``data``, sending it on to ``destination``?"""
        context: dict[str, Any] = {}
        if destination is not None:
            context["destination"] = destination
        if purpose is not None:
            context["purpose"] = purpose
        if fields is not None:
            context["fields"] = list(fields)
        action = "data.write" if write else "data.read"
        request = DecisionRequest(principal=accessor, action=action, resource=data, context=context)
        return await self.enforce(request, point)
