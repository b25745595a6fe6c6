"""A NUL character that only appears once a definition is compiled (the DSL escape ``\\0``) must neither reach
an event nor, if a stored event holds one anyway, stop the read model: PostgreSQL's ``text`` and ``jsonb``
cannot store it, and an error that is not a rejection halts the projection of every agent for good."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from symbi_common.aggregate import Repository
from symbi_common.bounds import check_no_nul
from symbi_common.errors import ValidationError
from symbi_common.eventstore import EventStore
from symbi_common.sealing import ChainTip
from symbi_contracts.lifecycle.config import AgentConfig, ConfigIssue, ScheduleSpec, Workload
from symbi_contracts.lifecycle.events import CODEC, AgentFailed, AgentReady, AgentRegistered
from symbi_lifecycle.config import validate_config
from symbi_lifecycle.controller import compile_state
from symbi_lifecycle.domain import (
    AGENT,
    ConfigRejected,
    Configure,
    Initialize,
    Register,
    apply,
    decide,
    initial,
)

from .conftest import Running

HELLO = (Path(__file__).parents[3] / "examples" / "agents" / "hello.symbi").read_text()
# The body holds a backslash and a zero (it passes the body's NUL check); compiled, it is a real NUL.
NUL_HELLO = HELLO.replace('description = "A minimal agent', 'description = "A mini\\0mal agent')


def test_the_reproduction_compiles_to_a_nul() -> None:
    assert "\x00" not in NUL_HELLO
    assert NUL_HELLO != HELLO
    state = apply(
        initial("nul"), AgentRegistered(agent_id="nul", config=AgentConfig(name="hello-agent"), definition=NUL_HELLO)
    )
    config, issues = compile_state(state)
    assert config is None  # not carried into AgentFailed
    assert [i.field for i in issues] == ["description"]
    assert "NUL" in issues[0].message


def test_validate_config_finds_a_nul_anywhere_and_names_the_field() -> None:
    deep = AgentConfig(
        name="deep",
        schedules=(ScheduleSpec(name="s", cron="* * * * *", input="x\x00"),),
        workload=Workload(image="symbi/busybox:1", env={"K\x00": "v"}),
    )
    fields = [i.field for i in validate_config(deep) if "NUL" in i.message]
    assert fields[0] == "workload.env.K\\0"  # the path itself is storable
    assert all("\x00" not in i.field + i.message for i in validate_config(deep))
    nested = AgentConfig(name="n", schedules=(ScheduleSpec(name="s", cron="* * * * *", input="x\x00"),))
    assert [i.field for i in validate_config(nested)] == ["schedules[0].input"]


def test_the_domain_never_decides_an_event_holding_a_nul() -> None:
    bad = AgentConfig(name="bad", description="a\x00b")
    with pytest.raises(ValidationError) as err:
        decide(initial("a"), Register(config=bad))
    assert err.value.details["field"] == "config.description"
    with pytest.raises(ValidationError):
        decide(initial("a"), Register(config=AgentConfig(name="a"), definition="agent a\x00() {}"))

    state = apply(initial("a"), AgentRegistered(agent_id="a", config=AgentConfig(name="a")))
    for command in (Initialize(config=bad), Initialize(config=bad, issues=validate_config(bad))):
        [event] = decide(state, command)
        assert isinstance(event, AgentFailed)
        assert event.config is None
        assert "description" in [i.field for i in event.errors]
    # An issue quoting a compiled map key is made storable rather than refused (the agent still fails).
    [event] = decide(state, Initialize(issues=(ConfigIssue("workload.env.A\x00", "is not a variable name"),)))
    assert isinstance(event, AgentFailed)
    check_no_nul(event)  # raises if one is left
    assert event.errors[0].field == "workload.env.A\\0"

    ready = apply(state, AgentReady(config=AgentConfig(name="a")))
    with pytest.raises(ConfigRejected) as rejected:
        decide(ready, Configure(config=bad))
    assert [i.field for i in rejected.value.issues] == ["description"]


async def test_a_nul_escape_in_a_definition_fails_the_agent_and_the_read_model_goes_on(running: Running) -> None:
    http = running.http
    r = await http.post("/v1/agents", json={"agent_id": "nul-def", "definition": NUL_HELLO, "file": "hello.symbi"})
    assert r.status_code == 201, r.text
    agent = r.json()
    assert agent["state"] == "Failed"
    assert [i["field"] for i in agent["errors"]] == ["description"]
    got = await http.get("/v1/agents/nul-def", params={"min_sequence": agent["sequence"]})
    assert got.status_code == 200, got.text
    assert got.json()["state"] == "Failed"

    # A configuration change to such a definition is refused, and nothing is recorded.
    r = await http.post("/v1/agents", json={"agent_id": "conf-nul", "definition": HELLO})
    assert r.json()["state"] == "Ready", r.text
    r = await http.post("/v1/agents/conf-nul/configure", json={"definition": NUL_HELLO})
    assert r.status_code == 422, r.text
    assert [i["field"] for i in r.json()["error"]["details"]["issues"]] == ["description"]

    # Agents registered afterwards are in the read model.
    r = await http.post("/v1/agents", json={"agent_id": "after-nul", "definition": HELLO})
    assert r.status_code == 201, r.text
    got = await http.get("/v1/agents/after-nul", params={"min_sequence": r.json()["sequence"]})
    assert got.status_code == 200, got.text
    assert got.json()["state"] == "Ready"


async def test_a_stored_event_holding_a_nul_is_rejected_and_the_read_model_goes_on(
    running: Running, make_store: Any
) -> None:
    store: EventStore = await make_store("lifecycle")
    bad = AgentConfig(name="stored-nul", description="a\x00b")
    # Written directly with the lifecycle signer, as an older version (or a bug) could have written it.
    [_, ready] = await store.append(
        "agent",
        "stored-nul",
        [AgentRegistered(agent_id="stored-nul", config=AgentConfig(name="stored-nul")), AgentReady(config=bad)],
        CODEC,
        expected=ChainTip(),
    )
    r = await running.http.post("/v1/agents", json={"agent_id": "later", "definition": HELLO})
    assert r.status_code == 201, r.text
    got = await running.http.get("/v1/agents/later", params={"min_sequence": r.json()["sequence"]})
    assert got.status_code == 200, got.text

    pool = running.app.state.runtime.pool
    rejects = await pool.fetch("SELECT sequence, code, message FROM symbi_projection_rejects")
    assert [(r["sequence"], r["code"]) for r in rejects] == [(ready.sequence, "integrity_error")]
    assert "NUL" in rejects[0]["message"]
    # The event before it was applied; the one holding the NUL was not.
    view = (await running.http.get("/v1/agents/stored-nul")).json()
    assert view["state"] == "Initializing"
    assert view["aggregate_version"] == 1
    # The write side still reads the history it appended.
    loaded = await Repository(store, AGENT).load("stored-nul")
    assert loaded.state.config == bad
