"""Whatever an agent puts in a request's ``context`` and ``args``, the gateway's checks before a decision end in a
typed refusal or a question the policy engine decides: never another exception (pure).

The agent runs code its operator does not trust, and every field of its request lines is its own choice. The
gateway answers an unexpected exception with the typed error ``internal`` and notes it as an error of the
daemon, so one must not be reachable from a request. These are the steps ``ProtocolServer`` runs before it asks
the decision point (decode, the op's arguments, the resource, the Cedar schema check), then the decision itself
by an engine with the baseline policies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from symbi_common.decisions import Decision, DecisionRequest
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.engine import PolicyEngine
from symbi_contracts.agent_protocol import ARGS, Request
from symbi_sandbox_agent.actions import check_against_schema
from symbi_sandbox_agent.agent_ops import memory_question
from symbi_sandbox_agent.errors import ActionRequestError

BASELINE = Path(__file__).resolve().parents[2] / "policy" / "src" / "symbi_policy" / "baseline.cedar"
ENGINE = PolicyEngine({"baseline": compile_policies("baseline", BASELINE.read_text())}, 1)

#: JSON as an agent can send it: any nesting of objects, arrays, strings, numbers (beyond 64 bits too), null.
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(["classification", "size_bytes", "topic", "path", "__entity", "__extn", "access"]) | st.text(
    max_size=12
)
CONTEXTS = st.dictionaries(KEYS, JSON, max_size=5)
_DECIDED = tuple(op for op in ("memory.store", "memory.recall", "memory.forget", "knowledge.share", "knowledge.query"))


def question(op: str, args: Any, context: dict[str, Any]) -> DecisionRequest | None:
    """The question ``ProtocolServer`` asks for a memory or knowledge request, or None where it refuses first."""
    request = Request(id=1, op=op, context=context)
    try:
        return memory_question("agent-1", request, args)
    except ActionRequestError:
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(_DECIDED), args=st.dictionaries(st.text(max_size=12), JSON, max_size=4), context=CONTEXTS)
def test_any_context_is_refused_with_a_reason_or_decided(
    op: str, args: dict[str, Any], context: dict[str, Any]
) -> None:
    body = msgspec.json.encode({"v": 1, "id": 1, "op": op, "args": args, "context": context})
    request = msgspec.json.decode(body, type=Request)  # what the channel decodes
    try:
        typed = msgspec.convert(request.args, ARGS[op])
    except msgspec.ValidationError:
        return  # malformed_request
    asked = question(op, typed, dict(request.context))
    if asked is None:
        return  # malformed_request
    try:
        check_against_schema(asked)
    except ActionRequestError:
        return  # invalid_request / malformed_request, with the schema's reason
    assert isinstance(ENGINE.decide(asked), Decision)


@settings(max_examples=200, deadline=None)
@given(context=CONTEXTS, collection=st.text(min_size=1, max_size=20).filter(str.isprintable))
def test_a_well_formed_recall_with_any_context_is_decided_or_refused(context: dict[str, Any], collection: str) -> None:
    asked = question(
        "memory.recall", msgspec.convert({"query": "q", "collection": collection}, ARGS["memory.recall"]), context
    )
    assert asked is not None
    try:
        check_against_schema(asked)
    except ActionRequestError:
        return
    assert isinstance(ENGINE.decide(asked), Decision)
