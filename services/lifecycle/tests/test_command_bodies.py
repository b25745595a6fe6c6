"""``cmd.lifecycle.suspend`` (every enforcing service's request after a policy violation) on the real service:
garbage bytes, wrong types and oversized fields get a typed error reply, never an internal error, and the
service keeps answering."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from symbi_common.errors import IllegalTransition
from symbi_contracts.lifecycle.commands import MAX_REASON_CHARS, SuspendRequest
from symbi_contracts.lifecycle.events import AgentStatus
from symbi_lifecycle.projections import AgentView

from .conftest import Running
from .test_api import GOOD

#: The codes a refused body may get: decoding, the service's checks, or the agent's state.
TYPED = {"bad_request", "payload_too_large", "validation_error", "not_found", "illegal_transition"}

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
)
bodies = (
    st.binary(max_size=100)
    | st.dictionaries(st.sampled_from([*SuspendRequest.__struct_fields__, "until"]), values, max_size=4).map(
        msgspec.json.encode
    )
    | st.sampled_from(
        [
            {"agent_id": "a" * 129},
            {"agent_id": "ada", "reason": "r" * (MAX_REASON_CHARS + 1)},
            {"agent_id": "ada", "policy_id": "p" * 513},
            {"agent_id": "no such agent!"},
            {"agent_id": "ada", "reason": 2**70},
        ]
    ).map(msgspec.json.encode)
)


async def _suspend(running: Running, data: bytes) -> dict[str, Any]:
    msg = await running.app.state.runtime.nc.request("cmd.lifecycle.suspend", data, timeout=10)
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    return reply


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=bodies)
async def test_a_malformed_suspend_gets_a_typed_error_reply(running: Running, data: bytes) -> None:
    reply = await _suspend(running, data)
    if not reply["ok"]:
        assert reply["error"]["code"] in TYPED, reply


async def test_a_suspension_is_typed_end_to_end(running: Running) -> None:
    assert (await _suspend(running, b"\xff"))["error"]["code"] == "bad_request"
    too_long = await _suspend(running, msgspec.json.encode({"agent_id": "ada", "reason": "r" * 1001}))
    assert too_long["error"]["code"] == "bad_request"
    assert too_long["error"]["details"]["field"] == "reason"
    await running.client.call("lifecycle", "register", {"agent_id": "ada", "config": GOOD}, AgentView)
    await running.client.call("lifecycle", "assign_task", {"agent_id": "ada", "task_id": "t1"}, AgentView)
    view = await running.client.call(
        "lifecycle", "suspend", SuspendRequest(agent_id="ada", reason="denied", policy_id="p1"), AgentView
    )
    assert view.state == AgentStatus.SUSPENDED
    with pytest.raises(IllegalTransition):
        await running.client.call("lifecycle", "suspend", SuspendRequest(agent_id="ada"), AgentView)


async def test_a_nul_character_is_refused_before_it_can_stop_the_read_model(running: Running) -> None:
    """PostgreSQL cannot store a NUL: accepted, it stopped the projection of every agent. It is refused at the
    boundary (HTTP and NATS), naming the field, and the read model keeps up."""
    bad = {"agent_id": "nul", "config": {**GOOD, "description": "a\x00b"}}
    r = await running.http.post("/v1/agents", json=bad)
    assert r.status_code == 400
    assert r.json()["error"]["details"]["field"] == "config.description"
    reply = await _command(running, "register", msgspec.json.encode(bad))
    assert reply["error"]["code"] == "bad_request"
    assert (await running.http.get("/v1/agents", params={"name": "a\x00"})).status_code == 400
    r = await running.http.post("/v1/agents", json={"agent_id": "fine", "config": GOOD})
    assert r.status_code == 201
    got = await running.http.get("/v1/agents/fine", params={"min_sequence": r.json()["sequence"]})
    assert got.status_code == 200, got.text


async def _command(running: Running, action: str, data: bytes) -> dict[str, Any]:
    msg = await running.app.state.runtime.nc.request(f"cmd.lifecycle.{action}", data, timeout=10)
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    return reply
