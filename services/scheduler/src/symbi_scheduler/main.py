"""Entry point: ``symbi-scheduler [--config PATH]`` (or ``python -m symbi_scheduler``).

Settings come from the TOML file (``--config`` or ``SYMBI_CONFIG_PATH``) and ``SYMBI_*`` environment
variables (``SYMBI_NATS_URL``, ``SYMBI_KEYS_DIR``, ``SYMBI_HTTP_PORT``, ``SYMBI_SCHEDULER__STRATEGY`` …).
The scheduler keeps no database: its state is rebuilt from the event stream at every start.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence

from fastapi import FastAPI
from symbi_common.decisions import DecisionPoint
from symbi_common.service import ServiceRuntime
from symbi_common.service_app import create_app, run_service
from symbi_common.settings import Settings

from symbi_scheduler.api import register_commands, router
from symbi_scheduler.application import SchedulerService
from symbi_scheduler.domain import TASK, task_data_key
from symbi_scheduler.follower import EventFollower, HostWatcher
from symbi_scheduler.leader import Leader
from symbi_scheduler.lease import Lease
from symbi_scheduler.metrics import GAUGES
from symbi_scheduler.model import Model
from symbi_scheduler.quotas import QuotaLimits
from symbi_scheduler.schedules import SCHEDULE
from symbi_scheduler.work import ensure_work_stream

SERVICE = "scheduler"


def build_app(settings: Settings, *, decisions: DecisionPoint | None = None) -> FastAPI:
    """The scheduler's app; its lifespan rebuilds the state from the stream, then schedules while it
    holds the lease. ``decisions`` replaces the configured decision point (``[policy] enforcement``)."""
    runtime = ServiceRuntime(SERVICE, settings, use_database=False)
    s = settings.scheduler

    async def on_start(rt: ServiceRuntime) -> None:
        model = Model(
            strategy=s.strategy,
            reserve=s.reserved_headroom,
            aging_s=s.aging_interval_s,
            preemption=s.preemption,
            host_lost_after_s=s.host_lost_after_s,
            default_tier=settings.security.default_sandbox_tier,
            max_running=settings.runtime.max_concurrent_agents,
            tenant_quotas={
                t: QuotaLimits(q.concurrent_tasks, q.cpu_seconds_per_day) for t, q in s.tenant_quotas.items()
            },
        )
        model.capacity.grace_until = time.time() + s.host_lost_after_s
        await ensure_work_stream(rt.js, settings)
        tasks = rt.repository(TASK, data_key=task_data_key)
        schedules = rt.repository(SCHEDULE)
        lease = Lease(
            rt.js,
            s.replica_id or f"{socket.gethostname()}-{os.getpid()}",
            ttl_s=s.lease_ttl_s,
            replicas=settings.nats.replicas,
        )
        await lease.open()
        wake = asyncio.Event()
        follower = EventFollower(rt.js, rt.store, model, wake.set, catch_up_registry=rt.keys.catch_up)
        hosts = HostWatcher(rt.js, model, wake.set, registry=rt.store.registry, replicas=settings.nats.replicas)
        await hosts.open()
        leader = Leader(rt, model, tasks, schedules, lease, decisions, follower.synced, hosts.loaded, wake)
        rt.spawn(follower.run(), "scheduler:follow")
        rt.spawn(hosts.run(), "scheduler:hosts")
        await follower.synced.wait()
        rt.spawn(leader.renew(), "scheduler:lease")
        rt.spawn(leader.run(), "scheduler:leader")
        service = SchedulerService(rt, model, follower, hosts, leader)
        register_commands(rt.commands, service)
        rt.spawn(_export_gauges(service), "scheduler:gauges")
        app.state.scheduler = service
        app.state.lease = lease

    app = create_app(runtime, title="Symbi scheduler", routers=[router], on_start=on_start)
    return app


async def _export_gauges(service: SchedulerService) -> None:
    """Serve this replica's gauges on ``/metrics`` for as long as it runs."""
    GAUGES.attach(service)
    try:
        await asyncio.Event().wait()
    finally:
        GAUGES.detach(service)


def main(argv: Sequence[str] | None = None) -> None:
    """Read the settings and serve until SIGTERM/SIGINT."""
    run_service("symbi-scheduler", "Symbi task scheduler", build_app, argv)
