"""``task.allocate`` behind the real embedded decision point: Cedar policy sets as signed policy events.

A quarantine policy forbids one agent's allocations; retiring it (a real policy change, followed by the
scheduler's embedded point) and resuming the agent lets the queued task run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schedkit import App, FakeHost, agent_events, eventually, register_agent, running_app, scheduler_env, until_status
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered, PolicySetRetired
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import load_settings
from symbi_scheduler.main import build_app

BASELINE = Path(__file__).resolve().parents[3] / "examples" / "policies" / "baseline.cedar"
QUARANTINE = """
@id("quarantine-shady")
@reason("host pool closed to this agent")
forbid (principal == Agent::"shady", action == Action::"task.allocate", resource);
"""


async def test_a_real_policy_change_clears_a_denied_allocation(
    lifecycle: App, hosts: Any, make_store: Any, nats_url: str, keys_dir: Path
) -> None:
    policy = await make_store("policy")
    for set_id, cedar in (("baseline", BASELINE.read_text()), ("quarantine", QUARANTINE)):
        compile_policies(set_id, cedar)  # the policy service would refuse an invalid set; so does this test
    await policy.append(
        AGGREGATE_TYPE,
        "baseline",
        [PolicySetRegistered(set_id="baseline", cedar=BASELINE.read_text())],
        POLICY_SET_CODEC,
        expected=NEW_AGGREGATE,
    )
    quarantine = await policy.append(
        AGGREGATE_TYPE,
        "quarantine",
        [PolicySetRegistered(set_id="quarantine", cedar=QUARANTINE)],
        POLICY_SET_CODEC,
        expected=NEW_AGGREGATE,
    )
    await register_agent(lifecycle, "shady")
    host: FakeHost = await hosts("h1")
    store = await make_store("scheduler")
    env = scheduler_env(nats_url, keys_dir)
    env.update({"SYMBI_POLICY__ENFORCEMENT": "embedded", "SYMBI_POLICY__DECISION_LOG": "false"})
    async with running_app(build_app(load_settings(env=env)), "scheduler") as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "shady", "input": "x"}, status=201)
        task_id = view["task_id"]
        denied = await until_status(scheduler, task_id, "denied")
        assert denied["decision"]["effect"] == "deny"
        assert denied["decision"]["policies"] == ["quarantine-shady"]
        assert denied["decision"]["reason"] == "host pool closed to this agent"

        async def suspended() -> bool:
            return (await agent_events(store, "shady"))[-1] == "agent.suspended"

        await eventually(suspended)
        assert host.started == []

        await policy.append(
            AGGREGATE_TYPE,
            "quarantine",
            [PolicySetRetired(reason="cleared by the operator", revision=2)],
            POLICY_SET_CODEC,
            expected=quarantine[-1].tip,
        )
        await lifecycle.json("POST", "/v1/agents/shady/resume", {"reason": "quarantine lifted"})
        done = await until_status(scheduler, task_id, "completed")
        assert done["outcome"] == "succeeded"
        assert done["decision"]["effect"] == "allow"
        assert done["decision"]["policies"] == ["baseline-agents-run-tasks"]
        assert done["decision"]["policy_version"] > denied["decision"]["policy_version"]
    assert host.started == [(task_id, 1)]
