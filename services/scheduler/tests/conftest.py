"""Fixtures of the scheduler tests: the real scheduler and lifecycle apps (in-process) on the test's
nats-server, and sandbox hosts played with real events (see ``schedkit.py``).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.settings import Settings, load_settings
from symbi_lifecycle.main import build_app as build_lifecycle
from symbi_scheduler.main import build_app

sys.path.insert(0, str(Path(__file__).parent))

from schedkit import App, FakeHost, MakeStore, running_app, scheduler_env


@pytest.fixture
async def lifecycle(nats_url: str, database_url: str, keys_dir: Path) -> AsyncIterator[App]:
    env = {"SYMBI_NATS_URL": nats_url, "SYMBI_DATABASE_URL": database_url, "SYMBI_KEYS_DIR": str(keys_dir)}
    env["SYMBI_LOG_LEVEL"] = "warning"
    env["SYMBI_POLICY__ENFORCEMENT"] = "allow-all"
    async with running_app(build_lifecycle(load_settings(env=env)), "lifecycle") as app:
        yield app


@pytest.fixture
def scheduler_settings(nats_url: str, keys_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: str) -> Settings:
        return load_settings(env=scheduler_env(nats_url, keys_dir, **overrides))

    return make


@pytest.fixture
def start_scheduler(
    scheduler_settings: Callable[..., Settings],
) -> Callable[..., AbstractAsyncContextManager[App]]:
    """``async with start_scheduler(strategy="first_fit") as s``: a scheduler replica with those settings."""

    def start(decisions: Any = None, **overrides: str) -> AbstractAsyncContextManager[App]:
        return running_app(build_app(scheduler_settings(**overrides), decisions=decisions), "scheduler")

    return start


@pytest.fixture
async def hosts(
    make_store: MakeStore, nats_connect: Callable[..., Awaitable[NatsClient]], scheduler_settings: Any
) -> AsyncIterator[Callable[..., Awaitable[FakeHost]]]:
    """``await hosts("h1", cpu_cores=2, hold=True)``: a sandbox host on its own connection."""
    started: list[FakeHost] = []

    async def make(host_id: str, **options: Any) -> FakeHost:
        nc = await nats_connect()
        host = FakeHost(host_id, nc, await make_store("sandbox-agent", nc=nc), **options)
        await host.start(scheduler_settings())
        started.append(host)
        return host

    yield make
    for host in started:
        await host.stop()
