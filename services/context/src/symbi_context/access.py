"""Who may read which memory: the principals and resources of the context service's ``memory.read`` and
``memory.write`` decisions, and the batch of ``memory.read`` decisions a read makes.

A memory owner's resource is ``Memory::"<owner>"`` with the owning agent as its parent (the policy schema's
``resource in principal``); a knowledge base's has no parent (policies grant it by name). An agent reads as
``Agent::"<id>"``; an operator reading content over HTTP as ``User::"<name>"`` with its token's role in
``roles``.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from prometheus_client import Counter
from symbi_common.decisions import DecisionPoint, DecisionRequest, Deny, EntityRef
from symbi_common.policy.enforcement import CONTEXT_MEMORY_READ
from symbi_common.policy.hooks import Enforcer

log = structlog.get_logger(__name__)

DENIED_READS = Counter("symbi_context_denied_reads_total", "Memory reads left out by a policy decision", ["resource"])


def agent_principal(agent_id: str) -> EntityRef:
    return EntityRef(type="Agent", id=agent_id)


def operator_principal(name: str, role: str) -> EntityRef:
    """An operator reading content over HTTP: ``User::"<name>"`` with its token's role in ``roles``."""
    return EntityRef(type="User", id=name, attrs={"roles": [role]})


def memory_resource(owner: str, scope: str) -> EntityRef:
    """``Memory::"<owner>"`` of ``scope`` ``memory`` (the owning agent as parent) or ``knowledge`` (none)."""
    parents = (f'Agent::"{owner}"',) if scope == "memory" else ()
    return EntityRef(type="Memory", id=owner, parents=parents)


async def may_read(decisions: DecisionPoint, principal: EntityRef, asked: Sequence[tuple[str, str]]) -> list[bool]:
    """``memory.read`` for ``principal`` on each ``(owner, "memory" | "knowledge")``, in one batch; a denial is
    logged and counted (an allow with a condition this point cannot enforce is a denial)."""
    if not asked:
        return []
    requests = [
        DecisionRequest(principal=principal, action="memory.read", resource=memory_resource(o, s)) for o, s in asked
    ]
    verdicts = await Enforcer.around(decisions).decide_batch(requests, CONTEXT_MEMORY_READ)
    allowed = []
    for (owner, scope), verdict in zip(asked, verdicts, strict=True):
        decision = verdict.decision
        if isinstance(decision, Deny):
            DENIED_READS.labels(scope).inc()
            log.warning(
                "memory read denied",
                principal=f"{principal.type}::{principal.id}",
                resource=owner,
                scope=scope,
                reason=decision.reason,
                policies=list(decision.policies),
            )
        allowed.append(not isinstance(decision, Deny))
    return allowed
