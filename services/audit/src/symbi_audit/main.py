"""Entry point: ``symbi-audit [--config PATH]`` (or ``python -m symbi_audit``).

Settings come from the TOML file (``--config`` or ``SYMBI_CONFIG_PATH``) and ``SYMBI_*`` environment
variables (``SYMBI_NATS_URL``, ``SYMBI_DATABASE_URL``, ``SYMBI_KEYS_DIR``, ``SYMBI_HTTP_PORT``, and
``SYMBI_AUDIT__CHECKPOINT_EVERY`` … for the ``[audit]`` section). A bad setting stops start-up with a
message naming it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import FastAPI
from symbi_common.errors import ConfigError
from symbi_common.key_material import load_signer
from symbi_common.positions import PgPositions
from symbi_common.service import ServiceRuntime
from symbi_common.service_app import create_app, run_service
from symbi_common.settings import Settings

from symbi_audit import live_api
from symbi_audit.api import register_commands, router
from symbi_audit.application import AuditService
from symbi_audit.guard import LogGuard
from symbi_audit.live import LiveFeed
from symbi_audit.queries import DetailReader
from symbi_audit.runner import VerifierRunner
from symbi_audit.secret_changes import SecretChangeRecorder
from symbi_audit.store import AuditStore
from symbi_audit.witnesses import WitnessPool

SERVICE = "audit"


async def _guard_loop(guard: LogGuard, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await guard.check()


def build_app(settings: Settings) -> FastAPI:
    """The audit service's app; its lifespan starts the verifier and serves queries, proofs and commands."""
    if settings.audit.checkpoint_every < 1 or settings.audit.checkpoint_interval_s <= 0:
        raise ConfigError("checkpoint_every and checkpoint_interval_s must be positive", setting="audit")
    if settings.audit.guard_interval_s <= 0:
        raise ConfigError("must be positive", setting="audit.guard_interval_s")
    if settings.audit.guard_full_interval_s <= 0:
        raise ConfigError("must be positive", setting="audit.guard_full_interval_s")
    if settings.audit.batch < 1:
        raise ConfigError("must be at least 1", setting="audit.batch")
    runtime = ServiceRuntime(SERVICE, settings)
    live = LiveFeed()

    async def on_start(rt: ServiceRuntime) -> None:
        assert rt.pool is not None, "the audit service runs with a database"
        signer = load_signer(settings.signing_key_path(SERVICE))
        store = AuditStore(rt.pool)
        witnesses = WitnessPool(settings.audit, store)
        runner = VerifierRunner(
            js=rt.js,
            nc=rt.nc,
            store=store,
            registry=rt.registry,
            signer=signer,
            datakeys=rt.datakeys,
            settings=settings.audit,
            live=live,
            witnesses=witnesses,
        )
        await runner.setup()
        guard = LogGuard(
            js=rt.js, nc=rt.nc, store=store, witnesses=witnesses, full_interval_s=settings.audit.guard_full_interval_s
        )
        await guard.check()  # before anything else: a rolled-back log is never taken for a fresh start
        runner.hold = lambda: not guard.intact

        decisions = await rt.decision_point()
        service = AuditService(
            pool=rt.pool,
            store=store,
            runner=runner,
            events=rt.store,
            reader=DetailReader(rt.nc, rt.registry, rt.datakeys, decisions),
            decisions=decisions,
            signer=signer,
            guard=guard,
            registry=rt.registry,
        )
        rt.on_signer_change(service.use_signer)
        register_commands(rt.commands, service, operators=app.state.operator_guard)
        app.state.audit = service
        app.state.audit_guard = guard
        rt.spawn(runner.run(), "audit:verifier")
        rt.spawn(_guard_loop(guard, settings.audit.guard_interval_s), "audit:guard")
        secrets = SecretChangeRecorder(rt.js, rt.store, PgPositions(rt.pool, "audit_secret_changes"))
        await secrets.setup()
        app.state.audit_secret_changes = secrets
        rt.spawn(secrets.run(), "audit:secret-changes")
        rt.add_health_check("secret_changes", lambda: secrets.follower.halted is None)
        rt.add_health_check("verifier", runner.ready.is_set)
        rt.add_health_check("log_intact", lambda: guard.intact)
        rt.add_health_check("log_checked", lambda: guard.checked)

    app = create_app(runtime, title="Symbi audit", routers=[router, live_api.router], on_start=on_start)
    app.state.audit_live = live
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Read the settings and serve until SIGTERM/SIGINT."""
    run_service("symbi-audit", "Symbi audit service", build_app, argv, needs_database=True)
