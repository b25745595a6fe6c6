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
import pytest
from symbi_common.settings import Settings
from symbi_contracts.tools.errors import ToolNotApproved, UnknownTool
from symbi_contracts.tools.events import CODEC, ToolServerRegistered, ToolServerRemoved

from .conftest import running_agent
from .test_channel import agent_image
from .tools_support import DOMAIN, bundle, keypair, toolbox_image

__all__ = ["agent_image"]  # fixtures, used by name

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
