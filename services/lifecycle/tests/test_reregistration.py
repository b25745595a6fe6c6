"""A second ``agent.registered`` on an agent that exists is an impossible transition: it would reset any state
(Terminated included) to Initializing. ``apply`` raises IntegrityError for it, so the read model rejects it."""

from __future__ import annotations

from typing import Any

import pytest
from symbi_common.aggregate import Repository
from symbi_common.errors import IntegrityError
from symbi_common.eventstore import EventStore
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.lifecycle.events import CODEC, AgentReady, AgentRegistered, AgentStatus, AgentTerminated
from symbi_lifecycle.domain import AGENT, apply, initial

from .conftest import Running
from .test_api import GOOD, post, register

CONFIG = AgentConfig(name="again")


def test_apply_refuses_a_second_registration() -> None:
    state = apply(initial("a"), AgentRegistered(agent_id="a", config=CONFIG))
    with pytest.raises(IntegrityError):
        apply(state, AgentRegistered(agent_id="a", config=CONFIG))
    state = apply(state, AgentReady(config=CONFIG))
    state = apply(state, AgentTerminated(reason="done", previous=AgentStatus.READY))
    with pytest.raises(IntegrityError, match="registers it again"):
        apply(state, AgentRegistered(agent_id="a", config=CONFIG))


async def test_a_second_registration_in_the_stream_is_rejected_by_the_read_model(
    running: Running, make_store: Any
) -> None:
    await register(running.http, "once", GOOD)
    r = await post(running.http, "once", "terminate", {"reason": "done"})
    assert r.status_code == 200, r.text
    store: EventStore = await make_store("lifecycle")
    loaded = await Repository(store, AGENT).load("once")
    assert loaded.state.status is AgentStatus.TERMINATED
    [again] = await store.append(
        "agent", "once", [AgentRegistered(agent_id="once", config=CONFIG)], CODEC, expected=loaded.tip
    )
    r = await running.http.post("/v1/agents", json={"agent_id": "other", "config": GOOD})
    assert r.status_code == 201, r.text
    got = await running.http.get("/v1/agents/other", params={"min_sequence": r.json()["sequence"]})
    assert got.status_code == 200, got.text

    view = (await running.http.get("/v1/agents/once")).json()
    assert view["state"] == "Terminated"
    assert view["config"]["name"] == GOOD["name"]
    assert view["aggregate_version"] == loaded.tip.version
    pool = running.app.state.runtime.pool
    rejects = await pool.fetch("SELECT sequence, code FROM symbi_projection_rejects")
    assert [(r["sequence"], r["code"]) for r in rejects] == [(again.sequence, "integrity_error")]
