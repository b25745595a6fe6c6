"""Enforcement points: which conditions an allow may carry at each point (pure)."""

from __future__ import annotations

import pytest
from symbi_common.decisions import Allow, AllowWithConditions, Condition, Deny
from symbi_common.policy.conditions import CONDITION_KINDS
from symbi_common.policy.enforcement import (
    AUDIT_EVENT_DETAILS,
    GATEWAY_ACTION,
    POINTS,
    SANDBOX_START,
    SCHEDULER_TASK_ALLOCATE,
    UNSPECIFIED,
    EnforcementPoint,
)


def allow(*conditions: Condition) -> AllowWithConditions:
    return AllowWithConditions(conditions=conditions, policies=("p",), policy_version=3)


def test_points_are_named_once_and_name_only_known_conditions() -> None:
    names = [p.name for p in POINTS]
    assert len(names) == len(set(names))
    for point in POINTS:
        assert point.conditions <= set(CONDITION_KINDS), point.name
        assert not point.caps or "cap_resources" in point.conditions, point.name


def test_plain_allows_and_denials_pass_unchanged() -> None:
    plain, no = Allow(policies=("p",)), Deny(reason="no", code="forbidden")
    assert UNSPECIFIED.check(plain) is plain
    assert UNSPECIFIED.check(no) is no
    assert UNSPECIFIED.check(allow()) == allow()  # an allow without conditions is a plain allow


@pytest.mark.parametrize("kind", CONDITION_KINDS)
def test_the_unspecified_point_enforces_nothing(kind: str) -> None:
    params = {"memory_mb": 1} if kind == "cap_resources" else {}
    decision = UNSPECIFIED.check(allow(Condition(kind=kind, params=params, policy="p1")))  # type: ignore[arg-type]
    assert isinstance(decision, Deny)
    assert decision.code == "unenforceable_condition"
    assert decision.policies == ("p",)
    assert decision.policy_version == 3
    assert decision.reason == f"unenforceable condition: unspecified cannot enforce {kind} (policy p1)"


def test_each_point_keeps_what_it_enforces_and_denies_the_rest() -> None:
    redact = Condition(kind="redact", params={"fields": ["ssn"]})
    approval = Condition(kind="require_approval")
    assert AUDIT_EVENT_DETAILS.check(allow(redact)) == allow(redact)
    assert isinstance(AUDIT_EVENT_DETAILS.check(allow(redact, approval)), Deny)  # one unenforceable is enough
    assert isinstance(GATEWAY_ACTION.check(allow(redact)), Deny)
    caps = Condition(kind="cap_resources", params={"memory_mb": 256, "disk_io_mbps": 10})
    assert SANDBOX_START.check(allow(caps)) == allow(caps)
    assert SCHEDULER_TASK_ALLOCATE.unenforceable([caps]) == ["cap_resources of disk_io_mbps"]
    network = Condition(kind="cap_resources", params={"network_io_mbps": 1})
    assert SANDBOX_START.unenforceable([network]) == ["cap_resources of network_io_mbps"]


def test_a_point_declares_its_own() -> None:
    point = EnforcementPoint("svc.x", conditions=frozenset({"log_full"}))
    assert point.unenforceable([Condition(kind="log_full"), Condition(kind="redact", policy="r")]) == [
        "redact (policy r)"
    ]
