"""Enforcement hooks: ask, log, and refuse — the one way services gate an action on a policy decision.

    enforcer = await Enforcer.for_runtime(runtime)
    record = await enforcer.check_tool(agent, tool, classification="phi")   # PolicyDenied if denied
    ... perform the action, honouring record.conditions, and store ``record`` in the action's event ...

:meth:`Enforcer.enforce` returns the :class:`DecisionRecord` to store in the event of the action it gated
(so the audit chain links decision → action) and puts the decision in the decision log. A denial is
logged as an event of its own, and if the principal is an Agent it is suspended through the lifecycle
service (``cmd.lifecycle.suspend``; only a Running agent can be, any other state is left alone). Then
:class:`~symbi_common.errors.PolicyDenied` is raised with the reason and the deciding policies: a denied
action is never performed.

The helpers in :mod:`symbi_common.policy.conditions` (``redact``, ``capped``, ``requires_approval`` …)
turn the conditions of an allow into what the caller does.
"""

from __future__ import annotations

from typing import Any

import structlog

from symbi_common.commands import CommandClient
from symbi_common.decisions import Decision, DecisionPoint, DecisionRecord, DecisionRequest, Deny, EntityRef, denied
from symbi_common.errors import DomainError, SymbiError

log = structlog.get_logger(__name__)


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


class Enforcer:
    """An enforcement point: a decision point, the decision log and the lifecycle client of one service."""

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
    async def for_runtime(cls, runtime: Any) -> Enforcer:
        """The enforcer of a running :class:`~symbi_common.service.ServiceRuntime`."""
        point = await runtime.decision_point()
        return cls(point, log=getattr(point, "log", None), client=runtime.client)

    async def enforce(self, request: DecisionRequest) -> DecisionRecord:
        """The record of an allowed ``request``; :class:`PolicyDenied` (after logging, suspending) if denied."""
        decision = await self.decisions.decide(request)
        return await self.settle(request, decision)

    async def enforce_batch(self, requests: list[DecisionRequest]) -> list[DecisionRecord | SymbiError]:
        """Each request's record, or the :class:`PolicyDenied` it would raise (denied ones are not performed)."""
        decisions = await self.decisions.decide_batch(requests)
        out: list[DecisionRecord | SymbiError] = []
        for request, decision in zip(requests, decisions, strict=True):
            try:
                out.append(await self.settle(request, decision))
            except SymbiError as err:
                out.append(err)
        return out

    async def settle(self, request: DecisionRequest, decision: Decision) -> DecisionRecord:
        record = DecisionRecord.of(request, decision)
        if self.log is not None:
            await self.log.record(request, record)
        if isinstance(decision, Deny):
            if self.suspend_agents and request.principal.type == "Agent":
                await self._suspend(request, decision)
            raise denied(request, decision)
        return record

    async def _suspend(self, request: DecisionRequest, decision: Deny) -> None:
        assert self.client is not None
        body = {
            "agent_id": request.principal.id,
            "reason": f"policy violation: {request.action} on {request.resource.uid} denied: {decision.reason}"[:1000],
            "policy_id": decision.policies[0] if decision.policies else None,
        }
        try:
            await self.client.call("lifecycle", "suspend", body, dict)
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
            DecisionRequest(principal=sender, action="message.send", resource=recipient, context=context)
        )

    async def check_tool(
        self,
        caller: EntityRef,
        tool: EntityRef,
        *,
        classification: str | None = None,
        arguments: list[str] | None = None,
    ) -> DecisionRecord:
        """May ``caller`` invoke ``tool`` with data of ``classification`` flowing into it?"""
        context: dict[str, Any] = {}
        if classification is not None:
            context["classification"] = classification
        if arguments is not None:
            context["arguments"] = list(arguments)
        return await self.enforce(
            DecisionRequest(principal=caller, action="tool.invoke", resource=tool, context=context)
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
        return await self.enforce(DecisionRequest(principal=accessor, action=action, resource=data, context=context))
