"""The engine's memo of decisions: keyed by everything the policies can read, gone with the engine (pure)."""

from __future__ import annotations

from symbi_common.decisions import Allow, DecisionRequest, Deny, EntityRef
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.engine import PolicyEngine, context_attributes

READ_UNDER_V1 = 'permit(principal, action == Action::"api.read", resource) when { context.target like "/v1/*" };'
OTHER_TOKEN = 'permit(principal, action == Action::"api.read", resource) when { context has token_id };'


def request(target: str, role: str = "admin", token: str = "t1") -> DecisionRequest:
    return DecisionRequest(
        principal=EntityRef(type="Operator", id="ann", attrs={"role": role}),
        action="api.read",
        resource=EntityRef(type="ApiRoute", id="scheduler GET /v1/tasks", attrs={"service": "scheduler"}),
        context={"token_id": token, "target": target},
    )


def test_the_context_attributes_the_policies_name() -> None:
    assert context_attributes(compile_policies("a", READ_UNDER_V1)) == frozenset({"target"})
    assert context_attributes(compile_policies("a", OTHER_TOKEN)) == frozenset({"token_id"})
    whole = compile_policies(
        "a", 'permit(principal, action == Action::"api.read", resource) when { context == context };'
    )
    assert context_attributes(whole) is None  # used whole: every attribute counts


def test_a_repeated_request_is_answered_alike_and_what_the_policies_read_is_in_the_key() -> None:
    engine = PolicyEngine({"a": compile_policies("a", READ_UNDER_V1)}, 3)
    first = engine.decide(request("/v1/tasks"))
    assert isinstance(first, Allow)
    assert engine.decide(request("/v1/tasks")) == first
    assert isinstance(engine.decide(request("/v2/tasks")), Deny)  # target is read: not the memo's allow
    assert isinstance(engine.decide(request("/v1/x", token="t2")), Allow)
    assert len(engine._memo) == 3  # the token id is read by no policy: (target) alone tells them apart


def test_a_new_engine_decides_afresh() -> None:
    allowing = PolicyEngine({"a": compile_policies("a", READ_UNDER_V1)}, 1)
    assert isinstance(allowing.decide(request("/v1/tasks")), Allow)
    forbidding = (
        'forbid(principal is Operator, action == Action::"api.read", resource) when { principal.role == "admin" };'
    )
    changed = PolicyEngine({"a": compile_policies("a", READ_UNDER_V1 + "\n" + forbidding)}, 2)
    assert isinstance(changed.decide(request("/v1/tasks")), Deny)
    halted = PolicyEngine({"a": compile_policies("a", READ_UNDER_V1)}, 2, halted={"a": "broken"})
    assert isinstance(halted.decide(request("/v1/tasks")), Deny)
    assert isinstance(changed.decide(request("/v1/tasks", role="auditor")), Allow)  # principal attributes keyed


def test_a_request_that_cannot_be_evaluated_leaves_nothing_in_the_memo() -> None:
    """Its denial comes from what it carries beyond the key (an unusable attribute no policy names): a
    valid request with the same key must still be decided by Cedar, not answered with that denial."""
    engine = PolicyEngine({"a": compile_policies("a", READ_UNDER_V1)}, 1)
    broken = DecisionRequest(
        principal=EntityRef(type="Operator", id="ann", attrs={"role": "admin"}),
        action="api.read",
        resource=EntityRef(type="ApiRoute", id="scheduler GET /v1/tasks", attrs={"service": "scheduler"}),
        context={"token_id": None, "target": "/v1/tasks"},
    )
    refused = engine.decide(broken)
    assert isinstance(refused, Deny)
    assert refused.code == "invalid_request"
    assert isinstance(engine.decide(request("/v1/tasks")), Allow)
