"""The typed command bodies other services send: ``cmd.context.store``, ``cmd.context.retrieve`` and
``cmd.lifecycle.suspend``. Whatever bytes arrive, decoding gives the typed body or a :class:`BadRequest` naming
the field, never another exception; what the senders build always decodes strictly."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from symbi_common.decisions import DecisionRequest, Deny, EntityRef
from symbi_common.errors import BadRequest
from symbi_common.policy.hooks import suspend_body
from symbi_contracts.context.commands import MAX_TAGS, MAX_TEXT_CHARS, NewMemory, Query, StoreRequest
from symbi_contracts.lifecycle.commands import MAX_REASON_CHARS, SuspendRequest
from symbi_contracts.wire import decode_json

BODIES: dict[str, type[Any]] = {"store": StoreRequest, "retrieve": Query, "suspend": SuspendRequest}
FIELDS = {name: list(t.__struct_fields__) for name, t in BODIES.items()}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _decodes_or_is_refused(data: bytes, type_: type[Any]) -> None:
    refused: BadRequest | None = None
    try:
        body = decode_json(data, type_)
    except BadRequest as err:  # any other exception fails the test
        refused = err
    if refused is None:
        assert isinstance(body, type_)
    else:
        assert refused.code == "bad_request"
        assert refused.details["field"]


@pytest.mark.parametrize("name", list(BODIES))
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=200))
def test_garbage_bytes_are_a_bad_request(name: str, data: bytes) -> None:
    _decodes_or_is_refused(data, BODIES[name])


@pytest.mark.parametrize("name", list(BODIES))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_json_with_the_fields_names_is_the_body_or_a_bad_request_naming_a_field(name: str, data: Any) -> None:
    keys = st.sampled_from([*FIELDS[name], "memories[0]", "unknown"])
    body = data.draw(st.dictionaries(keys, json_values, max_size=6))
    if name == "store" and data.draw(st.booleans()):  # reach into the memories too
        body["memories"] = data.draw(
            st.lists(st.dictionaries(st.sampled_from(list(NewMemory.__struct_fields__)), json_values), max_size=3)
        )
    _decodes_or_is_refused(msgspec.json.encode(body), BODIES[name])


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("store", {"agent_id": "a" * 129, "memories": [{"text": "x"}]}, "agent_id"),
        ("store", {"agent_id": "a", "memories": [{"text": "x" * (MAX_TEXT_CHARS + 1)}]}, "memories[0].text"),
        ("store", {"agent_id": "a", "memories": [{"text": "x", "tags": ["t"] * (MAX_TAGS + 1)}]}, "memories[0].tags"),
        ("store", {"agent_id": "a", "memories": [{"text": "x", "kind": "forever"}]}, "memories[0].kind"),
        ("store", {"agent_id": "a", "memories": [{"text": "x", "colour": "red"}]}, "memories[0].colour"),
        ("store", {"agent_id": "a", "memories": "x"}, "memories"),
        ("retrieve", {"agent_id": "a", "query": "q" * (MAX_TEXT_CHARS + 1)}, "query"),
        ("retrieve", {"agent_id": "a", "query": "q", "owners": ["o" * 129]}, "owners[0]"),
        ("retrieve", {"agent_id": "a", "query": "q", "limit": "ten"}, "limit"),
        ("retrieve", {"agent_id": "a", "query": "q", "sort": "newest"}, "sort"),
        ("suspend", {"agent_id": "a", "reason": "r" * (MAX_REASON_CHARS + 1)}, "reason"),
        ("suspend", {"agent_id": "a", "policy_id": 7}, "policy_id"),
        ("suspend", {"agent_id": "a", "until": "tomorrow"}, "until"),
    ],
)
def test_oversized_wrong_or_unknown_fields_are_refused_by_name(name: str, body: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_json(msgspec.json.encode(body), BODIES[name])
    assert caught.value.details["field"] == field


def test_well_formed_bodies_decode() -> None:
    store = decode_json(b'{"agent_id": "a", "memories": [{"text": "hi", "origin": {"task_id": "t"}}]}', StoreRequest)
    assert store.memories[0].kind == "long_term"
    assert store.memories[0].origin.task_id == "t"
    assert decode_json(b'{"agent_id": "a", "query": "q"}', Query).limit == 10
    assert decode_json(b'{"agent_id": "a"}', SuspendRequest).reason == "policy violation"


@settings(max_examples=100, deadline=None)
@given(
    agent=st.text(min_size=1, max_size=128),
    action=st.text(max_size=300),
    reason=st.text(max_size=3000),
    policies=st.lists(st.text(max_size=700), max_size=3),
)
def test_what_an_enforcer_sends_to_suspend_an_agent_decodes_strictly(
    agent: str, action: str, reason: str, policies: list[str]
) -> None:
    request = DecisionRequest(
        principal=EntityRef(type="Agent", id=agent), action=action, resource=EntityRef(type="Tool", id="t")
    )
    body = suspend_body(request, Deny(reason=reason, policies=tuple(policies)))
    decoded = decode_json(msgspec.json.encode(body), SuspendRequest)
    assert decoded.agent_id == agent
    assert decoded.reason.startswith("policy violation: ")
