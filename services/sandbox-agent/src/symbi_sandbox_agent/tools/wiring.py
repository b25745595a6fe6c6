"""The host's :class:`ToolService` from its ``[sandbox]`` and ``[mcp]`` settings, and the servers registered before it
started, connected again (each in the background: one server that does not start holds up no other)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from symbi_common.errors import ConfigError, SymbiError
from symbi_common.service import ServiceRuntime
from symbi_common.settings_sandbox import McpSettings, SandboxSettings
from symbi_common.streams import EVENTS_STREAM

from symbi_sandbox_agent.tools.limits import ToolLimits
from symbi_sandbox_agent.tools.service import ToolService
from symbi_sandbox_agent.tools.stored_registry import StoredRegistry
from symbi_sandbox_agent.tools.url_egress import UrlEgress
from symbi_sandbox_agent.tools.verify import empty_bundle, load_bundle

log = structlog.get_logger(__name__)


def tool_service(rt: ServiceRuntime, settings: SandboxSettings, mcp: McpSettings) -> ToolService:
    """Refuses (``ConfigError``) a trust bundle that cannot be read."""
    bundle = empty_bundle()
    if settings.tools_trust_bundle:
        try:
            bundle = load_bundle(Path(settings.tools_trust_bundle).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the trust bundle: {exc}", setting="sandbox.tools_trust_bundle") from None
    limits = ToolLimits(
        timeout_s=settings.tools_timeout_s,
        max_result_bytes=settings.tools_max_result_bytes,
        rate_per_s=settings.tools_rate_per_s,
        burst=max(1, int(2 * settings.tools_rate_per_s)),
        connect_timeout_s=mcp.connection_timeout_s,
        max_connections=mcp.max_concurrent_connections,
    )
    egress = UrlEgress.of(rt.settings.egress)
    return ToolService(StoredRegistry(rt.store), bundle, limits=limits, egress=egress, enabled=mcp.discovery_enabled)


async def registered_servers(js: Any) -> list[str]:
    """The servers that have a ``evt.toolserver.<server>`` stream."""
    info = await js.stream_info(EVENTS_STREAM, subjects_filter="evt.toolserver.*")
    return sorted(subject.split(".", 2)[2] for subject in (info.state.subjects or {}))


async def attach_all(rt: ServiceRuntime, tools: ToolService) -> None:
    if not tools.enabled:
        log.info("MCP tools are switched off ([mcp] discovery_enabled = false): no tool server is connected")
        return
    try:
        servers = await registered_servers(rt.js)
    except Exception as exc:
        log.warning("could not list the registered tool servers", error=repr(exc))
        return
    for server in servers:
        try:
            if (await tools.registry.state(server, fresh=True)).registration is None:
                continue  # removed: its stream is history only
            await tools.attach(server)
        except (SymbiError, OSError) as exc:
            log.warning("tool server not connected", server=server, error=repr(exc))
