"""Entry point: ``symbi-sandbox-agent [--config PATH]`` (or ``python -m symbi_sandbox_agent``).

Settings: the ``[sandbox]`` section (``SYMBI_SANDBOX__HOST_ID``, ``SYMBI_SANDBOX__DOCKER_URL`` …) plus the
common ones (``SYMBI_NATS_URL``, ``SYMBI_KEYS_DIR``, ``SYMBI_HTTP_PORT``). No database. The host needs a
Docker engine with runc and/or runsc: ``deploy/host/setup-docker.sh``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import FastAPI
from symbi_common.commands import CommandServer
from symbi_common.service import ServiceRuntime
from symbi_common.service_app import create_app, run_service
from symbi_common.settings import Settings
from symbi_common.settings_sandbox import resolve_host_id

from symbi_sandbox_agent.api import register_commands, router
from symbi_sandbox_agent.config import check_settings
from symbi_sandbox_agent.egress.host import check_egress_settings
from symbi_sandbox_agent.host import SandboxHost
from symbi_sandbox_agent.tools_api import router as tools_router

SERVICE = "sandbox-agent"


def build_app(settings: Settings) -> FastAPI:
    """The daemon's app; its lifespan reconciles the host, registers it and starts consuming work."""
    host_id = resolve_host_id(settings.sandbox.host_id)
    check_settings(settings.sandbox)
    check_egress_settings(settings.egress)
    runtime = ServiceRuntime(SERVICE, settings, use_database=False)

    async def on_start(rt: ServiceRuntime) -> None:
        # Commands are addressed to this host: cmd.sandbox-agent.<host_id>.<action>.
        rt.commands = CommandServer(rt.nc, f"{SERVICE}.{host_id}", max_request_bytes=settings.events.max_command_bytes)
        agent = SandboxHost(rt, settings.sandbox, host_id)
        app.state.sandbox = agent
        rt.spawn(_close_on_stop(agent), "sandbox:close")
        await agent.start()
        register_commands(rt.commands, agent.service)

    app = create_app(
        runtime, title=f"Symbi sandbox-agent ({host_id})", routers=[router, tools_router], on_start=on_start
    )
    return app


async def _close_on_stop(agent: SandboxHost) -> None:
    """On shutdown, let the sandboxes' own clean-up (kill, remove, report) finish, then close Docker."""
    try:
        await asyncio.Event().wait()
    finally:
        await agent.drain()
        agent.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Read the settings and serve until SIGTERM/SIGINT."""
    run_service("symbi-sandbox-agent", "Symbi sandbox-agent (one per host)", build_app, argv)
