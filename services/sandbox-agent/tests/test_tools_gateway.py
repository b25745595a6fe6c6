"""An agent in a real container (runc and gVisor) lists and calls MCP tools over its socket, through the
gateway: pin and verification, real Cedar policies limiting arguments and flagged tools, timeout, result cap,
and every call on the task's audit trail. The tool server runs in its own sandbox container (its image pinned
by digest, no network), started by the ToolService with ``docker run -i``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from symbi_common.commands import CommandClient
from symbi_common.eventstore import EventStore
from symbi_common.settings import Settings
from symbi_contracts.sandbox_agent.events import ExecutionExited
from symbi_contracts.tools.events import ToolServerRegistered
from symbi_sandbox_agent.tools.limits import ToolLimits
from symbi_sandbox_agent.tools.servers import sandbox_command
from symbi_sandbox_agent.tools.service import StoredRegistry, ToolService

from .conftest import Scheduler, running_agent
from .test_actions import BASELINE, actions, context_service, register_policies
from .test_channel import agent_image
from .tools_support import DOMAIN, bundle, keypair, toolbox_image

__all__ = ["agent_image", "context_service"]  # fixtures, used by name

KEY, PUBLIC = keypair()

TOOL_POLICIES = """
@id("no-system-paths")
forbid(principal, action == Action::"tool.invoke", resource == Tool::"box.echo")
when { context has arguments_json && context.arguments_json like "*/etc/*" };

@id("no-flagged-tools")
forbid(principal, action == Action::"tool.invoke", resource)
when { context has flags && context.flags.contains("instruction_like") };
"""

TOOL_AGENT = """
import json
from symbi_agent import Agent, SymbiAgentError

def code(call):
    try:
        call()
        return "ok"
    except SymbiAgentError as err:
        return err.code

out = {}
with Agent() as a:
    out["channel"] = a.channel
    out["names"] = sorted(t["name"] for t in a.tools.list()["tools"])
    added = a.tools.call("box.add", {"a": 2, "b": 3})
    out["add"] = added["structuredContent"]
    out["digest"] = added["digest"]
    out["echo"] = a.tools.call("box.echo", {"text": "hello"})["structuredContent"]
    out["forbidden"] = code(lambda: a.tools.call("box.echo", {"text": "/etc/passwd"}))
    out["spoofed"] = code(lambda: a.tools.call("box.echo", {"text": "/etc/x"}, context={"arguments_json": "{}"}))
    out["flagged"] = code(lambda: a.tools.call("box.poisoned", {"path": "x"}))
    out["pending"] = code(lambda: a.tools.call("box.big", {"n": 1}))
    out["unknown"] = code(lambda: a.tools.call("box.nope", {}))
    out["slow"] = code(lambda: a.tools.call("box.sleep", {"seconds": 60}))
    out["oversized"] = code(lambda: a.tools.call("box.echo", {"text": "x" * 20000}))
    out["after"] = a.tools.call("box.add", {"a": 1, "b": 1})["structuredContent"]
print(json.dumps(out))
"""


@pytest.fixture
async def tool_host(make_store: Callable[..., Awaitable[EventStore]], agent_image: str) -> AsyncIterator[ToolService]:
    image = toolbox_image(agent_image)
    tools = ToolService(
        StoredRegistry(await make_store("sandbox-agent")),
        bundle(PUBLIC),
        limits=ToolLimits(timeout_s=3.0, max_result_bytes=10_000),
    )
    reg = ToolServerRegistered(
        server="box",
        transport="stdio",
        image=image,
        command=("python3", "/opt/toolbox.py"),
        domain=DOMAIN,
        env={"TOOLBOX_SIGNING_KEY": KEY, "TOOLBOX_POISON": "1"},
    )
    assert "--network" in sandbox_command(reg)
    state = await tools.register(reg)
    assert {t.verification for t in state.tools.values()} == {"verified"}
    for tool in ("add", "echo", "sleep", "poisoned"):
        await tools.approve(f"box.{tool}", by="op")
    yield tools
    await tools.close()


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_an_agent_calls_tools_through_the_gateway(
    tier: str,
    tool_host: ToolService,
    agent_image: str,
    make_store: Any,
    scheduler: Scheduler,
    agent_settings: Callable[..., Settings],
    context_service: CommandClient,
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "tools": TOOL_POLICIES})
    settings = agent_settings(SYMBI_POLICY__ENFORCEMENT="embedded", SYMBI_POLICY__DECISION_LOG="false")
    async with running_agent(settings) as agent:
        agent.daemon.service.tools = tool_host
        task_id = await scheduler.submit(
            agent.host_id, ["python3", "-c", TOOL_AGENT], tier=tier, actions=True, image=agent_image
        )
        r = await scheduler.result(task_id, timeout=90)
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-2000:])
    assert r.stdout, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["channel"] == "socket"
    assert out["names"] == ["box.add", "box.echo", "box.poisoned", "box.sleep"]
    assert (out["add"], out["echo"], out["after"]) == ({"result": 5}, {"result": "hello"}, {"result": 2})
    assert out["digest"].startswith("sha256:")
    assert (out["forbidden"], out["spoofed"], out["flagged"]) == ("denied", "denied", "denied")
    assert (out["pending"], out["unknown"]) == ("tool_not_approved", "unknown_tool")
    assert (out["slow"], out["oversized"]) == ("tool_timeout", "tool_result_too_large")
    recorded = [a for a in actions(r.events) if a.action == "tool.invoke"]
    assert [(a.resource, a.outcome) for a in recorded] == [
        ("box.add", "allowed"),
        ("box.echo", "allowed"),
        ("box.echo", "refused"),
        ("box.echo", "refused"),
        ("box.poisoned", "refused"),
        ("box.big", "failed"),
        ("box.nope", "failed"),
        ("box.sleep", "failed"),
        ("box.echo", "failed"),
        ("box.add", "allowed"),
    ]
    assert out["digest"] in recorded[0].detail
    assert recorded[0].context["argument_values"] == ["a=2", "b=3"]
    assert recorded[0].decision is not None
    assert recorded[2].decision is not None
    assert "no-system-paths" in recorded[2].decision.policies
