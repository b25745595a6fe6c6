"""``cmd.context.store`` and ``cmd.context.retrieve`` (the action gateway's memory actions) on the real service:
garbage bytes, wrong types and oversized fields get a typed error reply, never an internal error, and the
service keeps answering."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from symbi_contracts.context.commands import MAX_TEXT_CHARS, NewMemory, Query, Retrieved, Stored, StoreRequest

#: The codes a refused body may get: decoding (bad_request, payload_too_large) or the service's checks.
TYPED = {"bad_request", "payload_too_large", "invalid_context", "validation_error"}

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
)


def _bodies(type_: type[Any]) -> st.SearchStrategy[bytes]:
    fields = st.sampled_from([*type_.__struct_fields__, "extra"])
    typed_wrong = st.dictionaries(fields, values, max_size=5).map(msgspec.json.encode)
    oversized = st.sampled_from(
        [
            {"agent_id": "a" * 129, "memories": [{"text": "x"}], "query": "q"},
            {
                "agent_id": "ada",
                "memories": [{"text": "x" * (MAX_TEXT_CHARS + 1)}],
                "query": "q" * (MAX_TEXT_CHARS + 1),
            },
            {"agent_id": "ada", "memories": [{"text": "x", "tags": ["t"] * 33}], "query": "q", "limit": 2**70},
            {"agent_id": "ada", "memories": [{"text": "x", "ttl_s": -1}], "query": "q", "owners": ["no/slash"]},
        ]
    ).map(msgspec.json.encode)
    return st.binary(max_size=100) | typed_wrong | oversized


async def _ask(running: Any, action: str, data: bytes) -> dict[str, Any]:
    msg = await running.app.state.runtime.nc.request(f"cmd.context.{action}", data, timeout=10)
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    return reply


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_a_malformed_body_gets_a_typed_error_reply(running: Any, data: Any) -> None:
    action, type_ = data.draw(st.sampled_from([("store", StoreRequest), ("retrieve", Query)]))
    reply = await _ask(running, action, data.draw(_bodies(type_)))
    if not reply["ok"]:
        assert reply["error"]["code"] in TYPED, reply


async def test_the_service_answers_well_formed_commands_after_malformed_ones(running: Any) -> None:
    assert (await _ask(running, "store", b"\xff\x00"))["error"]["code"] == "bad_request"
    unknown = await _ask(running, "retrieve", b'{"agent_id": "ada", "query": "q", "sort": "new"}')
    assert unknown["error"]["code"] == "bad_request"
    assert "sort" in unknown["error"]["message"]
    body = StoreRequest(agent_id="ada", memories=(NewMemory(text="tea at five"),))
    stored = await running.client.call("context", "store", body, Stored)
    query = Query(agent_id="ada", query="when is tea", min_sequence=stored.sequence)
    found = await running.client.call("context", "retrieve", query, Retrieved)
    assert [r.id for r in found.results] == stored.ids
