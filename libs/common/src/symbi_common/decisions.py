"""Policy decisions: the request every enforcement point asks, the typed answer, and the port it asks through.

Every service gates its actions through a :class:`DecisionPoint`. The vocabulary is Cedar's, so a request
maps one-to-one onto ``cedarpy.is_authorized``:

- ``principal`` — who acts: ``Agent::"<agent_id>"``, ``Service::"scheduler"``, ``User::"alice"``.
- ``action`` — what: ``Action::"<name>"``; the names used by the enforcement points are in :data:`ACTIONS`.
- ``resource`` — on what: ``Agent::"<id>"``, ``Host::"<id>"``, ``Task::"<id>"``, ``Tool::"<name>"``,
  ``Data::"<id>"``, ``Memory::"<id>"``, ``Channel::"<name>"``, ``Model::"<provider>/<model>"``.
- entity ``attrs`` (e.g. ``principal.clearances``, ``resource.classification``) and ``parents``
  travel with the request; ``context`` holds the rest (requested resources, tier, destination …).

A decision is :class:`Allow`, :class:`Deny` (naming the deciding policies) or :class:`AllowWithConditions`
(conditions the caller must honour). Whatever gated an action records a :class:`DecisionRecord` in the
event of that action, so the audit chain links decision → action.

No I/O here. The embedded (in-process, follows the policy events) and remote (``cmd.policy.decide``)
decision points live in :mod:`symbi_common.policy`; :class:`AllowAll` exists for deployments that turn
enforcement off *explicitly* (``[policy] enforcement = "allow-all"``) and for tests of other services.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import msgspec

from symbi_common.errors import PolicyDenied

#: Actions the enforcement points ask about. Policies may name others; these are the ones wired in code.
ACTIONS: tuple[str, ...] = (
    "agent.register",  # lifecycle: register an agent with a configuration (resource: Agent)
    "agent.configure",  # lifecycle: change an agent's configuration (resource: Agent)
    "task.allocate",  # scheduler: give a task resources on a host (resource: Host)
    "sandbox.start",  # sandbox-agent: start a container for a task (resource: Task)
    "message.send",  # messaging hook (resource: Agent or Channel)
    "tool.invoke",  # tool execution hook (resource: Tool)
    "data.read",  # data access hook (resource: Data)
    "data.write",
    "memory.read",  # context: read memories / knowledge (resource: Memory)
    "memory.write",
    "model.invoke",  # model gateway: call a model (resource: Model "provider/model"; context: budget)
    "secret.read",  # sandbox-agent: give a runtime secret to a task's sandbox (resource: Secret)
    "network.connect",  # sandbox-agent egress proxy: one connection of a sandbox (resource: Endpoint)
)


class EntityRef(msgspec.Struct, frozen=True, kw_only=True):
    """A Cedar entity: ``type::"id"`` with its attributes and parent entities (``Type::"id"`` strings)."""

    type: str
    id: str
    attrs: dict[str, Any] = msgspec.field(default_factory=dict)
    parents: tuple[str, ...] = ()

    @property
    def uid(self) -> str:
        return f'{self.type}::"{self.id}"'


class DecisionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One question: may ``principal`` do ``action`` on ``resource`` in ``context``?"""

    principal: EntityRef
    action: str
    resource: EntityRef
    context: dict[str, Any] = msgspec.field(default_factory=dict)


ConditionKind = Literal["require_approval", "redact", "log_full", "cap_resources"]


class Condition(msgspec.Struct, frozen=True, kw_only=True):
    """An obligation attached to an allow: ``kind`` says what, ``params`` how (fields to redact, caps …)."""

    kind: ConditionKind
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    policy: str = ""


class Allow(msgspec.Struct, frozen=True, kw_only=True, tag="allow", tag_field="effect"):
    policies: tuple[str, ...] = ()
    policy_version: int = 0


#: Why a request was denied, as a code a caller can act on (``Deny.code``, ``DecisionRecord.reason_code``).
DenyCode = Literal[
    "forbidden",  # a forbid policy matched
    "default_deny",  # no permit applies
    "forbid_error",  # a forbid could not be evaluated, so it denies
    "invalid_request",  # the request cannot be evaluated (not expressible in Cedar, or refused by it)
    "policy_halted",  # a policy event could not be applied: every decision denies until it is fixed
    "policy_unavailable",  # the decision point could not be asked (policy service unreachable)
    "policy_timeout",  # the decision point did not answer in time
    "unenforceable_condition",  # the allow carries a condition the enforcement point cannot enforce
    "",
]


class Deny(msgspec.Struct, frozen=True, kw_only=True, tag="deny", tag_field="effect"):
    reason: str
    policies: tuple[str, ...] = ()
    policy_version: int = 0
    code: DenyCode = ""


class AllowWithConditions(msgspec.Struct, frozen=True, kw_only=True, tag="allow_with_conditions", tag_field="effect"):
    conditions: tuple[Condition, ...]
    policies: tuple[str, ...] = ()
    policy_version: int = 0


Decision = Allow | Deny | AllowWithConditions


class DecisionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What an event records about the decision that gated it."""

    action: str
    effect: Literal["allow", "deny", "allow_with_conditions"]
    policy_version: int
    policies: tuple[str, ...] = ()
    reason: str = ""
    conditions: tuple[Condition, ...] = ()
    #: The id the decision log stores this decision under (set by the enforcer): the decision → action link.
    decision_id: str = ""
    reason_code: str = ""
    #: The enforcement point that received the decision (and enforces its conditions).
    point: str = ""

    @classmethod
    def of(
        cls, request: DecisionRequest, decision: Decision, *, decision_id: str = "", point: str = ""
    ) -> DecisionRecord:
        if isinstance(decision, Deny):
            return cls(
                action=request.action,
                effect="deny",
                policy_version=decision.policy_version,
                policies=decision.policies,
                reason=decision.reason,
                decision_id=decision_id,
                reason_code=decision.code,
                point=point,
            )
        conditions = decision.conditions if isinstance(decision, AllowWithConditions) else ()
        return cls(
            action=request.action,
            effect="allow_with_conditions" if conditions else "allow",
            policy_version=decision.policy_version,
            policies=decision.policies,
            conditions=conditions,
            decision_id=decision_id,
            point=point,
        )


def denied(request: DecisionRequest, decision: Deny) -> PolicyDenied:
    """The error a caller raises (after recording the denial) when ``decision`` denied ``request``."""
    names = f" [{', '.join(decision.policies)}]" if decision.policies else ""
    err = PolicyDenied(
        f"{request.principal.uid} may not {request.action} {request.resource.uid}: {decision.reason}{names}",
        action=request.action,
        policies=list(decision.policies),
        policy_version=decision.policy_version,
    )
    if decision.code:  # the typed reason travels with the error (``details.reason_code`` on the wire)
        err.details["reason_code"] = decision.code
    return err


class DecisionPoint(Protocol):
    """Where a service asks for decisions. Implementations must answer identically for the same version."""

    @property
    def version(self) -> int:
        """The policy-set version decisions are currently made against (0: none loaded)."""
        ...

    async def decide(self, request: DecisionRequest) -> Decision: ...

    async def decide_batch(self, requests: list[DecisionRequest]) -> list[Decision]: ...


class AllowAll:
    """Allows everything, saying so in every record. Only when enforcement is explicitly configured off."""

    POLICY = "enforcement-disabled"

    @property
    def version(self) -> int:
        return 0

    async def decide(self, request: DecisionRequest) -> Decision:
        return Allow(policies=(self.POLICY,))

    async def decide_batch(self, requests: list[DecisionRequest]) -> list[Decision]:
        return [Allow(policies=(self.POLICY,)) for _ in requests]
