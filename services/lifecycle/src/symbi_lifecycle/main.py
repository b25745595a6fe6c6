"""Entry point: ``symbi-lifecycle [--config PATH]`` (or ``python -m symbi_lifecycle``).

Settings come from the TOML file (``--config`` or ``SYMBI_CONFIG_PATH``) and ``SYMBI_*`` environment
variables (``SYMBI_NATS_URL``, ``SYMBI_DATABASE_URL``, ``SYMBI_KEYS_DIR``, ``SYMBI_HTTP_PORT`` …). A bad
setting stops start-up with a message naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from symbi_common.service import ServiceRuntime
from symbi_common.service_app import create_app, run_service
from symbi_common.settings import Settings
from symbi_contracts.policy.commands import AGENT_EVENTS_CAUGHT_UP, CaughtUp, CaughtUpRequest

from symbi_lifecycle.api import register_commands, router
from symbi_lifecycle.application import LifecycleService
from symbi_lifecycle.controller import InitializationController
from symbi_lifecycle.domain import AGENT
from symbi_lifecycle.metrics import refresh_agents
from symbi_lifecycle.projections import AgentProjection

SERVICE = "lifecycle"


def build_app(settings: Settings) -> FastAPI:
    """The lifecycle service's app; its lifespan connects, starts the projection and serves commands."""
    runtime = ServiceRuntime(SERVICE, settings)

    async def on_start(rt: ServiceRuntime) -> None:
        assert rt.pool is not None, "the lifecycle service runs with a database"
        repository = rt.repository(AGENT)
        runner = await rt.add_projection(AgentProjection(rt.store))
        controller = InitializationController(
            repository, rt.decision_point, rt.pool, runner_image=settings.runtime.agent_image
        )

        async def policy_applied(sequence: int) -> None:
            request = CaughtUpRequest(sequence=sequence, timeout_s=5.0)
            await rt.client.call("policy", AGENT_EVENTS_CAUGHT_UP, request, CaughtUp, timeout=6.0)

        service = LifecycleService(repository, rt.pool, runner, controller, policy_applied)
        rt.spawn(controller.run(runner.ready.wait), "lifecycle:initialization")
        register_commands(rt.commands, service)
        pool = rt.pool
        rt.add_metrics_refresh(lambda: refresh_agents(pool))
        app.state.lifecycle = service

    app = create_app(runtime, title="Symbi lifecycle", routers=[router], on_start=on_start)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Read the settings and serve until SIGTERM/SIGINT."""
    run_service("symbi-lifecycle", "Symbi agent lifecycle service", build_app, argv, needs_database=True)
