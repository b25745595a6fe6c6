"""An agent's ``mcp_servers`` entry: the MCP servers it uses, compiled to ``AgentConfig.mcp_servers``.

Symbiont's DSL has no declaration of MCP servers (its agents name tools only in policy rules,
``invoke_tool(tool)``), so this is Symbi's own key, shaped like ``symbi tools add``::

    mcp_servers = [
      {name: "files", image: "sha256:…", command: ["python3", "/opt/server.py"], domain: "tools.example.com",
       tier: tier2, env: {LOG_LEVEL: "info"}},
      {name: "search", url: "https://mcp.example.com/mcp", domain: "tools.example.com"}
    ]

The rules of ``symbi_contracts.tools.declarations`` are checked here already, each reported at its server.
"""

from __future__ import annotations

from typing import Any

import msgspec
from symbi_contracts.tools.declarations import TIERS, McpServerSpec, declaration_problems

from symbi_dsl import ast as A
from symbi_dsl.diagnostics import Reporter
from symbi_dsl.values import Values, keyed_entries, require_keys, value_of

MCP_SERVER_KEYS = ("name", "image", "command", "url", "domain", "tier", "env")
EXAMPLE = '[{name: "files", image: "sha256:…", command: ["python3", "/opt/server.py"], domain: "tools.example.com"}]'


def mcp_servers(rep: Reporter, v: Values, e: A.Expr) -> list[dict[str, Any]]:
    """The declared servers as ``McpServerSpec``-shaped dicts; every problem reported where it is."""
    if not isinstance(e, A.Array):
        v._bad(e, f"a list of MCP servers like {EXAMPLE}")
        return []
    out: list[dict[str, Any]] = []
    nodes: list[A.Expr] = []
    for item in e.items:
        if not isinstance(item, A.Record):
            v._bad(item, f"an MCP server like {EXAMPLE[1:-1]}")
            continue
        entries = [A.Entry(k, val, span=val.span) for k, val in item.fields]
        got = keyed_entries(rep, entries, MCP_SERVER_KEYS, "an MCP server")
        require_keys(rep, got, ("name",), "an MCP server", item.span)
        spec: dict[str, Any] = {}
        for key in ("name", "image", "url", "domain"):
            if key in got and (text := v.string(value_of(got[key]))) is not None:
                spec[key] = text
        if "tier" in got and (tier := v.word(value_of(got["tier"]), TIERS, "an MCP server's tier")) is not None:
            spec["tier"] = tier
        if "command" in got:
            spec["command"] = [s for s, _ in v.strings(value_of(got["command"]))]
        if "env" in got:
            env = value_of(got["env"])
            if not isinstance(env, A.Record):
                v._bad(env, 'a record like {LOG_LEVEL: "info"}')
            else:
                spec["env"] = {k: s for k, val in env.fields if (s := v.string(val)) is not None}
        if "name" in spec:
            out.append(spec)
            nodes.append(item)
    specs = [msgspec.convert(s, McpServerSpec) for s in out]
    for at, message in declaration_problems(specs):
        index = int(at[1:].split("]", 1)[0]) if at.startswith("[") else 0
        rep.error("value", f"MCP server {specs[index].name!r}: {message}" if specs else message, nodes[index].span)
    return out
