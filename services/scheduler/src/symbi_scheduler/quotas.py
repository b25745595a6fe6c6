"""Quotas beyond one task: concurrent tasks and CPU-seconds per UTC day, per agent and per tenant. Pure.

The scheduler does not enforce a quota in code: it puts what it knows into the ``task.allocate`` request's
context (``context.quota``: the running tasks and the CPU-seconds used today of the task's agent and tenant, and
the limits that apply) and Cedar decides. The baseline ships the four ``quota-*`` forbid policies that deny a
task over a limit; an operator may drop, tighten or add to them like any policy (docs/policy.md, "Quotas").

What the scheduler does with a quota denial is decided here (:func:`quota_denial`):

- ``concurrent_tasks`` (agent or tenant): the task *waits* in the queue and is considered again when a task of
  the agent or tenant ends (its reason is kept on the task and logged);
- ``cpu_seconds_per_day``: the task is *refused* (``task.completed``, outcome ``refused``, code
  ``quota_exceeded``), because waiting would mean waiting for the next UTC day.

Limits: per agent from the definition (``AgentConfig.quota``), per tenant from ``[scheduler.tenant_quotas]``;
0 means unlimited (the limit is then left out of the context, and no policy can find it exceeded).
CPU-seconds come from the terminal execution events' measured usage, counted on the UTC day the task ended.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

#: The baseline's quota policies (services/policy/src/symbi_policy/baseline.cedar), by id: (scope, quota).
QUOTA_POLICIES: Mapping[str, tuple[str, str]] = {
    "quota-agent-concurrent": ("agent", "concurrent_tasks"),
    "quota-tenant-concurrent": ("tenant", "concurrent_tasks"),
    "quota-agent-cpu-seconds": ("agent", "cpu_seconds_per_day"),
    "quota-tenant-cpu-seconds": ("tenant", "cpu_seconds_per_day"),
}
#: How many UTC days of CPU usage are kept (today, and yesterday for a day boundary crossed mid-round).
_DAYS_KEPT = 2


def utc_day(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).date().isoformat()


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """Limits of one agent or tenant; 0 is unlimited."""

    concurrent_tasks: int = 0
    cpu_seconds_per_day: float = 0.0


@dataclass(slots=True)
class CpuLedger:
    """CPU-seconds used per UTC day, per agent and per tenant, from the terminal execution events."""

    agents: dict[tuple[str, str], float] = field(default_factory=dict)
    tenants: dict[tuple[str, str], float] = field(default_factory=dict)

    def record(self, agent_id: str, tenant: str, at: float, cpu_seconds: float) -> None:
        day = utc_day(at)
        self.agents[(day, agent_id)] = self.agents.get((day, agent_id), 0.0) + cpu_seconds
        self.tenants[(day, tenant)] = self.tenants.get((day, tenant), 0.0) + cpu_seconds
        days = sorted({d for d, _ in self.agents} | {d for d, _ in self.tenants})
        for old in days[:-_DAYS_KEPT]:
            self.agents = {k: v for k, v in self.agents.items() if k[0] != old}
            self.tenants = {k: v for k, v in self.tenants.items() if k[0] != old}

    def agent_today(self, agent_id: str, now: float) -> float:
        return self.agents.get((utc_day(now), agent_id), 0.0)

    def tenant_today(self, tenant: str, now: float) -> float:
        return self.tenants.get((utc_day(now), tenant), 0.0)


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """What the task's agent and tenant use now, and their limits: the decision's ``context.quota``."""

    tenant: str
    agent_running: int
    tenant_running: int
    agent_cpu_seconds_today: float
    tenant_cpu_seconds_today: float
    agent_limits: QuotaLimits
    tenant_limits: QuotaLimits

    def context(self) -> dict[str, object]:
        """The Cedar record (Cedar has no floats: CPU time in whole milliseconds)."""
        ctx: dict[str, object] = {
            "tenant": self.tenant,
            "agent_running": self.agent_running,
            "tenant_running": self.tenant_running,
            "agent_cpu_ms_today": round(self.agent_cpu_seconds_today * 1000),
            "tenant_cpu_ms_today": round(self.tenant_cpu_seconds_today * 1000),
        }
        for scope, limits in (("agent", self.agent_limits), ("tenant", self.tenant_limits)):
            if limits.concurrent_tasks > 0:
                ctx[f"{scope}_concurrent_limit"] = limits.concurrent_tasks
            if limits.cpu_seconds_per_day > 0:
                ctx[f"{scope}_cpu_ms_limit"] = round(limits.cpu_seconds_per_day * 1000)
        return ctx

    def describe(self, scope: str, quota: str) -> str:
        """Which quota and how much of it is used, for the task's reason."""
        who = "agent" if scope == "agent" else f"tenant {self.tenant!r}"
        limits = self.agent_limits if scope == "agent" else self.tenant_limits
        if quota == "concurrent_tasks":
            running = self.agent_running if scope == "agent" else self.tenant_running
            return f"{who} runs {running} of its {limits.concurrent_tasks} concurrent tasks"
        used = self.agent_cpu_seconds_today if scope == "agent" else self.tenant_cpu_seconds_today
        return f"{who} used {used:.1f} of its {limits.cpu_seconds_per_day:g} CPU-seconds today (UTC)"


@dataclass(frozen=True, slots=True)
class QuotaDenial:
    """A ``task.allocate`` denied by quota policies only: wait (concurrency) or refuse (CPU-seconds)."""

    action: Literal["wait", "refuse"]
    reason: str
    quotas: tuple[tuple[str, str], ...]


def quota_denial(policies: Sequence[str], usage: QuotaUsage) -> QuotaDenial | None:
    """How to handle a denial by ``policies``; None if any of them is not a quota policy (a plain denial)."""
    if not policies or any(p not in QUOTA_POLICIES for p in policies):
        return None
    quotas = tuple(QUOTA_POLICIES[p] for p in policies)
    refuse = [q for q in quotas if q[1] == "cpu_seconds_per_day"]
    chosen = refuse or list(quotas)
    reason = "; ".join(usage.describe(scope, quota) for scope, quota in chosen)
    if refuse:
        return QuotaDenial("refuse", f"quota exceeded: {reason}", quotas)
    return QuotaDenial("wait", f"waiting for quota: {reason}", quotas)
