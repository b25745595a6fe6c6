"""Bounds on what a definition costs: the work done on it before it is compiled, and the size of its failure."""

from __future__ import annotations

import time
from typing import Any

import pytest
from symbi_common.errors import ValidationError
from symbi_contracts.lifecycle.config import AgentConfig, ConfigIssue
from symbi_contracts.lifecycle.events import AgentStatus
from symbi_lifecycle import controller
from symbi_lifecycle.application import RegisterRequest, register_command
from symbi_lifecycle.controller import compile_state
from symbi_lifecycle.domain import (
    CODEC,
    MAX_DEFINITION,
    AgentFailed,
    AgentState,
    ConfigRejected,
    Initialize,
    decide,
)
from symbi_lifecycle.issues import MAX_ISSUES, MAX_ISSUES_BYTES, bounded

from .conftest import Running

#: 23 KB of definition, 4,000 diagnostics (one per capability) of ~330 characters each.
MANY_PROBLEMS = "agent a { capabilities = [" + ",".join(f"A{i}" for i in range(4000)) + "] }"
#: The event store's default limit (settings ``events.max_event_bytes``).
MAX_EVENT_BYTES = 1024 * 1024 - 4096


def test_the_provisional_name_is_found_in_linear_time() -> None:
    """60,000 blank lines took ~5 s with ``^\\s*agent`` (``re.M``): every line start rescanned the rest."""
    started = time.perf_counter()
    command = register_command(RegisterRequest(agent_id="a", definition="\n" * 60_000 + "}"))
    assert time.perf_counter() - started < 1.0
    assert command.config.name == "unnamed"
    named = register_command(RegisterRequest(agent_id="a", definition="\n\n  \tagent blank_lines { }"))
    assert named.config.name == "blank-lines"


def test_an_oversized_definition_is_refused_before_any_work_on_it() -> None:
    with pytest.raises(ValidationError) as info:
        register_command(RegisterRequest(agent_id="a", definition=" " * (MAX_DEFINITION + 1)))
    assert info.value.details["field"] == "definition"


def _initializing(definition: str) -> AgentState:
    return AgentState(
        agent_id="a", status=AgentStatus.INITIALIZING, config=AgentConfig(name="a"), definition=definition
    )


def test_a_definition_with_thousands_of_problems_fails_in_an_event_that_fits() -> None:
    state = _initializing(MANY_PROBLEMS)
    config, issues = compile_state(state)
    assert config is None
    assert len(issues) > MAX_ISSUES
    [event] = decide(state, Initialize(issues=issues))
    assert isinstance(event, AgentFailed)
    assert len(CODEC.encode(event)) < MAX_EVENT_BYTES // 2  # sealing adds to it
    assert len(event.errors) == MAX_ISSUES + 1
    assert event.errors[-1].field == "issues"
    assert f"and {len(issues) - MAX_ISSUES} more" in event.errors[-1].message


def test_issues_are_bounded_in_bytes_and_each_text_in_characters() -> None:
    huge = ConfigIssue("f" * 10_000, "\x01" * 100_000, excerpt="x" * 100_000, hint="h" * 100_000)
    kept = bounded([huge] * 50)
    assert all(len(i.message) <= 1_000 and len(i.excerpt) <= 600 and len(i.field) <= 200 for i in kept)
    encoded = sum(len(CODEC.encode(AgentFailed(errors=(i,)))) for i in kept)
    assert encoded < MAX_ISSUES_BYTES + 50_000
    assert kept[-1].field == "issues"


def test_a_rejected_configuration_lists_a_bounded_number_of_issues() -> None:
    rejected = ConfigRejected([ConfigIssue(f"capabilities[{i}]", "bad") for i in range(1000)])
    assert len(rejected.issues) == MAX_ISSUES + 1
    assert rejected.message.endswith("(and 999 more)")


async def test_registering_a_definition_with_thousands_of_problems_fails_the_agent(running: Running) -> None:
    """The append used to raise PayloadTooLarge (413) and leave the agent Initializing for the sweep, forever."""
    r = await running.http.post("/v1/agents", json={"agent_id": "many", "definition": MANY_PROBLEMS})
    assert r.status_code == 201, r.text[:500]
    agent = r.json()
    assert agent["state"] == "Failed"
    assert len(agent["errors"]) == MAX_ISSUES + 1


def test_with_more_problems_than_are_kept_the_errors_come_first() -> None:
    """300 ignored metadata keys (warnings) before one error: the error is among the issues kept."""
    metadata = "metadata {\n" + "".join(f"  k{i} = 1\n" for i in range(300)) + "}\n"
    state = _initializing(metadata + "agent a { with memory = 1TB { } }\n")
    [event] = decide(state, Initialize(issues=compile_state(state)[1]))
    assert isinstance(event, AgentFailed)
    assert event.errors[0].field == "range"
    assert event.errors[0].line == 303


async def test_configuring_an_out_of_range_symbiont_memory_number_is_refused_not_a_fault(running: Running) -> None:
    """``max_memory_mb = 1e20`` raised AssertionError in the compiler: configure answered 500."""
    r = await running.http.post("/v1/agents", json={"agent_id": "mem", "definition": "agent mem { }"})
    assert r.json()["state"] == "Ready", r.text
    changed = "agent mem {\n  with max_memory_mb = 1e20 { }\n}\n"
    r = await running.http.post("/v1/agents/mem/configure", json={"definition": changed})
    assert r.status_code == 422, r.text
    assert [(i["field"], i["line"]) for i in r.json()["error"]["details"]["issues"]] == [("range", 2)]


@pytest.mark.parametrize(
    ("definition", "field", "line"),
    [
        ("agent a {\n  with memory = 68000MB { }\n}\n", "range", 2),
        ("\nagent _worker { }\n", "unsupported", 2),
    ],
)
def test_what_registration_refuses_is_a_diagnostic_with_its_position(definition: str, field: str, line: int) -> None:
    """These compiled, then failed validation with an issue at line 0 (``resources.memory_mb``, ``name``)."""
    config, issues = compile_state(_initializing(definition))
    assert config is None
    assert [(i.field, i.line) for i in issues] == [(field, line)]


def test_the_contracts_least_memory_registers() -> None:
    config, issues = compile_state(_initializing("agent a {\n  with memory = 16MB { }\n}\n"))
    assert issues == ()
    assert config is not None
    assert config.resources.memory_mb == 16


async def test_a_compiler_fault_on_configure_is_an_issue_as_on_registration(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault of the DSL compiler itself (an exception that is not a diagnostic): registration records it as an
    issue of the definition (Failed); configure let it through as a 500."""
    r = await running.http.post("/v1/agents", json={"agent_id": "fine", "definition": "agent fine { }"})
    assert r.json()["state"] == "Ready", r.text

    def faulty(definition: str, **kwargs: Any) -> Any:
        raise RuntimeError("the compiler tripped")

    monkeypatch.setattr(controller, "compile_agent", faulty)
    r = await running.http.post("/v1/agents", json={"agent_id": "faulty", "definition": "agent faulty { }"})
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "Failed", r.text
    assert [i["field"] for i in r.json()["errors"]] == ["definition"]
    r = await running.http.post("/v1/agents/fine/configure", json={"definition": "agent fine { }"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_config"
    [issue] = r.json()["error"]["details"]["issues"]
    assert issue["field"] == "definition", issue
    assert "please report it" in issue["message"], issue
