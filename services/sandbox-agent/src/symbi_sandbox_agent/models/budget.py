"""The state of one tenant's model budgets on one UTC day, folded from its ``budget.*`` events, and what of it
Cedar sees. Pure.

What counts against a budget is what was *used* (reconciled calls) plus what is *reserved* (calls under way).
The limits are not in the events: the agent's come from its definition (``task.assigned``), the tenant's from
the settings, so a changed limit applies to the rest of the day at once.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

from symbi_contracts.models.events import BudgetEvent, BudgetReconciled, BudgetReleased, BudgetReserved

from symbi_sandbox_agent.models.pricing import Spend

#: A tenant's name in an aggregate id and a subject token.
TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


def day_of(at: float | None = None) -> str:
    """The UTC day ``YYYYMMDD`` of a Unix time (default: now)."""
    return time.strftime("%Y%m%d", time.gmtime(time.time() if at is None else at))


def aggregate_id(day: str, tenant: str) -> str:
    """``<YYYYMMDD>-<tenant>``: the day first (fixed length), so any tenant name reads back unambiguously."""
    return f"{day}-{tenant}"


@dataclass(frozen=True, slots=True)
class Limit:
    """A budget per day; ``None``: not set (no limit of this kind)."""

    tokens: int | None = None
    micro_usd: int | None = None

    @property
    def is_set(self) -> bool:
        return self.tokens is not None or self.micro_usd is not None


@dataclass(frozen=True, slots=True)
class Usage:
    """Calls of one agent to one model that day, as reconciled."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    micro_usd: int = 0


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One tenant's day: open reservations by id, what each agent used, and usage per (agent, model)."""

    open: dict[str, BudgetReserved] = field(default_factory=dict)
    used: dict[str, Spend] = field(default_factory=dict)
    usage: dict[tuple[str, str], Usage] = field(default_factory=dict)

    def committed(self, agent_id: str | None = None) -> Spend:
        """Used plus reserved, of one agent or (``None``) of the whole tenant."""
        total = Spend()
        for agent, spent in self.used.items():
            if agent_id is None or agent == agent_id:
                total = total + spent
        for r in self.open.values():
            if agent_id is None or r.agent_id == agent_id:
                total = total + Spend(r.tokens, r.micro_usd)
        return total


def initial(_aggregate_id: str = "") -> BudgetState:
    return BudgetState()


def apply(state: BudgetState, event: BudgetEvent) -> BudgetState:
    """The state after ``event``; an event about a reservation that is not open changes nothing."""
    if isinstance(event, BudgetReserved):
        return replace(state, open={**state.open, event.reservation_id: event})
    reserved = state.open.get(event.reservation_id)
    if reserved is None:
        return state
    still_open = {k: v for k, v in state.open.items() if k != event.reservation_id}
    if isinstance(event, BudgetReleased):
        return replace(state, open=still_open)
    assert isinstance(event, BudgetReconciled)
    spent = Spend(event.input_tokens + event.output_tokens, event.micro_usd)
    key = (reserved.agent_id, reserved.model)
    before = state.usage.get(key, Usage())
    usage = Usage(
        before.calls + 1,
        before.input_tokens + event.input_tokens,
        before.output_tokens + event.output_tokens,
        before.micro_usd + event.micro_usd,
    )
    return BudgetState(
        open=still_open,
        used={**state.used, reserved.agent_id: state.used.get(reserved.agent_id, Spend()) + spent},
        usage={**state.usage, key: usage},
    )


def budget_context(
    state: BudgetState, agent_id: str, agent_limit: Limit, tenant_limit: Limit, requested: Spend
) -> dict[str, Any]:
    """``context.budget`` of a ``model.invoke`` decision: what the call would reserve, what is left of each
    budget that is set (never below zero), and whether any budget applies (``limited``)."""
    context: dict[str, Any] = {
        "limited": agent_limit.is_set or tenant_limit.is_set,
        "tokens_requested": requested.tokens,
        "micro_usd_requested": requested.micro_usd,
    }
    for scope, limit, spent in (
        ("agent", agent_limit, state.committed(agent_id)),
        ("tenant", tenant_limit, state.committed()),
    ):
        if limit.tokens is not None:
            context[f"{scope}_tokens_left"] = max(0, limit.tokens - spent.tokens)
        if limit.micro_usd is not None:
            context[f"{scope}_micro_usd_left"] = max(0, limit.micro_usd - spent.micro_usd)
    return context


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A budget the call does not fit into: ``scope`` agent/tenant, ``unit`` tokens/micro_usd."""

    scope: str
    unit: str
    left: int
    requested: int


def shortfalls(context: dict[str, Any]) -> list[Shortfall]:
    """The budgets of ``context.budget`` the request exceeds (agent first, tokens first), to name in an error."""
    found = []
    for scope in ("agent", "tenant"):
        for unit in ("tokens", "micro_usd"):
            left = context.get(f"{scope}_{unit}_left")
            requested = int(context.get(f"{unit}_requested", 0))
            if left is not None and requested > left:
                found.append(Shortfall(scope, unit, int(left), requested))
    return found
