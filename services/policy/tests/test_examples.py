"""The worked examples of ``examples/policies/``: each policy kind allows and denies the right requests.

Pure engine tests (no I/O): the same engine every decision point runs, over the example files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from symbi_common.decisions import Allow, AllowWithConditions, Decision, DecisionRequest, Deny, EntityRef
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.conditions import capped, redact, requires_approval
from symbi_common.policy.engine import DEFAULT_DENY, PolicyEngine
from symbi_common.policy.hooks import resources_context

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "policies"
PACKAGED_BASELINE = Path(__file__).resolve().parents[1] / "src" / "symbi_policy" / "baseline.cedar"


def engine(*names: str) -> PolicyEngine:
    sets = {name: compile_policies(name, (EXAMPLES / f"{name}.cedar").read_text()) for name in names}
    return PolicyEngine(sets, 7)


def ask(eng: PolicyEngine, principal: EntityRef, action: str, resource: EntityRef, **context: object) -> Decision:
    return eng.decide(DecisionRequest(principal=principal, action=action, resource=resource, context=dict(context)))


def agent(agent_id: str = "a1", **attrs: object) -> EntityRef:
    return EntityRef(type="Agent", id=agent_id, attrs=dict(attrs))


def test_every_example_validates_against_the_schema() -> None:
    files = sorted(EXAMPLES.glob("*.cedar"))
    assert {f.stem for f in files} >= {"baseline", "access_control", "data_flow", "resource_usage", "audit"}
    for f in files:
        assert compile_policies(f.stem, f.read_text()), f


def test_the_packaged_baseline_is_the_example() -> None:
    assert PACKAGED_BASELINE.read_text() == (EXAMPLES / "baseline.cedar").read_text()


def test_baseline_permits_normal_operations_and_denies_the_rest() -> None:
    eng = engine("baseline")
    user = EntityRef(type="User", id="alice")
    assert isinstance(ask(eng, user, "agent.register", EntityRef(type="Agent", id="a1")), Allow)
    assert isinstance(ask(eng, agent(), "task.allocate", EntityRef(type="Host", id="h1")), Allow)
    own = EntityRef(type="Memory", id="m1", parents=('Agent::"a1"',))
    other = EntityRef(type="Memory", id="m2", parents=('Agent::"a2"',))
    read_own = ask(eng, agent(), "memory.read", own)
    assert isinstance(read_own, Allow)
    assert read_own.policies == ("baseline-agents-own-memory",)
    assert read_own.policy_version == 7
    denied = ask(eng, agent(), "memory.read", other)
    assert isinstance(denied, Deny)
    assert denied.reason == DEFAULT_DENY
    assert denied.policies == ()
    # Default deny: nothing permits an agent to register agents.
    assert isinstance(ask(eng, agent(), "agent.register", EntityRef(type="Agent", id="a2")), Deny)


def test_access_control() -> None:
    eng = engine("baseline", "access_control")
    deploy = EntityRef(type="Tool", id="deploy")
    allowed = ask(eng, agent(capabilities=["deploy"], security_tier="tier2"), "tool.invoke", deploy)
    assert isinstance(allowed, Allow)
    wrong_tier = ask(eng, agent(capabilities=["deploy"], security_tier="tier1"), "tool.invoke", deploy)
    assert isinstance(wrong_tier, Deny)
    assert wrong_tier.policies == ("deploy-tool-needs-capability",)
    assert "deploy capability" in wrong_tier.reason
    other_tool = ask(eng, agent(), "tool.invoke", EntityRef(type="Tool", id="search"))
    assert isinstance(other_tool, Allow)
    admin = EntityRef(type="User", id="root", attrs={"roles": ["admin"]})
    plain = EntityRef(type="User", id="bob", attrs={"roles": ["viewer"]})
    target = EntityRef(type="Agent", id="a1")
    assert isinstance(ask(eng, admin, "agent.configure", target), Allow)
    refused = ask(eng, plain, "agent.configure", target)
    assert isinstance(refused, Deny)
    assert refused.reason == "only admins may reconfigure agents"


def test_data_flow_phi_needs_clearance() -> None:
    eng = engine("baseline", "data_flow")
    phi = EntityRef(type="Data", id="record-9", attrs={"classification": "phi"})
    uncleared = ask(eng, agent(), "data.read", phi)
    assert isinstance(uncleared, Deny)
    assert uncleared.policies == ("phi-read-needs-clearance",)
    cleared = ask(eng, agent(clearances=["phi"]), "data.read", phi)
    assert isinstance(cleared, AllowWithConditions)
    assert {c.kind for c in cleared.conditions} == {"redact", "log_full"}
    assert redact({"name": "x", "ssn": "123", "nested": {"date_of_birth": "1990"}}, cleared.conditions) == {
        "name": "x",
        "ssn": "[REDACTED]",
        "nested": {"date_of_birth": "[REDACTED]"},
    }
    tool = EntityRef(type="Tool", id="translator")
    cleared_tool = EntityRef(type="Tool", id="ehr", attrs={"clearances": ["phi"]})
    assert isinstance(ask(eng, agent(), "tool.invoke", tool, classification="phi"), Deny)
    assert isinstance(ask(eng, agent(), "tool.invoke", tool, classification="internal"), Allow)
    assert isinstance(ask(eng, agent(), "tool.invoke", cleared_tool, classification="phi"), Allow)
    to_agent = ask(eng, agent(), "message.send", agent("a2"), classification="phi")
    assert isinstance(to_agent, Deny)
    assert to_agent.reason == "phi data may not be sent to an agent without the phi clearance"
    assert isinstance(ask(eng, agent(), "message.send", agent("a3", clearances=["phi"]), classification="phi"), Allow)


def test_resource_usage_limits_and_caps() -> None:
    eng = engine("baseline", "resource_usage")
    host = EntityRef(type="Host", id="h1")
    too_much = ask(eng, agent(security_tier="tier2"), "task.allocate", host, resources={"memory_mb": 16384})
    assert isinstance(too_much, Deny)
    assert too_much.policies == ("task-memory-limit",)
    too_many_cores = ask(eng, agent(security_tier="tier2"), "task.allocate", host, resources={"cpu_cores": 6.5})
    assert isinstance(too_many_cores, Deny)
    assert too_many_cores.policies == ("task-cpu-limit",)
    # cpu_cores given as a whole number still travels as a Cedar decimal
    for resources in (resources_context(cpu_cores=8), {"cpu_cores": 8}):
        whole = ask(eng, agent(security_tier="tier2"), "task.allocate", host, resources=resources)
        assert isinstance(whole, Deny)
        assert whole.policies == ("task-cpu-limit",)
    tier2 = ask(eng, agent(security_tier="tier2"), "task.allocate", host, resources={"memory_mb": 4096})
    assert isinstance(tier2, Allow)
    tier1 = ask(eng, agent(security_tier="tier1"), "task.allocate", host, resources={"memory_mb": 4096})
    assert isinstance(tier1, AllowWithConditions)
    assert capped({"memory_mb": 4096, "cpu_cores": 2.0}, tier1.conditions) == {"memory_mb": 1024, "cpu_cores": 1}
    assert tier1.conditions[0].params == {"memory_mb": 1024, "cpu_cores": 1}
    assert tier1.conditions[0].policy == "tier1-capped"


def test_audit_requirements() -> None:
    eng = engine("baseline", "audit")
    shell = ask(eng, agent(), "tool.invoke", EntityRef(type="Tool", id="shell"))
    assert isinstance(shell, AllowWithConditions)
    assert requires_approval(shell.conditions)
    assert "audit-shell-approval" in shell.policies
    write = ask(eng, agent(), "data.write", EntityRef(type="Data", id="d1"))
    assert isinstance(write, AllowWithConditions)
    assert [c.kind for c in write.conditions] == ["log_full"]
    # No audit requirement on reads.
    assert isinstance(ask(eng, agent(), "data.read", EntityRef(type="Data", id="d1")), Allow)


def test_forbid_wins_over_any_permit() -> None:
    sets = {
        "open": compile_policies("open", '@id("all")\npermit(principal, action, resource);'),
        "guard": compile_policies(
            "guard",
            '@id("no-shell")\n@reason("shell is off")\nforbid(principal, action, resource == Tool::"shell");',
        ),
    }
    eng = PolicyEngine(sets, 3)
    decision = ask(eng, agent(), "tool.invoke", EntityRef(type="Tool", id="shell"))
    assert decision == Deny(reason="shell is off", policies=("no-shell",), policy_version=3, code="forbidden")


def test_batch_equals_single_decisions() -> None:
    eng = engine("baseline", "data_flow", "resource_usage", "access_control", "audit")
    phi = EntityRef(type="Data", id="d", attrs={"classification": "phi"})
    requests = [
        DecisionRequest(principal=agent(), action="data.read", resource=phi),
        DecisionRequest(principal=agent(clearances=["phi"]), action="data.read", resource=phi),  # same uid, new attrs
        DecisionRequest(principal=agent("a2"), action="tool.invoke", resource=EntityRef(type="Tool", id="shell")),
        DecisionRequest(
            principal=agent(security_tier="tier1"),
            action="task.allocate",
            resource=EntityRef(type="Host", id="h"),
            context={"resources": {"memory_mb": 64}},
        ),
        DecisionRequest(principal=agent(), action="nope.unknown", resource=phi),
    ] * 20
    assert eng.decide_batch(requests) == [eng.decide(r) for r in requests]


@pytest.mark.parametrize(
    ("principal", "resource"),
    [
        (agent(x=None), EntityRef(type="Host", id="h")),
        (agent(x=object()), EntityRef(type="Host", id="h")),
        (agent(n=2**70), EntityRef(type="Host", id="h")),
        (agent(), EntityRef(type="not a type", id="h")),
        (EntityRef(type="Agent", id="a", parents=("a1",)), EntityRef(type="Host", id="h")),
    ],
)
def test_a_request_that_is_not_cedar_is_denied_not_crashed(principal: EntityRef, resource: EntityRef) -> None:
    eng = engine("baseline")
    decision = eng.decide(DecisionRequest(principal=principal, action="task.allocate", resource=resource))
    assert isinstance(decision, Deny)
    assert "cannot be evaluated" in decision.reason


def test_a_forbid_that_errors_denies() -> None:
    # Valid against the schema, but the arithmetic overflows at run time: the guard cannot be evaluated.
    sets = {
        "open": compile_policies("open", '@id("all")\npermit(principal, action, resource);'),
        "guard": compile_policies(
            "guard",
            '@id("size-guard")\nforbid(principal, action == Action::"message.send", resource)\n'
            "when { context has size_bytes && context.size_bytes * 4611686018427387904 > 1000 };",
        ),
    }
    eng = PolicyEngine(sets, 1)
    decision = ask(eng, agent(), "message.send", agent("a2"), size_bytes=4)
    assert isinstance(decision, Deny)
    assert decision.policies == ("size-guard",)
    assert "could not be evaluated" in decision.reason
    assert decision.code == "forbid_error"
    assert isinstance(ask(eng, agent(), "message.send", agent("a2"), size_bytes=0), Allow)
