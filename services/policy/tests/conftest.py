"""Fixtures of the policy tests: the real policy service (and, where needed, the lifecycle service) in-process.

NATS, PostgreSQL and the keyring come from the workspace's root ``conftest.py``. Another service's
embedded decision point is a real :class:`ServiceRuntime` of that service, started in the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from symbi_common.commands import CommandClient
from symbi_common.decision_queue import wait_decisions_stored
from symbi_common.eventstore import EventStore
from symbi_common.policy.events import DECISION_LOG_CODEC, DECISION_LOG_SUBJECT, ActionDenied, DecisionsLogged
from symbi_common.sealing import ChainTip
from symbi_common.service import ServiceRuntime
from symbi_common.settings import Settings, load_settings
from symbi_common.streams import EVENTS_STREAM, read_subject
from symbi_contracts.lifecycle.config import AgentConfig, PolicySpec
from symbi_contracts.lifecycle.events import CODEC, AgentReady, AgentRegistered, AgentTaskAssigned
from symbi_lifecycle.main import build_app as build_lifecycle
from symbi_policy.application import PolicyService
from symbi_policy.main import build_app

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "policies"


def service_env(nats_url: str, keys_dir: Path, database_url: str = "", **extra: str) -> dict[str, str]:
    env = {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        **extra,
    }
    if database_url:
        env["SYMBI_DATABASE_URL"] = database_url
    return env


@pytest.fixture
def settings(nats_url: str, keys_dir: Path) -> Settings:
    return load_settings(env=service_env(nats_url, keys_dir, SYMBI_POLICY__LOG_INTERVAL_S="0.05"))


@dataclass
class RunningPolicy:
    app: FastAPI
    http: httpx.AsyncClient
    service: PolicyService
    client: CommandClient
    runtime: ServiceRuntime


@pytest.fixture
async def policy(settings: Settings, operator_headers: dict[str, str]) -> AsyncIterator[RunningPolicy]:
    """The real policy service app with its lifespan run (NATS, followers, command server)."""
    async with running_policy(settings, operator_headers) as running:
        yield running


@contextlib.asynccontextmanager
async def running_policy(settings: Settings, operator_headers: dict[str, str]) -> AsyncIterator[RunningPolicy]:
    """The policy service started now (for a test that writes events before it starts)."""
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://policy", headers=operator_headers) as http:
            runtime = app.state.runtime
            yield RunningPolicy(app, http, app.state.policy, CommandClient(runtime.nc, timeout=5.0), runtime)


StartRuntime = Callable[..., Awaitable[ServiceRuntime]]


@pytest.fixture
async def start_runtime(nats_url: str, keys_dir: Path) -> AsyncIterator[StartRuntime]:
    """``await start_runtime("scheduler", enforcement="embedded")``: another service's runtime, stopped at teardown."""
    runtimes: list[ServiceRuntime] = []

    async def start(name: str = "scheduler", *, enforcement: str = "embedded") -> ServiceRuntime:
        env = service_env(
            nats_url, keys_dir, SYMBI_POLICY__ENFORCEMENT=enforcement, SYMBI_POLICY__LOG_INTERVAL_S="0.05"
        )
        runtime = ServiceRuntime(name, load_settings(env=env), use_database=False)
        await runtime.start()
        runtimes.append(runtime)
        return runtime

    try:
        yield start
    finally:
        for runtime in reversed(runtimes):
            await runtime.stop()


@pytest.fixture
async def lifecycle(
    nats_url: str, keys_dir: Path, database_url: str, operator_headers: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """The real lifecycle service in-process; yields its HTTP client."""
    app = build_lifecycle(load_settings(env=service_env(nats_url, keys_dir, database_url)))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://lifecycle", headers=operator_headers
        ) as http:
            yield http


async def running_agent(store: EventStore, agent_id: str, policies: tuple[PolicySpec, ...] = ()) -> ChainTip:
    """Write the lifecycle events of an agent that is registered, Ready and Running (signed as lifecycle)."""
    config = AgentConfig(name="reader", policies=policies)
    events = [AgentRegistered(agent_id=agent_id, config=config), AgentReady(), AgentTaskAssigned(task_id="t1")]
    records = await store.append("agent", agent_id, events, CODEC, expected=ChainTip())
    return records[-1].tip


async def stored_decisions(runtime: ServiceRuntime) -> tuple[list[DecisionsLogged], list[ActionDenied]]:
    """The decision-log events, once the policy service has stored every batch published so far."""
    logged: list[DecisionsLogged] = []
    denied: list[ActionDenied] = []
    store = runtime.store
    await wait_decisions_stored(runtime.js)
    async for batch in read_subject(store.nc, EVENTS_STREAM, DECISION_LOG_SUBJECT):
        for raw in batch:
            event = (await store.open_one(raw.data, raw.subject, raw.sequence, DECISION_LOG_CODEC)).event
            (denied if isinstance(event, ActionDenied) else logged).append(event)  # type: ignore[arg-type]
    return logged, denied


def example(name: str) -> str:
    return (EXAMPLES / f"{name}.cedar").read_text()
