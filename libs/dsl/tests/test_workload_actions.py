"""``workload = {…, actions: true}``: compiled, formatted and diagnosed; and the shipped note-keeper example,
whose own policy must deny its confidential note at the Cedar level until that policy is lifted."""

from __future__ import annotations

from pathlib import Path

import pytest
from symbi_common.decisions import Allow, DecisionRequest, Deny, EntityRef
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.engine import PolicyEngine
from symbi_dsl import DslError, compile_agent, format_source

ROOT = Path(__file__).parents[3]
NOTE_KEEPER = ROOT / "examples" / "agents" / "note-keeper.symbi"
BASELINE = ROOT / "services" / "policy" / "src" / "symbi_policy" / "baseline.cedar"


def _workload(fields: str) -> dict[str, object]:
    config = compile_agent(f'agent a() {{\n  workload = {{image: "symbi/x:1", {fields}}}\n}}\n')
    workload = config["workload"]
    assert isinstance(workload, dict)
    return workload


def test_actions_true_and_false_compile_into_the_workload() -> None:
    assert _workload("actions: true") == {"image": "symbi/x:1", "actions": True}
    assert _workload("actions: false") == {"image": "symbi/x:1", "actions": False}
    assert "actions" not in _workload('command: ["run"]')


@pytest.mark.parametrize(("value", "column"), [('"yes"', 44), ("1", 44), ("on", 44), ("[true]", 44)])
def test_a_non_boolean_actions_is_a_type_error_at_the_value(value: str, column: int) -> None:
    source = f'agent a() {{\n  workload = {{image: "symbi/x:1", actions: {value}}}\n}}\n'
    with pytest.raises(DslError) as err:
        compile_agent(source)
    [d] = err.value.diagnostics
    assert (d.code, d.line, d.column) == ("type", 2, column)
    assert "expected true or false" in d.message


def test_a_misspelt_actions_key_is_an_unknown_key_with_a_suggestion() -> None:
    with pytest.raises(DslError) as err:
        compile_agent('agent a() {\n  workload = {image: "symbi/x:1", action: true}\n}\n')
    [d] = err.value.diagnostics
    assert d.code == "unknown_key"
    assert "actions" in d.hint


def test_actions_survives_formatting() -> None:
    messy = 'agent a() {  workload={image:"symbi/x:1",actions:true} }\n'
    formatted = format_source(messy)
    assert "actions: true" in formatted
    assert compile_agent(formatted) == compile_agent(messy)
    assert format_source(formatted) == formatted


# --- the note-keeper example ---------------------------------------------------------------------


def _note_write(agent_id: str, classification: str | None) -> DecisionRequest:
    """What the sandbox-agent asks for the example's request (``Memory::"notes"`` owned by the agent)."""
    context = {"classification": classification} if classification is not None else {}
    return DecisionRequest(
        principal=EntityRef(type="Agent", id=agent_id),
        action="memory.write",
        resource=EntityRef(type="Memory", id="notes", parents=(f'Agent::"{agent_id}"',)),
        context=context,
    )


def test_note_keeper_is_an_actions_agent_without_network() -> None:
    config = compile_agent(NOTE_KEEPER.read_text(), agent_id="nk-1")
    assert config["name"] == "note-keeper"
    assert config["workload"]["actions"] is True
    assert config["workload"]["image"] == "symbi/busybox:1"
    assert config["security_tier"] == "tier1"
    assert "network_access" not in config
    assert config["resources"]["network_io_mbps"] == 0
    script = config["workload"]["command"][-1]
    assert "$SYMBI_INPUT" in script
    assert "@symbi" in script
    assert ">&2" in script
    assert "read -r reply" in script


def test_note_keeper_policy_denies_its_confidential_note_until_lifted() -> None:
    config = compile_agent(NOTE_KEEPER.read_text(), agent_id="nk-1")
    [policy] = config["policies"]
    agent_set = compile_policies("agent-nk-1", policy["cedar"])  # validates against the Cedar schema
    baseline = compile_policies("baseline", BASELINE.read_text())
    shipped = PolicyEngine({"baseline": baseline, "agent-nk-1": agent_set}, version=2)

    denied = shipped.decide(_note_write("nk-1", "confidential"))
    assert isinstance(denied, Deny), denied
    assert denied.policies == ("nk-1.confidential_notes.1",)
    assert "confidential" in denied.reason
    # Only confidential notes are forbidden, only for this agent; its other writes stay allowed.
    assert isinstance(shipped.decide(_note_write("nk-1", "internal")), Allow)
    assert isinstance(shipped.decide(_note_write("nk-1", None)), Allow)
    assert isinstance(shipped.decide(_note_write("other", "confidential")), Allow)

    # Lifted: the agent's policy set retired (or replaced by a definition without the rule).
    lifted = PolicyEngine({"baseline": baseline}, version=3)
    assert isinstance(lifted.decide(_note_write("nk-1", "confidential")), Allow)
    without_rule = NOTE_KEEPER.read_text().split("  policy confidential_notes {")[0] + "}\n"
    assert "policies" not in compile_agent(without_rule, agent_id="nk-1")
