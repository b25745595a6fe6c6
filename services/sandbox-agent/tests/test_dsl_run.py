"""Agents written only in the DSL, run by ``symbi_agent.dsl_run`` in real containers (runc and gVisor).

Each definition is compiled as registration compiles it (``compile_agent``: an agent with a body and no
workload gets the body runner's workload, the definition in its environment) and the task is assigned with
that workload. The body's builtins are SDK actions over the sandbox's socket, so each one is decided by real
Cedar policies and recorded as ``execution.action`` on the task's audit trail: a memory store and recall
(against the real context service), MCP tool calls (a real tool server in its own container), a request to
another agent over the bus. A runtime error and an exhausted budget end the task with the body's
``file:line:column`` as the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from symbi_common.commands import CommandClient
from symbi_common.settings import Settings
from symbi_contracts.lifecycle.config import Workload
from symbi_contracts.sandbox_agent.events import ExecutionExited
from symbi_dsl import compile_agent

from .conftest import Scheduler, limits, running_agent
from .test_actions import BASELINE, actions, context_service, register_policies
from .test_bus import embedded, policies
from .test_channel import agent_image
from .test_tools_gateway import TOOL_POLICIES, add_toolbox, tool_settings
from .tools_support import toolbox_image

__all__ = ["agent_image", "context_service", "tool_settings"]  # fixtures, used by name


def workload(source: str, file: str, image: str, agent_id: str) -> Workload:
    """The workload registration gives the file's agent (and checks it is the body runner's)."""
    config = compile_agent(source, agent_id=agent_id, file=file, runner_image=image)
    w = config["workload"]
    assert (w["command"], w["actions"]) == (["python3", "-m", "symbi_agent.dsl_run"], True)
    return Workload(image=w["image"], command=tuple(w["command"]), env=w["env"], actions=True)


def output(r: Any) -> Any:
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-2000:])
    assert r.terminal.exit_code == 0, (r.terminal.reason, r.stderr[-2000:])
    return json.loads(r.stdout)


MEMO = """
agent memo(note: String) {
  capabilities = [memory]
  with timeout = 60s {
    let stored = memory.store(note, collection: "notes", tags: ["dsl"])
    let found = recall("launch", collection: "notes")
    let secret = "stored"
    try {
      remember("the codes", context: {classification: "secret"})
    } catch (Denied e) {
      secret = e.type
    }
    return {
      recalled: found.map(m => m.id).contains(stored.memory_id),
      texts: found.map(m => m.text),
      secret: secret
    }
  }
}
"""

NO_SECRETS = """
@id("no-secret-memories")
forbid(principal, action == Action::"memory.write", resource)
when { context has classification && context.classification == "secret" };
"""


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_a_dsl_agent_remembers_and_recalls(
    tier: str,
    agent_image: str,
    make_store: Any,
    scheduler: Scheduler,
    agent_settings: Callable[..., Settings],
    context_service: CommandClient,
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "no-secrets": NO_SECRETS})
    w = workload(MEMO, "memo.symbi", agent_image, "agent-1")
    async with running_agent(embedded(agent_settings)) as agent:
        task_id = await scheduler.submit(
            agent.host_id,
            [],
            tier=tier,
            input=b'"the launch is Friday"',
            workload=w,
            lim=limits(execution_timeout_s=60),
        )
        r = await scheduler.result(task_id, timeout=90)
    out = output(r)
    assert out == {"recalled": True, "texts": ["the launch is Friday"], "secret": "Denied"}
    # Each builtin call was an action of the agent, decided and recorded on the task's audit trail.
    recorded = [(a.action, a.resource, a.outcome, a.agent_id) for a in actions(r.events)]
    assert recorded == [
        ("memory.write", "notes", "allowed", "agent-1"),
        ("memory.read", "notes", "allowed", "agent-1"),
        ("memory.write", "default", "refused", "agent-1"),
    ]
    assert actions(r.events)[2].decision is not None
    assert actions(r.events)[2].decision.policies == ("no-secret-memories",)


ADDER = """
agent adder(pair: Json) {
  capabilities = [tool.invoke]
  with timeout = 60s {
    let names = tools.list().tools.map(t => t.name)
    let sum = tools.call("box.add", {a: pair.a, b: pair.b})
    let refused = "no"
    try {
      tools.call("box.echo", {text: "/etc/passwd"})
    } catch (Denied e) {
      refused = e.type
    }
    return {has_add: names.contains("box.add"), sum: sum.structuredContent.result, refused: refused}
  }
}
"""


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_a_dsl_agent_calls_a_tool(
    tier: str,
    agent_image: str,
    make_store: Any,
    scheduler: Scheduler,
    tool_settings: Settings,
    context_service: CommandClient,
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "tools": TOOL_POLICIES})
    w = workload(ADDER, "adder.symbi", agent_image, "agent-1")
    async with running_agent(tool_settings) as agent:
        await add_toolbox(agent, toolbox_image(agent_image))
        task_id = await scheduler.submit(
            agent.host_id, [], tier=tier, input=b'{"a": 2, "b": 3}', workload=w, lim=limits(execution_timeout_s=60)
        )
        r = await scheduler.result(task_id, timeout=90)
    assert output(r) == {"has_add": True, "sum": 5, "refused": "Denied"}
    recorded = [(a.action, a.resource, a.outcome) for a in actions(r.events)]
    # Listing is not an action (nothing happens); each call is one, decided by the tool policies.
    assert recorded == [
        ("tool.invoke", "box.add", "allowed"),
        ("tool.invoke", "box.echo", "refused"),
    ]


ASKER = """
agent asker {
  with timeout = 90s {
    let answer = messages.request("bob", {q: 21}, timeout_s: 60)
    send("bob", {thanks: true})
    return {sender: answer["from"], answer: answer.body.answer}
  }
}
"""

BOB = """
import json, time
from symbi_agent import Agent
got = []
with Agent() as a:
    deadline = time.time() + 80
    while len(got) < 2 and time.time() < deadline:
        for m in a.messages.receive(timeout_s=2)["messages"]:
            if m["kind"] == "request":
                a.messages.reply(m, {"answer": m["body"]["q"] * 2})
            got.append([m["kind"], m["from"], m["body"]])
print(json.dumps(got))
"""


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_a_dsl_agent_messages_another_agent(
    tier: str, agent_image: str, make_store: Any, scheduler: Scheduler, agent_settings: Any
) -> None:
    await policies(make_store)
    w = workload(ASKER, "asker.symbi", agent_image, "alice")
    lim = limits(execution_timeout_s=90)
    async with running_agent(embedded(agent_settings)) as agent:
        bob = await scheduler.submit(
            agent.host_id, ["python3", "-c", BOB], tier=tier, actions=True, image=agent_image, agent_id="bob", lim=lim
        )
        alice = await scheduler.submit(agent.host_id, [], tier=tier, agent_id="alice", workload=w, lim=lim)
        ra, rb = await scheduler.result(alice, timeout=120), await scheduler.result(bob, timeout=120)
    assert output(ra) == {"sender": "bob", "answer": 42}
    assert output(rb) == [["request", "alice", {"q": 21}], ["direct", "alice", {"thanks": True}]]
    sent = [(a.action, a.resource, a.outcome, a.agent_id) for a in actions(ra.events)]
    assert sent == [("message.send", "bob", "allowed", "alice"), ("message.send", "bob", "allowed", "alice")]


FAULTY = """agent faulty(n: int) {
  with timeout = 30s {
    let label = "count: "
    let total = n * 2
    return total + label
  }
}
"""

SPINNER = """agent spinner {
  with timeout = 30s, steps = 200 {
    let n = 0
    try {
      for x in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] {
        for y in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] {
          n += 1
        }
      }
    } catch (e) {
      return "the budget was caught"
    }
    return n
  }
}
"""


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_a_runtime_error_and_an_exhausted_budget_are_the_tasks_failure_reason(
    tier: str, agent_image: str, make_store: Any, scheduler: Scheduler, agent_settings: Callable[..., Settings]
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text()})
    async with running_agent(embedded(agent_settings)) as agent:
        lim = limits(execution_timeout_s=30)
        faulty = await scheduler.submit(
            agent.host_id,
            [],
            tier=tier,
            input=b"4",
            workload=workload(FAULTY, "faulty.symbi", agent_image, "agent-1"),
            lim=lim,
        )
        spinner = await scheduler.submit(
            agent.host_id, [], tier=tier, workload=workload(SPINNER, "spinner.symbi", agent_image, "agent-1"), lim=lim
        )
        rf, rs = await scheduler.result(faulty, timeout=60), await scheduler.result(spinner, timeout=60)
    for r in (rf, rs):
        assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-2000:])
        assert (r.terminal.exit_code, r.stdout) == (1, b"")
    assert rf.terminal.reason == "exited with status 1: faulty.symbi:5:12: cannot apply + to a number and a string"
    # The budget is not the body's to catch: the loop stops at step 201, inside the inner loop's body.
    assert rs.terminal.reason == "exited with status 1: spinner.symbi:7:11: the body ran more than 200 steps"
