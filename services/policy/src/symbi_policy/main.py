"""Entry point: ``symbi-policy [--config PATH]`` (or ``python -m symbi_policy``).

Settings come from the TOML file (``--config`` or ``SYMBI_CONFIG_PATH``) and ``SYMBI_*`` environment
variables (``SYMBI_NATS_URL``, ``SYMBI_KEYS_DIR``, ``SYMBI_HTTP_PORT`` …). The policy service needs no
database: the policy sets are rebuilt from the event stream at start, and the decision log is read
back from it for what-if. The enforcing processes' decision-log batches come from the ``DECISIONS`` stream
(:mod:`symbi_policy.decision_intake`).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from symbi_common.errors import ConfigError
from symbi_common.policy.follower import PolicyFollower
from symbi_common.service import ServiceRuntime
from symbi_common.service_app import create_app, run_service
from symbi_common.settings import Settings

from symbi_policy.agent_events import AgentPolicyFollower
from symbi_policy.api import register_caught_up, register_commands, router
from symbi_policy.application import PolicyService
from symbi_policy.decision_intake import DecisionIntake
from symbi_policy.domain import DECISION_LOG, POLICY_SET

SERVICE = "policy"


def baseline_path(settings: Settings) -> Path:
    """The baseline policy set: ``[policy] baseline_path``, else the copy shipped with this package."""
    if settings.policy.baseline_path:
        path = Path(settings.policy.baseline_path)
        if not path.is_file():
            raise ConfigError(f"{path} is not a file", setting="policy.baseline_path")
        return path
    return Path(str(resources.files("symbi_policy").joinpath("baseline.cedar")))


def build_app(settings: Settings) -> FastAPI:
    """The policy service's app; its lifespan follows the policy and agent events and serves commands."""
    runtime = ServiceRuntime(SERVICE, settings, use_database=False)
    baseline = baseline_path(settings).read_text()

    async def on_start(rt: ServiceRuntime) -> None:
        follower = PolicyFollower(rt.js, rt.registry, rt.datakeys, service=SERVICE, catch_up_registry=rt.keys.catch_up)
        await follower.start(timeout=settings.policy.startup_timeout_s, spawn=rt.spawn)
        rt.add_health_check("policy-sets", lambda: follower.healthy)  # read, and no policy set halted
        service = PolicyService(
            rt.repository(POLICY_SET),
            rt.repository(DECISION_LOG),
            follower,
            rt.store,
            what_if_limit=settings.policy.what_if_limit,
        )
        register_commands(rt.commands, service)
        app.state.policy = service
        app.state.follower = follower
        rt.add_metrics_refresh(service.refresh_metrics)
        await service.ensure_baseline(baseline)
        agents = AgentPolicyFollower(
            rt.js, rt.store, service, on_error=rt.note_error, catch_up_registry=rt.keys.catch_up
        )
        await agents.start(spawn=rt.spawn)
        register_caught_up(rt.commands, rt.js, agents)
        app.state.agent_policies = agents
        intake = DecisionIntake(rt.js, service, on_error=rt.note_error)
        await intake.start(rt.spawn)
        rt.add_metrics_refresh(intake.refresh_metrics)
        app.state.decision_intake = intake

    app = create_app(runtime, title="Symbi policy", routers=[router], on_start=on_start)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Read the settings and serve until SIGTERM/SIGINT."""
    run_service("symbi-policy", "Symbi policy service", build_app, argv)
