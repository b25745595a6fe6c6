"""The MCP servers an agent's definition declares (``TaskAssigned.mcp_servers``), registered before its task
starts through the same registry path as ``symbi tools add``.

Registering a declared server again with the same configuration changes nothing (idempotent); the same name
with another configuration (another image, command, domain, tier asked for, environment …) is refused, never
merged, and so is the task. Registering approves nothing: each of the server's tools stays pending until an
operator approves it, so a definition cannot approve its own tools. The registration names
``agent:<agent_id>`` as who registered it.
"""

from __future__ import annotations

from collections.abc import Iterable

from symbi_contracts.tools.declarations import McpServerSpec, declaration_problems
from symbi_contracts.tools.errors import ToolRefused, ToolServerUnavailable
from symbi_contracts.tools.events import ToolServerRegistered

from symbi_sandbox_agent.tools.service import ToolService


def registration_of(spec: McpServerSpec, agent_id: str) -> ToolServerRegistered:
    """The registration ``symbi tools add`` would make of ``spec``, by ``agent:<agent_id>``."""
    return ToolServerRegistered(
        server=spec.name,
        transport=spec.transport,
        image=spec.image,
        command=spec.command,
        url=spec.url,
        domain=spec.domain,
        env=dict(spec.env),
        requested_tier=spec.tier,
        registered_by=f"agent:{agent_id}",
    )


async def register_declared(tools: ToolService | None, agent_id: str, servers: Iterable[McpServerSpec]) -> None:
    """Register (or find registered as declared) each server; :class:`ToolRefused` for a malformed or
    conflicting declaration, :class:`ToolServerUnavailable` for a server that cannot be started."""
    servers = tuple(servers)
    problems = declaration_problems(servers)
    if problems:
        raise ToolRefused("; ".join(f"mcp_servers{at}: {message}" for at, message in problems))
    if tools is None:
        raise ToolServerUnavailable("this host has no tool registry: the definition's MCP servers cannot be started")
    for spec in servers:
        await tools.register(registration_of(spec, agent_id))
