"""Quotas (symbi_scheduler.quotas) and the baseline's quota-* Cedar policies that enforce them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from symbi_common.decisions import Allow, DecisionRequest, Deny, EntityRef
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.engine import PolicyEngine
from symbi_scheduler.quotas import QUOTA_POLICIES, CpuLedger, QuotaLimits, QuotaUsage, quota_denial

BASELINE = Path(__file__).resolve().parents[3] / "services" / "policy" / "src" / "symbi_policy" / "baseline.cedar"
ENGINE = PolicyEngine({"baseline": compile_policies("baseline", BASELINE.read_text())}, 1)
NOON = dt.datetime(2026, 12, 5, 12, tzinfo=dt.UTC).timestamp()


def usage(**kw: object) -> QuotaUsage:
    base: dict[str, object] = {
        "tenant": "acme",
        "agent_running": 0,
        "tenant_running": 0,
        "agent_cpu_seconds_today": 0.0,
        "tenant_cpu_seconds_today": 0.0,
        "agent_limits": QuotaLimits(),
        "tenant_limits": QuotaLimits(),
    }
    return QuotaUsage(**{**base, **kw})  # type: ignore[arg-type]


def allocate(u: QuotaUsage) -> Allow | Deny:
    request = DecisionRequest(
        principal=EntityRef(type="Agent", id="a1"),
        action="task.allocate",
        resource=EntityRef(type="Host", id="h1"),
        context={"quota": u.context(), "priority": "normal"},
    )
    decision = ENGINE.decide(request)
    assert isinstance(decision, Allow | Deny)
    return decision


def test_without_limits_the_baseline_allows_any_use() -> None:
    assert isinstance(allocate(usage(agent_running=50, tenant_cpu_seconds_today=1e9)), Allow)
    assert "agent_concurrent_limit" not in usage().context()


@pytest.mark.parametrize(
    ("kw", "policy", "action", "reason"),
    [
        (
            {"agent_running": 2, "agent_limits": QuotaLimits(concurrent_tasks=2)},
            "quota-agent-concurrent",
            "wait",
            "waiting for quota: agent runs 2 of its 2 concurrent tasks",
        ),
        (
            {"tenant_running": 3, "tenant_limits": QuotaLimits(concurrent_tasks=3)},
            "quota-tenant-concurrent",
            "wait",
            "waiting for quota: tenant 'acme' runs 3 of its 3 concurrent tasks",
        ),
        (
            {"agent_cpu_seconds_today": 60.5, "agent_limits": QuotaLimits(cpu_seconds_per_day=60.5)},
            "quota-agent-cpu-seconds",
            "refuse",
            "quota exceeded: agent used 60.5 of its 60.5 CPU-seconds today (UTC)",
        ),
        (
            {"tenant_cpu_seconds_today": 3600.0, "tenant_limits": QuotaLimits(cpu_seconds_per_day=3600)},
            "quota-tenant-cpu-seconds",
            "refuse",
            "quota exceeded: tenant 'acme' used 3600.0 of its 3600 CPU-seconds today (UTC)",
        ),
    ],
)
def test_each_quota_policy_denies_over_its_limit_and_says_what_to_do(
    kw: dict[str, object], policy: str, action: str, reason: str
) -> None:
    over = usage(**kw)
    decision = allocate(over)
    assert isinstance(decision, Deny)
    assert decision.policies == (policy,)
    denial = quota_denial(decision.policies, over)
    assert denial is not None
    assert (denial.action, denial.reason) == (action, reason)
    # One below the limit is allowed.
    under = {k: (v - 1 if isinstance(v, int | float) and not isinstance(v, bool) else v) for k, v in kw.items()}
    assert isinstance(allocate(usage(**under)), Allow)


def test_cpu_refusal_wins_over_waiting_and_foreign_policies_are_plain_denials() -> None:
    both = usage(
        agent_running=1,
        agent_cpu_seconds_today=10,
        agent_limits=QuotaLimits(concurrent_tasks=1, cpu_seconds_per_day=10),
    )
    decision = allocate(both)
    assert isinstance(decision, Deny)
    assert set(decision.policies) == {"quota-agent-concurrent", "quota-agent-cpu-seconds"}
    denial = quota_denial(decision.policies, both)
    assert denial is not None
    assert denial.action == "refuse"
    assert quota_denial(("quota-agent-concurrent", "quarantine"), both) is None
    assert quota_denial((), both) is None
    assert set(QUOTA_POLICIES) <= {p.split('"')[1] for p in BASELINE.read_text().split("@id(")[1:]}


def test_cpu_seconds_count_per_utc_day_per_agent_and_tenant() -> None:
    ledger = CpuLedger()
    ledger.record("a1", "acme", NOON, 5.5)
    ledger.record("a2", "acme", NOON + 60, 2.0)
    ledger.record("a1", "acme", NOON - 86_400, 100.0)  # yesterday
    assert ledger.agent_today("a1", NOON) == 5.5
    assert ledger.tenant_today("acme", NOON) == 7.5
    assert ledger.tenant_today("other", NOON) == 0.0
    assert ledger.agent_today("a1", NOON + 86_400) == 0.0  # a new day starts at zero
    ledger.record("a1", "acme", NOON + 2 * 86_400, 1.0)  # older days are dropped
    assert len({d for d, _ in ledger.agents}) == 2
