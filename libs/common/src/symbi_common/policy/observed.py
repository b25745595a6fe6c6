"""What every decision leaves behind: a ``policy.decide`` span in the caller's trace and the decision metrics.

Wherever a decision is made — the embedded engine of any service, the policy service answering
``cmd.policy.decide``, or a remote point asking it — it is counted by action and outcome
(``symbi_policy_decisions_total``, so denials show on every service that decides), timed
(``symbi_policy_decision_seconds``) and, while spans are exported, recorded as a span with the action,
principal, resource, effect, policy version and deciding policies. A denial decided by an engine also
counts as a security event; a remote point leaves that to the policy service, which made it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

from opentelemetry import trace

from symbi_common.decisions import AllowWithConditions, Decision, DecisionRequest, Deny
from symbi_common.policy.cedar import schema_text
from symbi_common.telemetry import POLICY_DECISION_SECONDS, POLICY_DECISIONS, SECURITY_EVENTS, traced

#: The points that decide with an engine of their own (their denials are security events).
_DECIDING = frozenset({"embedded", "service"})
_ACTION_RE = re.compile(r'^action\s+((?:"[^"]+"\s*,?\s*)+)appliesTo', re.MULTILINE)


@cache
def schema_actions() -> frozenset[str]:
    """The actions the Cedar schema defines."""
    return frozenset(name for m in _ACTION_RE.finditer(schema_text()) for name in re.findall(r'"([^"]+)"', m.group(1)))


def action_label(action: str) -> str:
    """``action`` as a metric label: a request's action is the caller's to choose, so one the schema does not
    define is ``other`` (each distinct label value is a time series kept for the life of the process)."""
    return action if action in schema_actions() else "other"


def outcome(decision: Decision) -> str:
    """``allow``, ``deny`` or ``conditions`` (an allow with conditions)."""
    if isinstance(decision, Deny):
        return "deny"
    if isinstance(decision, AllowWithConditions):
        return "conditions"
    return "allow"


def count(point: str, request: DecisionRequest, decision: Decision) -> None:
    result = outcome(decision)
    POLICY_DECISIONS.labels(point, action_label(request.action), result).inc()
    if result == "deny" and point in _DECIDING:
        SECURITY_EVENTS.labels("policy_denial").inc()


def _describe(span: trace.Span, decision: Decision) -> None:
    span.set_attribute("symbi.policy.decision", outcome(decision))
    span.set_attribute("symbi.policy.version", decision.policy_version)
    if decision.policies:
        span.set_attribute("symbi.policy.policies", list(decision.policies))
    if isinstance(decision, Deny):
        span.set_attribute("symbi.policy.reason", decision.reason[:500])


@contextmanager
def observed(point: str, request: DecisionRequest) -> Iterator[list[Decision]]:
    """Time, count and trace one decision: put the decision in the yielded list inside the block."""
    out: list[Decision] = []
    started = time.perf_counter()
    attributes = {
        "symbi.policy.point": point,
        "symbi.policy.action": request.action,
        "symbi.policy.principal": request.principal.uid,
        "symbi.policy.resource": request.resource.uid,
    }
    with traced("policy.decide", attributes=attributes) as span:
        yield out
        POLICY_DECISION_SECONDS.labels(point, action_label(request.action)).observe(time.perf_counter() - started)
        if out:
            count(point, request, out[0])
            if span.is_recording():
                _describe(span, out[0])


@contextmanager
def observed_batch(point: str, requests: Sequence[DecisionRequest]) -> Iterator[list[Decision]]:
    """:func:`observed` for a batch: one span and one latency sample, every decision counted."""
    out: list[Decision] = []
    started = time.perf_counter()
    attributes: dict[str, Any] = {"symbi.policy.point": point, "symbi.policy.requests": len(requests)}
    with traced("policy.decide_batch", attributes=attributes) as span:
        yield out
        POLICY_DECISION_SECONDS.labels(point, "batch").observe(time.perf_counter() - started)
        for request, decision in zip(requests, out, strict=False):
            count(point, request, decision)
        if span.is_recording():
            span.set_attribute("symbi.policy.denials", sum(isinstance(d, Deny) for d in out))
