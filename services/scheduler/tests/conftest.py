"""Fixtures of the scheduler tests: the real scheduler and lifecycle apps (in-process) on the test's
nats-server, and sandbox hosts played with real events (see ``schedkit.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.settings import Settings, load_settings
from symbi_fixtures.runtimes import take_free_port
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


@pytest.fixture
def scheduler_process(nats_url: str, keys_dir: Path, tmp_path: Path) -> Iterator[Any]:
    """``start()`` runs ``python -m symbi_scheduler`` as its own process; every one is killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []

    def start() -> subprocess.Popen[bytes]:
        env = {**os.environ, **scheduler_env(nats_url, keys_dir), "SYMBI_HTTP_PORT": str(take_free_port())}
        log = (tmp_path / f"scheduler-{len(procs)}.log").open("wb")
        logs.append(log)
        proc = subprocess.Popen([sys.executable, "-m", "symbi_scheduler"], env=env, stdout=log, stderr=log)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for log in logs:
        log.close()
