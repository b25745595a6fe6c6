"""The engine's memo of decisions: keyed by everything the policies can read, gone with the engine (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from symbi_common.decisions import Allow, DecisionRequest, Deny, EntityRef
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.engine import PolicyEngine, context_attributes

READ_UNDER_V1 = 'permit(principal, action == Action::"api.read", resource) when { context.target like "/v1/*" };'
OTHER_TOKEN = 'permit(principal, action == Action::"api.read", resource) when { context has token_id };'


def request(target: str, role: str = "admin", token: object = "t1") -> DecisionRequest:
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


def test_a_remembered_allow_is_not_given_to_a_request_cedar_cannot_evaluate() -> None:
    """The memo answers as a fresh engine would: a request whose unread context carries what Cedar cannot take
    (null, a number out of Cedar's range) is refused as ``invalid_request`` even after a valid one with the same
    key was allowed."""
    engine = PolicyEngine({"a": compile_policies("a", READ_UNDER_V1)}, 1)
    assert isinstance(engine.decide(request("/v1/tasks")), Allow)
    for unusable in (None, 2**63, -(2**63) - 1, float("nan"), float("inf"), 1e300, {"x": None}, [1, None], object()):
        broken = request("/v1/tasks", token=unusable)
        fresh = PolicyEngine({"a": compile_policies("a", READ_UNDER_V1)}, 1).decide(broken)
        remembered = engine.decide(broken)
        for decision in (fresh, remembered):
            assert isinstance(decision, Deny), unusable
            assert decision.code == "invalid_request", unusable
    for usable in (2**63 - 1, -(2**63), 1.5, 922337203685477.0, {"x": [1, "a"]}, (True, False)):
        ok = request("/v1/tasks", token=usable)
        fresh = PolicyEngine({"a": compile_policies("a", READ_UNDER_V1)}, 1).decide(ok)
        assert isinstance(fresh, Allow), (usable, fresh)
        assert isinstance(engine.decide(ok), Allow), usable


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**65), max_value=2**65) | st.floats() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "__extn", "b"]), inner, max_size=2)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(first=_VALUES, second=_VALUES)
def test_the_memo_answers_as_a_fresh_engine(first: object, second: object) -> None:
    """Whatever an unread attribute carries, a remembering engine decides as one that has seen nothing."""
    engine = PolicyEngine({"a": compile_policies("a", READ_UNDER_V1)}, 1)
    for value in (first, second):
        r = request("/v1/tasks", token=value)
        fresh = PolicyEngine({"a": compile_policies("a", READ_UNDER_V1)}, 1).decide(r)
        assert engine.decide(r) == fresh
