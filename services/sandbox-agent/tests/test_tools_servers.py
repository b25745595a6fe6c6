"""A tool server's life in the real daemon: removed (its sandbox container gone, its tools unknown, the name
free to be added again from scratch), its sandbox tier assessed from what it is given, and a tier2 server
run under gVisor that an agent lists and calls. The servers are the toolbox (tests/mcp_servers/toolbox.py, the
``mcp`` SDK's) in its own container; the registry is the real signed event store."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import msgspec
import pytest
from symbi_common.commands import CommandClient
from symbi_common.settings import Settings
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.sandbox_agent.events import ExecutionExited, ExecutionRefused
from symbi_contracts.tools.errors import ToolNotApproved, UnknownTool
from symbi_contracts.tools.events import CODEC, ToolServerRegistered, ToolServerRemoved, ToolServerTierRaised
from symbi_dsl import compile_agent

from .conftest import Scheduler, running_agent
from .test_actions import actions, context_service
from .test_channel import agent_image
from .tools_support import DOMAIN, bundle, keypair, toolbox_image

__all__ = ["agent_image", "context_service"]  # fixtures, used by name

KEY, PUBLIC = keypair()


@pytest.fixture
def tool_settings(agent_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    trust = tmp_path / "trust-bundle.json"
    trust.write_text(json.dumps(bundle(PUBLIC).to_dict()))
    return agent_settings(SYMBI_SANDBOX__TOOLS_TRUST_BUNDLE=str(trust), SYMBI_SANDBOX__TOOLS_TIMEOUT_S="10")


def server_body(server: str, image: str, **extra: Any) -> dict[str, Any]:
    return {
        "server": server,
        "image": image,
        "command": ["python3", "/opt/toolbox.py"],
        "domain": DOMAIN,
        "env": {"TOOLBOX_SIGNING_KEY": KEY},
        **extra,
    }


def containers(client: docker.DockerClient, server: str) -> list[dict[str, Any]]:
    return list(client.api.containers(all=True, filters={"label": f"symbi.tool_server={server}"}))


async def gone(client: docker.DockerClient, server: str) -> bool:
    for _ in range(50):
        if not containers(client, server):
            return True
        await asyncio.sleep(0.2)
    return False


async def test_a_removed_server_is_gone_and_added_again_from_scratch(
    agent_image: str, make_store: Any, tool_settings: Settings, docker_client: docker.DockerClient
) -> None:
    image = toolbox_image(agent_image)
    server = f"rm{uuid.uuid4().hex[:6]}"
    async with running_agent(tool_settings) as agent:
        added = await agent.http.post("/v1/tools/servers", json=server_body(server, image))
        assert added.status_code == 200, added.text
        approved = await agent.http.post(f"/v1/tools/{server}.add/approve", json={})
        assert approved.json()["status"] == "approved"
        tools = agent.daemon.service.tools
        assert tools is not None
        assert (await tools.callable_record(f"{server}.add")).status == "approved"
        [container] = containers(docker_client, server)
        assert container["State"] == "running"

        removed = await agent.http.delete(f"/v1/tools/servers/{server}", params={"reason": "retired"})
        assert removed.status_code == 200, removed.text
        assert f"{server}.add" in removed.json()["tools"]
        assert await gone(docker_client, server), containers(docker_client, server)
        with pytest.raises(UnknownTool):
            await tools.callable_record(f"{server}.add")
        listed = (await agent.http.get("/v1/tools")).json()["tools"]
        assert not [t for t in listed if t["name"].startswith(f"{server}.")]
        shown = await agent.http.get(f"/v1/tools/{server}.add")
        assert (shown.status_code, shown.json()["error"]["code"]) == (404, "unknown_tool")
        again = await agent.http.delete(f"/v1/tools/servers/{server}")
        assert (again.status_code, again.json()["error"]["code"]) == (404, "unknown_tool")

        readded = await agent.http.post("/v1/tools/servers", json=server_body(server, image))
        assert readded.status_code == 200, readded.text
        assert {t["name"]: t["status"] for t in readded.json()["tools"]}[f"{server}.add"] == "pending"
        assert len(containers(docker_client, server)) == 1
        with pytest.raises(ToolNotApproved, match="not approved it yet"):
            await tools.callable_record(f"{server}.add")
        await agent.http.delete(f"/v1/tools/servers/{server}")
        assert await gone(docker_client, server)
    store = await make_store("audit")
    history = [r.event for r in await store.load("toolserver", server, CODEC)]
    removals = [e for e in history if isinstance(e, ToolServerRemoved)]
    assert [e.reason for e in removals] == ["retired", ""]
    assert all(e.removed_by for e in removals)  # the operator who removed it
    assert sum(isinstance(e, ToolServerRegistered) for e in history) == 2


async def test_the_tier_is_assessed_and_raised_by_flagged_tools(
    agent_image: str, make_store: Any, tool_settings: Settings, docker_client: docker.DockerClient
) -> None:
    image = toolbox_image(agent_image)
    server = f"tier{uuid.uuid4().hex[:6]}"
    async with running_agent(tool_settings) as agent:
        # A signing key passed in the environment is a secret: tier1 is refused, saying why.
        low = await agent.http.post("/v1/tools/servers", json=server_body(server, image, tier="tier1"))
        assert (low.status_code, low.json()["error"]["code"]) == (422, "tool_tier_refused")
        assert "secrets_passed:TOOLBOX_SIGNING_KEY" in low.json()["error"]["message"]
        # No secret passed, a SchemaPin domain set: tier1, until the server lists a poisoned tool.
        body = server_body(server, image, env={"TOOLBOX_POISON": "1"})
        added = await agent.http.post("/v1/tools/servers", json=body)
        assert added.status_code == 200, added.text
        sandbox = added.json()["sandbox"]
        assert (sandbox["tier"], sandbox["assessed_tier"], sandbox["requested_tier"]) == ("tier2", "tier2", "")
        assert sandbox["risk_factors"] == [f"flagged_tools:{server}.poisoned"]
        [container] = containers(docker_client, server)  # the tier1 one is gone
        runtime = docker_client.api.inspect_container(container["Id"])["HostConfig"]["Runtime"]
        assert runtime == "runsc"
        shown = (await agent.http.get(f"/v1/tools/{server}.add")).json()
        assert shown["server"]["tier"] == "tier2"
        assert shown["server"]["risk_factors"] == [f"flagged_tools:{server}.poisoned"]
        # The same registration again is no change (the raise is not a new configuration).
        same = await agent.http.post("/v1/tools/servers", json=body)
        assert same.status_code == 200, same.text
        await agent.http.delete(f"/v1/tools/servers/{server}")
    assert await gone(docker_client, server)
    store = await make_store("audit")
    history = [r.event for r in await store.load("toolserver", server, CODEC)]
    [reg] = [e for e in history if isinstance(e, ToolServerRegistered)]
    assert (reg.tier, reg.assessed_tier, reg.risk_factors) == ("tier1", "tier1", ())
    [bump] = [e for e in history if isinstance(e, ToolServerTierRaised)]
    assert (bump.tier, bump.factors) == ("tier2", (f"flagged_tools:{server}.poisoned",))


TIER2_AGENT = """
import json
from symbi_agent import Agent
with Agent() as a:
    names = sorted(t["name"] for t in a.tools.list()["tools"])
    added = a.tools.call("SERVER.add", {"a": 20, "b": 22})
print(json.dumps({"names": names, "add": added["structuredContent"]}))
"""


async def test_an_agent_calls_a_tool_of_a_server_under_gvisor(
    agent_image: str,
    scheduler: Scheduler,
    tool_settings: Settings,
    docker_client: docker.DockerClient,
    context_service: CommandClient,
) -> None:
    image = toolbox_image(agent_image)
    server = f"g{uuid.uuid4().hex[:6]}"
    async with running_agent(tool_settings) as agent:
        added = await agent.http.post("/v1/tools/servers", json=server_body(server, image))
        assert added.status_code == 200, added.text
        assert added.json()["sandbox"]["tier"] == "tier2"
        approved = await agent.http.post(f"/v1/tools/{server}.add/approve", json={})
        assert approved.json()["status"] == "approved"
        [container] = containers(docker_client, server)
        host_config = docker_client.api.inspect_container(container["Id"])["HostConfig"]
        assert (host_config["Runtime"], host_config["NetworkMode"]) == ("runsc", "none")
        assert host_config["PidsLimit"] >= 128
        code = TIER2_AGENT.replace("SERVER", server)
        task_id = await scheduler.submit(agent.host_id, ["python3", "-c", code], actions=True, image=agent_image)
        r = await scheduler.result(task_id, timeout=120)
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-2000:])
    assert r.stdout, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out == {"names": [f"{server}.add"], "add": {"result": 42}}
    recorded = [(a.resource, a.outcome) for a in actions(r.events) if a.action == "tool.invoke"]
    assert recorded == [(f"{server}.add", "allowed")]
    assert await gone(docker_client, server)


DECLARING_AGENT = """
agent files_user {
  version = "1.0.0"
  capabilities = [tool.invoke]
  workload = { image: "@IMAGE@", command: ["true"], actions: true }
  mcp_servers = [
    {name: "@SERVER@", image: "@TOOLBOX@", command: ["python3", "/opt/toolbox.py"], domain: "@DOMAIN@",
     env: {TOOLBOX_SIGNING_KEY: "@KEY@"}}
  ]
}
"""

DECLARED_USE = """
import json
from symbi_agent import Agent, SymbiAgentError
with Agent() as a:
    names = [t["name"] for t in a.tools.list()["tools"]]
    try:
        a.tools.call("SERVER.add", {"a": 1, "b": 2})
        called = "ok"
    except SymbiAgentError as err:
        called = err.code
print(json.dumps({"names": names, "called": called}))
"""


async def test_servers_declared_in_a_definition_are_registered_when_its_task_starts(
    agent_image: str,
    make_store: Any,
    scheduler: Scheduler,
    tool_settings: Settings,
    docker_client: docker.DockerClient,
    context_service: CommandClient,
) -> None:
    image = toolbox_image(agent_image)
    server = f"d{uuid.uuid4().hex[:6]}"
    source = (
        DECLARING_AGENT.replace("@TOOLBOX@", image)
        .replace("@IMAGE@", agent_image)
        .replace("@SERVER@", server)
        .replace("@DOMAIN@", DOMAIN)
        .replace("@KEY@", KEY.replace("\n", "\\n"))
    )
    config = msgspec.convert(compile_agent(source, agent_id="agent-1"), AgentConfig)
    [declared] = config.mcp_servers
    assert (declared.name, declared.image, declared.env) == (server, image, {"TOOLBOX_SIGNING_KEY": KEY})
    code = DECLARED_USE.replace("SERVER", server)
    command = ["python3", "-c", code]
    async with running_agent(tool_settings) as agent:
        first = await scheduler.submit(
            agent.host_id, command, actions=True, image=agent_image, mcp_servers=config.mcp_servers
        )
        r = await scheduler.result(first, timeout=120)
        assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-2000:])
        # Registered, but a definition approves nothing: the agent sees no tool and may call none.
        assert json.loads(r.stdout) == {"names": [], "called": "tool_not_approved"}
        shown = (await agent.http.get(f"/v1/tools/{server}.add")).json()
        assert (shown["status"], shown["server"]["registered_by"]) == ("pending", "agent:agent-1")
        assert shown["server"]["tier"] == "tier2"  # the signing key is a secret passed
        approved = await agent.http.post(f"/v1/tools/{server}.add/approve", json={})
        assert approved.json()["status"] == "approved"
        # The same declaration again: no change, the approval stands, the same sandbox serves it.
        [before] = containers(docker_client, server)
        second = await scheduler.submit(
            agent.host_id, command, actions=True, image=agent_image, mcp_servers=config.mcp_servers
        )
        r2 = await scheduler.result(second, timeout=120)
        assert isinstance(r2.terminal, ExecutionExited), (r2.terminal, r2.stderr[-2000:])
        assert json.loads(r2.stdout) == {"names": [f"{server}.add"], "called": "ok"}
        assert [c["Id"] for c in containers(docker_client, server)] == [before["Id"]]
        # Another configuration under the same name is refused, never merged: the task does not start.
        changed = msgspec.structs.replace(declared, env={**declared.env, "EXTRA": "1"})
        third = await scheduler.submit(agent.host_id, command, actions=True, image=agent_image, mcp_servers=(changed,))
        r3 = await scheduler.result(third, timeout=60)
        assert isinstance(r3.terminal, ExecutionRefused)
        assert r3.terminal.code == "tool_refused"
        assert "another configuration" in r3.terminal.reason
        await agent.http.delete(f"/v1/tools/servers/{server}")
    store = await make_store("audit")
    history = [r.event for r in await store.load("toolserver", server, CODEC)]
    assert [e.registered_by for e in history if isinstance(e, ToolServerRegistered)] == ["agent:agent-1"]
