"""An agent in a real container (runc and gVisor) lists and calls MCP tools over its socket, through the
gateway: pin and verification, real Cedar policies limiting arguments and flagged tools, timeout, result cap,
and every call on the task's audit trail. The tool server runs in its own sandbox container (its image pinned
by digest, no network), started by the ToolService with ``docker run -i``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest
from symbi_common.commands import CommandClient
from symbi_common.settings import Settings
from symbi_contracts.sandbox_agent.events import ExecutionExited
from symbi_dsl import compile_agent

from .conftest import Agent, Scheduler, running_agent
from .test_actions import BASELINE, actions, context_service, register_policies
from .test_channel import agent_image
from .tools_support import DOMAIN, bundle, keypair, toolbox_image

__all__ = ["agent_image", "context_service"]  # fixtures, used by name

KEY, PUBLIC = keypair()

TOOL_POLICIES = """
@id("no-system-paths")
forbid(principal, action == Action::"tool.invoke", resource == Tool::"box.echo")
when { context has arguments_json && context.arguments_json like "*/etc/*" };
"""

#: The agent's own rules in the DSL: they compile to the same Cedar on the same context.
TOOL_USER = """
agent tool_user(x: String) -> String {
  version = "1.0.0"
  description = "Calls MCP tools"
  capabilities = [tool.invoke]
  workload = { image: "symbi/busybox:1", command: ["true"], actions: true }
  policy tool_limits {
    deny: tool.invoke("box.echo") if "text=forbidden" in context.argument_values
    deny: tool.invoke if "instruction_like" in context.flags
  }
  with sandbox = tier1, timeout = 60s, memory = 64MB, cpu = 0.5 {}
}
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
    out["dsl"] = code(lambda: a.tools.call("box.echo", {"text": "forbidden"}))
    out["pending"] = code(lambda: a.tools.call("box.big", {"n": 1}))
    out["unknown"] = code(lambda: a.tools.call("box.nope", {}))
    out["slow"] = code(lambda: a.tools.call("box.sleep", {"seconds": 60}))
    out["oversized"] = code(lambda: a.tools.call("box.echo", {"text": "x" * 20000}))
    out["after"] = a.tools.call("box.add", {"a": 1, "b": 1})["structuredContent"]
print(json.dumps(out))
"""


@pytest.fixture
def tool_settings(agent_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    """The daemon with real Cedar policies and a trust bundle for the toolbox's domain."""
    trust = tmp_path / "trust-bundle.json"
    trust.write_text(json.dumps(bundle(PUBLIC).to_dict()))
    return agent_settings(
        SYMBI_POLICY__ENFORCEMENT="embedded",
        SYMBI_POLICY__DECISION_LOG="false",
        SYMBI_SANDBOX__TOOLS_TRUST_BUNDLE=str(trust),
        SYMBI_SANDBOX__TOOLS_TIMEOUT_S="3",
        SYMBI_SANDBOX__TOOLS_MAX_RESULT_BYTES="10000",
    )


async def add_toolbox(agent: Agent, image: str) -> dict[str, Any]:
    """Register the toolbox through the operator API and approve four of its tools."""
    body = {
        "server": "box",
        "image": image,
        "command": ["python3", "/opt/toolbox.py"],
        "domain": DOMAIN,
        "env": {"TOOLBOX_SIGNING_KEY": KEY, "TOOLBOX_POISON": "1"},
    }
    added = await agent.http.post("/v1/tools/servers", json=body)
    assert added.status_code == 200, added.text
    for tool in ("add", "echo", "sleep", "poisoned"):
        approved = await agent.http.post(f"/v1/tools/box.{tool}/approve", json={})
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "approved"
    return dict(added.json())


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_an_agent_calls_tools_through_the_gateway(
    tier: str,
    agent_image: str,
    make_store: Any,
    scheduler: Scheduler,
    tool_settings: Settings,
    context_service: CommandClient,
) -> None:
    image = toolbox_image(agent_image)
    [own] = compile_agent(TOOL_USER, agent_id="agent-1")["policies"]
    sets = {"baseline": BASELINE.read_text(), "tools": TOOL_POLICIES, "agent-agent-1": own["cedar"]}
    await register_policies(make_store, sets)
    async with running_agent(tool_settings) as agent:
        added = await add_toolbox(agent, image)
        assert {t["verification"] for t in added["tools"]} == {"verified"}
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
    assert (out["forbidden"], out["spoofed"], out["flagged"], out["dsl"]) == ("denied",) * 4
    assert (out["pending"], out["unknown"]) == ("tool_not_approved", "unknown_tool")
    assert (out["slow"], out["oversized"]) == ("tool_timeout", "tool_result_too_large")
    recorded = [a for a in actions(r.events) if a.action == "tool.invoke"]
    assert [(a.resource, a.outcome) for a in recorded] == [
        ("box.add", "allowed"),
        ("box.echo", "allowed"),
        ("box.echo", "refused"),
        ("box.echo", "refused"),
        ("box.poisoned", "refused"),
        ("box.echo", "refused"),
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
    assert recorded[4].decision is not None
    assert recorded[5].decision is not None
    assert "agent-1.tool_limits.2" in recorded[4].decision.policies
    assert "agent-1.tool_limits.1" in recorded[5].decision.policies


async def test_operator_api_and_the_server_sandbox(
    agent_image: str, make_store: Any, tool_settings: Settings, docker_client: docker.DockerClient
) -> None:
    image = toolbox_image(agent_image)
    await register_policies(make_store, {"baseline": BASELINE.read_text()})
    async with running_agent(tool_settings) as agent:
        await add_toolbox(agent, image)
        running = docker_client.api.containers(filters={"label": "symbi.tool_server=box"})
        assert len(running) == 1
        host_config = docker_client.api.inspect_container(running[0]["Id"])["HostConfig"]
        assert (host_config["NetworkMode"], host_config["ReadonlyRootfs"], host_config["CapDrop"]) == (
            "none",
            True,
            ["ALL"],
        )
        assert running[0]["ImageID"] == image
        listed = {t["name"]: t for t in (await agent.http.get("/v1/tools")).json()["tools"]}
        assert listed["box.add"]["status"] == "approved"
        assert listed["box.big"]["status"] == "pending"
        assert "instruction_like" in listed["box.poisoned"]["flags"]
        shown = (await agent.http.get("/v1/tools/box.big")).json()
        assert shown["definition"]["name"] == "big"
        assert shown["verification"] == "verified"
        wrong = await agent.http.post("/v1/tools/box.big/approve", json={"pin": "sha256:" + "0" * 64})
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (422, "tool_refused")
        revoked = await agent.http.post("/v1/tools/box.add/revoke", json={"reason": "test"})
        assert revoked.json()["status"] == "revoked"
        missing = await agent.http.get("/v1/tools/box.nope")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "unknown_tool")
        wildcard = await agent.http.get("/v1/tools/*.add")  # (no subject wildcard reaches the event store)
        assert (wildcard.status_code, wildcard.json()["error"]["code"]) == (400, "bad_request")
        unpinned = await agent.http.post(
            "/v1/tools/servers", json={"server": "x", "image": "python:3", "command": ["a"]}
        )
        assert (unpinned.status_code, unpinned.json()["error"]["code"]) == (422, "tool_refused")
    # The daemon's shutdown stopped the server's container (docker run --rm).
    for _ in range(50):
        if not docker_client.api.containers(all=True, filters={"label": "symbi.tool_server=box"}):
            break
        await asyncio.sleep(0.2)
    assert not docker_client.api.containers(all=True, filters={"label": "symbi.tool_server=box"})
