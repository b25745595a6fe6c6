"""Registration with DSL definitions, the Initializing controller, and the agent.register enforcement point.

Everything runs against the real service (NATS JetStream, PostgreSQL); policy decisions come from the
real Cedar engine of ``symbi_common.policy`` with policies written for the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from symbi_common.decisions import Decision, DecisionRequest
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.engine import PolicyEngine
from symbi_common.settings import Settings
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_dsl import config_name
from symbi_lifecycle.domain import Register
from symbi_lifecycle.main import build_app

from .conftest import Running

EXAMPLES = sorted((Path(__file__).parents[3] / "examples" / "agents").glob("*.symbi"))
TEXTS = {p.stem: p.read_text() for p in EXAMPLES}


class CedarPoint:
    """A decision point over the real Cedar engine with a fixed policy set (version 7)."""

    def __init__(self, text: str) -> None:
        self.engine = PolicyEngine({"test": compile_policies("test", text)}, 7)

    @property
    def version(self) -> int:
        return 7

    async def decide(self, request: DecisionRequest) -> Decision:
        return self.engine.decide(request)

    async def decide_batch(self, requests: list[DecisionRequest]) -> list[Decision]:
        return self.engine.decide_batch(requests)


async def history(http: httpx.AsyncClient, agent_id: str, sequence: int) -> list[dict[str, Any]]:
    r = await http.get(f"/v1/agents/{agent_id}/events", params={"min_sequence": sequence})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
async def test_every_example_registers_ready(running: Running, path: Path) -> None:
    text = TEXTS[path.stem]
    agent_id = path.stem
    r = await running.http.post("/v1/agents", json={"agent_id": agent_id, "definition": text, "file": str(path)})
    assert r.status_code == 201, r.text
    agent = r.json()
    assert agent["state"] == "Ready", agent["errors"]
    config = agent["config"]
    assert config["name"] == config_name(config["name"])
    assert config["workload"]["image"].startswith("symbi/")
    for policy in config["policies"]:
        assert f'@id("{agent_id}.{policy["name"]}.1")' in policy["cedar"]
        assert f'principal == Agent::"{agent_id}"' in policy["cedar"]
    events = await history(running.http, agent_id, agent["sequence"])
    assert [e["type"] for e in events] == ["agent.registered", "agent.ready"]
    assert events[0]["data"]["definition"] == text
    ready = events[1]["data"]
    assert ready["config"] == config  # the scheduler and the policy service read the compiled config here
    assert ready["decision"]["action"] == "agent.register"
    assert ready["decision"]["policies"] == ["enforcement-disabled"]


async def test_schedules_and_policies_reach_the_config(running: Running) -> None:
    r = await running.http.post("/v1/agents", json={"agent_id": "rep", "definition": TEXTS["scheduled-reporter"]})
    config = r.json()["config"]
    assert [(s["name"], s["cron"], s["timezone"], s["priority"]) for s in config["schedules"]] == [
        ("monday_report", "0 8 * * 1", "America/New_York", "normal"),
        ("quarter_close", "0 18 31 3,6,9,12 *", "America/New_York", "high"),
    ]
    assert config["schedules"][0]["input"] == '{"week":"last"}'
    assert config["resources"] == {
        "memory_mb": 512,
        "cpu_cores": 1.0,
        "disk_io_mbps": 100,
        "network_io_mbps": 10,
        "execution_timeout_s": 600.0,
    }
    assert [p["name"] for p in config["policies"]] == ["reporting"]
    assert "forbid" in config["policies"][0]["cedar"]


async def test_a_bad_definition_fails_with_every_diagnostic(running: Running) -> None:
    text = """agent broken_agent(x: Strng) {
  capabilities = ["web.fetch"]
  polcies = [missing]
  with sandbox = tier3, timeout = 90000h, memory = 1MB {
    return x
  }
}

schedule every_minute {
  cron: "61 * * * *"
  agent: nobody
}
"""
    r = await running.http.post("/v1/agents", json={"agent_id": "broken", "definition": text, "file": "broken.symbi"})
    assert r.status_code == 201, r.text
    agent = r.json()
    assert agent["state"] == "Failed"
    assert agent["name"] == "broken-agent"  # provisional until compiled
    found = {(e["field"], e["line"], e["column"]) for e in agent["errors"]}
    assert found == {
        ("undefined", 1, 23),  # Strng
        ("unknown_key", 3, 3),  # polcies
        ("unsupported", 4, 18),  # tier3: a Symbiont sandbox Symbi does not have
        ("range", 4, 35),  # 90000h
        ("range", 4, 52),  # 1MB
        ("cron", 10, 9),
        ("undefined", 11, 10),  # nobody
    }
    by_line = {e["line"]: e for e in agent["errors"]}
    assert by_line[3]["hint"] == "did you mean 'policies'?"
    assert by_line[3]["file"] == "broken.symbi"
    assert by_line[3]["excerpt"].splitlines()[1].endswith("^^^^^^^")
    events = await history(running.http, "broken", agent["sequence"])
    assert [e["type"] for e in events] == ["agent.registered", "agent.failed"]


async def test_a_syntax_error_fails_the_agent_too(running: Running) -> None:
    r = await running.http.post("/v1/agents", json={"agent_id": "syn", "definition": "agent a() { x = [1, }"})
    agent = r.json()
    assert agent["state"] == "Failed"
    assert agent["errors"][0]["field"] == "syntax"
    assert agent["errors"][0]["line"] == 1


async def test_config_and_definition_are_exclusive(running: Running) -> None:
    r = await running.http.post("/v1/agents", json={"definition": "agent a() {}", "config": {"name": "a"}})
    assert r.status_code == 400
    r = await running.http.post("/v1/agents", json={})
    assert r.status_code == 400


DENY_TIER1_NETWORK = """
@id("ops.no-network-in-tier1")
@reason("tier1 agents may not have network access")
forbid (principal, action == Action::"agent.register", resource)
when { context has security_tier && context.security_tier == "tier1" };

@id("ops.register")
permit (principal, action == Action::"agent.register", resource);
"""


async def test_a_denied_registration_is_recorded_and_refused_with_the_reason(running: Running) -> None:
    assert running.service.controller is not None
    point = CedarPoint(DENY_TIER1_NETWORK)

    async def decisions() -> CedarPoint:
        return point

    running.service.controller.decisions = decisions
    hello = TEXTS["hello"]
    r = await running.http.post(
        "/v1/agents", json={"agent_id": "denied", "definition": hello}, headers={"X-Symbi-User": "mallory"}
    )
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "policy_denied"
    assert "tier1 agents may not have network access" in error["message"]
    assert error["details"]["policies"] == ["ops.no-network-in-tier1"]

    view = (await running.http.get("/v1/agents/denied")).json()
    for _ in range(50):
        if view.get("state") == "Failed":
            break
        await asyncio.sleep(0.1)
        view = (await running.http.get("/v1/agents/denied")).json()
    assert view["state"] == "Failed"
    events = await history(running.http, "denied", view["sequence"])
    assert [e["type"] for e in events] == ["agent.registered", "agent.denied"]
    assert events[0]["data"]["registered_by"] == "mallory"
    decision = events[1]["data"]["decision"]
    assert decision.pop("decision_id")  # the id the decision log has it under
    assert decision == {
        "action": "agent.register",
        "effect": "deny",
        "policy_version": 7,
        "policies": ["ops.no-network-in-tier1"],
        "reason": "tier1 agents may not have network access",
        "conditions": [],
        "reason_code": "forbidden",
        "point": "lifecycle.agent_config",
    }

    # The same policy set allows a tier2 agent, and records which policy allowed it.
    pipeline = TEXTS["data-pipeline"]
    r = await running.http.post("/v1/agents", json={"agent_id": "allowed", "definition": pipeline})
    assert r.status_code == 201, r.text
    events = await history(running.http, "allowed", r.json()["sequence"])
    assert events[1]["data"]["decision"]["policies"] == ["ops.register"]
    assert events[1]["data"]["decision"]["policy_version"] == 7


async def test_cap_resources_conditions_lower_the_limits(running: Running) -> None:
    assert running.service.controller is not None
    point = CedarPoint(
        '@id("ops.cap")\n@cap_resources("memory_mb=1024,cpu_cores=1")\n'
        'permit (principal, action == Action::"agent.register", resource);'
    )

    async def decisions() -> CedarPoint:
        return point

    running.service.controller.decisions = decisions
    pipeline = TEXTS["data-pipeline"]
    r = await running.http.post("/v1/agents", json={"agent_id": "capped", "definition": pipeline})
    agent = r.json()
    assert agent["state"] == "Ready"
    assert agent["config"]["resources"]["memory_mb"] == 1024  # asked for 4GB
    assert agent["config"]["resources"]["cpu_cores"] == 1.0  # asked for 2
    events = await history(running.http, "capped", agent["sequence"])
    assert events[1]["data"]["decision"]["effect"] == "allow_with_conditions"


async def test_a_condition_registration_cannot_enforce_denies_it(running: Running) -> None:
    assert running.service.controller is not None
    point = CedarPoint(
        '@id("ops.redacted")\n@redact("ssn")\npermit (principal, action == Action::"agent.register", resource);'
    )

    async def decisions() -> CedarPoint:
        return point

    running.service.controller.decisions = decisions
    r = await running.http.post("/v1/agents", json={"agent_id": "unkept", "definition": TEXTS["hello"]})
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["details"]["reason_code"] == "unenforceable_condition"
    assert "lifecycle.agent_config cannot enforce redact (policy ops.redacted)" in error["message"]


async def test_agents_left_initializing_by_a_crash_are_resumed_on_start(
    settings: Settings, operator_headers: dict[str, str]
) -> None:
    hello = TEXTS["hello"]
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        service = app.state.lifecycle
        # The process "dies" after agent.registered: append it without initializing.
        provisional = AgentConfig(name="hello-agent")
        await service.repository.execute("orphan", Register(config=provisional, definition=hello))
        loaded = await service.repository.load("orphan", fresh=True)
        assert loaded.state.status.value == "Initializing"

    restarted = build_app(settings)
    async with restarted.router.lifespan_context(restarted):
        transport = httpx.ASGITransport(app=restarted)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://lifecycle", headers=operator_headers
        ) as http:
            state = None
            for _ in range(100):
                r = await http.get("/v1/agents/orphan")
                state = r.json().get("state") if r.status_code == 200 else None
                if state == "Ready":
                    break
                await asyncio.sleep(0.1)
            assert state == "Ready"
            events = await history(http, "orphan", 0)
            assert [e["type"] for e in events] == ["agent.registered", "agent.ready"]
            assert events[1]["data"]["config"]["workload"]["image"] == "symbi/busybox:1"


async def test_configure_replaces_a_ready_agents_config_through_the_decision(running: Running) -> None:
    http = running.http
    r = await http.post("/v1/agents", json={"agent_id": "conf", "definition": TEXTS["hello"]})
    assert r.json()["state"] == "Ready"
    changed = TEXTS["hello"].replace("timeout = 30s", "timeout = 45s")
    r = await http.post("/v1/agents/conf/configure", json={"definition": changed, "file": "hello.symbi"})
    assert r.status_code == 200, r.text
    agent = r.json()
    assert agent["state"] == "Ready"
    assert agent["config"]["resources"]["execution_timeout_s"] == 45.0
    events = await history(http, "conf", agent["sequence"])
    assert [e["type"] for e in events] == ["agent.registered", "agent.ready", "agent.configured"]
    assert events[2]["data"]["decision"]["action"] == "agent.configure"

    # An invalid change is refused with every problem, and nothing is recorded.
    broken = changed.replace("timeout = 45s", "timeout = 45").replace("sandbox = tier1", "sandbox = tier5")
    r = await http.post("/v1/agents/conf/configure", json={"definition": broken})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_config"
    # tier5: unknown; 45: read as 45ms (a warning, Symbiont's reading), which is out of range
    issues = [(i["field"], i["line"]) for i in error["details"]["issues"]]
    assert issues == [("value", 8), ("type", 8), ("range", 8)]

    # A denied change is recorded as its own event and changes nothing.
    assert running.service.controller is not None
    point = CedarPoint(
        '@id("ops.freeze")\n@reason("configuration freeze")\n'
        'forbid (principal, action == Action::"agent.configure", resource);\n'
        '@id("ops.all")\npermit (principal, action, resource);'
    )

    async def decisions() -> CedarPoint:
        return point

    running.service.controller.decisions = decisions
    r = await http.post("/v1/agents/conf/configure", json={"definition": TEXTS["hello"]})
    assert r.status_code == 403
    assert "configuration freeze" in r.json()["error"]["message"]
    view = (await http.get("/v1/agents/conf")).json()
    for _ in range(50):
        events = await history(http, "conf", 0)
        if len(events) == 4:
            break
        await asyncio.sleep(0.1)
    assert events[3]["type"] == "agent.configure_denied"
    assert events[3]["data"]["decision"]["policies"] == ["ops.freeze"]
    view = (await http.get("/v1/agents/conf", params={"min_sequence": events[3]["sequence"]})).json()
    assert view["config"]["resources"]["execution_timeout_s"] == 45.0

    # Only Ready agents take a new configuration.
    await http.post("/v1/agents/conf/assign-task", json={"task_id": "t1"})
    r = await http.post("/v1/agents/conf/configure", json={"definition": TEXTS["hello"]})
    assert r.status_code == 409


DSL_ONLY = """agent memo(note: String) {
  capabilities = [memory]
  with timeout = 30s, steps = 2_000 {
    let stored = memory.store(note, collection: "notes")
    return recall(note)
  }
}
"""


async def test_an_agent_written_only_in_the_dsl_registers_with_the_body_runner(running: Running) -> None:
    r = await running.http.post("/v1/agents", json={"agent_id": "memo", "definition": DSL_ONLY, "file": "memo.symbi"})
    agent = r.json()
    assert agent["state"] == "Ready", agent["errors"]
    workload = agent["config"]["workload"]
    assert (workload["command"], workload["actions"]) == (["python3", "-m", "symbi_agent.dsl_run"], True)
    env = workload["env"]
    assert (env["SYMBI_DSL_FILE"], env["SYMBI_DSL_AGENT"], env["SYMBI_DSL_STEPS"]) == ("memo.symbi", "memo", "2000")
    # The body that runs is the one registered: its text is in the recorded, signed configuration.
    assert env["SYMBI_DSL_SOURCE_000"] == DSL_ONLY
    events = await history(running.http, "memo", agent["sequence"])
    assert events[1]["data"]["config"]["workload"]["env"]["SYMBI_DSL_SOURCE_000"] == DSL_ONLY
    # A body calling what Symbi does not provide is refused at registration, with its position.
    unknown = DSL_ONLY.replace("return recall(note)", "return summarise(note)")
    r = await running.http.post("/v1/agents", json={"agent_id": "memo-2", "definition": unknown, "file": "m.symbi"})
    failed = r.json()
    assert failed["state"] == "Failed"
    assert [(e["field"], e["line"], e["column"]) for e in failed["errors"]] == [("unsupported", 5, 12)]
    assert "summarise()" in failed["errors"][0]["message"]
    # A body and a workload: only one could run, so neither is dropped silently; the agent is refused.
    both = DSL_ONLY.replace("  with", '  workload = {image: "symbi/busybox:1", command: ["true"]}\n  with')
    r = await running.http.post("/v1/agents", json={"agent_id": "memo-3", "definition": both, "file": "m.symbi"})
    failed = r.json()
    assert failed["state"] == "Failed"
    assert [(e["field"], e["line"], e["column"]) for e in failed["errors"]] == [("conflict", 3, 3)]
    assert "both a workload and a body (line 5)" in failed["errors"][0]["message"]


def test_a_compiler_fault_fails_the_agent_instead_of_leaving_it_initializing(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception the compiler should have turned into a diagnostic becomes the agent's one config issue."""
    from symbi_lifecycle import controller
    from symbi_lifecycle.domain import AgentState

    def broken(*_: Any, **__: Any) -> Any:
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(controller, "compile_agent", broken)
    state = AgentState(agent_id="a1", config=AgentConfig(name="a1"), definition="agent a1() { }")
    config, issues = controller.compile_state(state)
    assert config is None
    assert [(i.field, "OverflowError" in i.message) for i in issues] == [("definition", True)]


async def test_the_acting_user_is_the_authenticated_operator(
    running: Running, issue_operator_token: Callable[..., str]
) -> None:
    """Another user is named (``X-Symbi-User``) by an admin only: an operator naming one is refused, and one
    naming none acts as itself (before, the header was taken on its word, so any writer could register as any
    user, and without it the principal was ``anonymous``)."""
    hello = TEXTS["hello"]
    bob = {"Authorization": f"Bearer {issue_operator_token(role='operator', name='bob')}"}
    r = await running.http.post(
        "/v1/agents", json={"agent_id": "as-lead", "definition": hello}, headers={**bob, "X-Symbi-User": "ops-lead"}
    )
    assert r.status_code == 403, r.text
    assert r.json()["error"]["details"]["action"] == "act_as"
    r = await running.http.post("/v1/agents", json={"agent_id": "as-bob", "definition": hello}, headers=bob)
    assert r.status_code == 201, r.text
    registered = (await history(running.http, "as-bob", r.json()["sequence"]))[0]
    assert registered["data"]["registered_by"] == "bob"
