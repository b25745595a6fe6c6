"""``mcp_servers`` in an agent definition: compiled to ``AgentConfig.mcp_servers``, every rule of
``symbi_contracts.tools.declarations`` reported at its server, and the same rules at registration."""

from __future__ import annotations

import msgspec
import pytest
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.tools.declarations import McpServerSpec, declaration_problems
from symbi_dsl import DslError, compile_agent

PINNED = "sha256:" + "a" * 64


def _agent(servers: str) -> str:
    return f"""
agent files_user {{
  capabilities = [tool.invoke]
  workload = {{ image: "symbi/busybox:1", command: ["true"], actions: true }}
  mcp_servers = {servers}
}}
"""


def test_declared_servers_compile_to_the_agent_config() -> None:
    source = _agent(
        f'[{{name: "files", image: "{PINNED}", command: ["python3", "/opt/s.py"], domain: "tools.example.com",'
        ' tier: tier2, env: {LOG_LEVEL: "info"}}, {name: "search", url: "https://mcp.example.com/mcp"}]'
    )
    config = msgspec.convert(compile_agent(source), AgentConfig)
    files, search = config.mcp_servers
    assert files == McpServerSpec(
        name="files",
        image=PINNED,
        command=("python3", "/opt/s.py"),
        domain="tools.example.com",
        tier="tier2",
        env={"LOG_LEVEL": "info"},
    )
    assert (files.transport, search.transport, search.url) == ("stdio", "http", "https://mcp.example.com/mcp")


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ('[{name: "files", image: "python:3", command: ["x"]}]', "not pinned by digest"),
        (f'[{{name: "files", image: "{PINNED}"}}]', "needs a command"),
        ('[{name: "Files.x", url: "https://h/mcp"}]', "is not 1-32 of"),
        ('[{name: "files", url: "ftp://h"}]', r"not an http\(s\) URL"),
        (f'[{{name: "files", url: "https://h/mcp", image: "{PINNED}"}}]', "not both"),
        ('[{name: "a", url: "https://h/mcp"}, {name: "a", url: "https://g/mcp"}]', "declared twice"),
        ('[{name: "files", url: "https://h/mcp", tier: tier3}]', "tier must be one of tier1, tier2"),
        ('[{url: "https://h/mcp"}]', "needs 'name'"),
        ('[{name: "files", url: "https://h/mcp", approve: true}]', "unknown key 'approve'"),
        ('"files"', "a list of MCP servers"),
    ],
)
def test_a_bad_declaration_is_refused_where_it_is(servers: str, message: str) -> None:
    with pytest.raises(DslError, match=message) as refused:
        compile_agent(_agent(servers))
    assert refused.value.diagnostics[0].line == 5


def test_registration_checks_the_same_rules() -> None:
    good = McpServerSpec(name="files", image=PINNED, command=("s",))
    assert declaration_problems([good]) == []
    bad = McpServerSpec(name="files", image="python:3", command=(), tier="tier0", env={"A-B": "1"})
    assert [field for field, _ in declaration_problems([good, bad])] == [
        "[1].name",
        "[1].image",
        "[1].command",
        "[1].tier",
        "[1].env.A-B",
    ]
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"name": "files", "approved": True}, McpServerSpec)
