"""Fixtures of the audit tests: a log of real signed events in a real JetStream, raw access to it, and
the real audit service app (in-process). NATS, PostgreSQL and the keyring come from the root ``conftest.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from nats.aio.client import Client as NatsClient
from symbi_audit.application import AuditService
from symbi_audit.export import stored_events
from symbi_audit.main import build_app
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.sealing import NEW_AGGREGATE, ChainTip
from symbi_common.settings import Settings, load_settings
from symbi_common.streams import RawMessage
from symbi_fixtures.runtimes import take_free_port


class Touched(Event, frozen=True, tag="agent.touched"):
    """A small event for filling the log."""

    agent_id: str
    n: int
    note: str = "personal data of the agent's user"


class TaskNoted(Event, frozen=True, tag="task.submitted"):
    task_id: str
    n: int
    agent_id: str | None = None


AGENT_CODEC: EventCodec[Touched] = EventCodec([Touched])
TASK_CODEC: EventCodec[TaskNoted] = EventCodec([TaskNoted])


@dataclass
class Writer:
    """Appends real events as the lifecycle (``evt.agent.*``) and scheduler (``evt.task.*``) services."""

    lifecycle: EventStore
    scheduler: EventStore
    tips: dict[str, ChainTip]

    async def agent(self, agent_id: str, count: int = 1, correlation_id: str | None = None) -> list[int]:
        tip = self.tips.get(f"agent.{agent_id}", NEW_AGGREGATE)
        events = [Touched(agent_id=agent_id, n=tip.version + i) for i in range(count)]
        recs = await self.lifecycle.append(
            "agent", agent_id, events, AGENT_CODEC, expected=tip, correlation_id=correlation_id
        )
        self.tips[f"agent.{agent_id}"] = recs[-1].tip
        return [r.sequence for r in recs]

    async def task(
        self, task_id: str, count: int = 1, agent_id: str | None = None, *, data_key: str | None = None
    ) -> list[int]:
        tip = self.tips.get(f"task.{task_id}", NEW_AGGREGATE)
        events = [TaskNoted(task_id=task_id, n=tip.version + i, agent_id=agent_id) for i in range(count)]
        recs = await self.scheduler.append("task", task_id, events, TASK_CODEC, expected=tip, data_key=data_key)
        self.tips[f"task.{task_id}"] = recs[-1].tip
        return [r.sequence for r in recs]

    async def mixed(self, rounds: int) -> int:
        """Interleaved events of three agents and two tasks; returns the last stream sequence."""
        last = 0
        for i in range(rounds):
            last = (await self.agent(f"a{i % 3}"))[-1]
            if i % 2:
                last = (await self.task(f"t{i % 2}"))[-1]
        return last


@pytest.fixture
async def writer(make_store: Callable[..., Awaitable[EventStore]]) -> Writer:
    return Writer(await make_store("lifecycle"), await make_store("scheduler"), {})


async def read_log(nc: NatsClient) -> list[RawMessage]:
    out: list[RawMessage] = []
    async for batch in stored_events(nc):
        out.extend(batch)
    return out


def audit_env(nats_url: str, database_url: str, keys_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_DATABASE_URL": database_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
        "SYMBI_AUDIT__CHECKPOINT_EVERY": "10",
        "SYMBI_AUDIT__CHECKPOINT_INTERVAL_S": "0.5",
    }
    env.update(extra)
    return env


@pytest.fixture
def settings(nats_url: str, database_url: str, keys_dir: Path) -> Settings:
    return load_settings(env=audit_env(nats_url, database_url, keys_dir))


@dataclass
class Running:
    app: FastAPI
    http: httpx.AsyncClient
    service: AuditService

    async def wait_for(self, sequence: int, timeout: float = 10.0) -> None:
        assert await self.service.runner.wait_for(sequence, timeout), f"audit did not reach {sequence}"

    async def json(self, path: str, **params: Any) -> Any:
        resp = await self.http.get(path, params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def checkpoint_covering(self, sequence: int) -> dict[str, Any]:
        """The latest checkpoint once one covers stream ``sequence`` (checkpoints come every 0.5 s here)."""
        for _ in range(100):
            cp = (await self.json("/v1/audit/status"))["checkpoint"]
            if cp and cp["size"] >= sequence:
                return dict(cp)
            await asyncio.sleep(0.1)
        raise AssertionError(f"no checkpoint covers sequence {sequence}")


@pytest.fixture
async def running(
    settings: Settings, provisioned: NatsClient, operator_headers: dict[str, str]
) -> AsyncIterator[Running]:
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://audit", headers=operator_headers) as http:
            yield Running(app, http, app.state.audit)


@pytest.fixture
async def served(
    settings: Settings, provisioned: NatsClient, operator_headers: dict[str, str]
) -> AsyncIterator[tuple[str, Running]]:
    """The app under a real uvicorn server (streaming responses need a real HTTP connection): its URL, and
    :class:`Running` with a client of it."""
    port = take_free_port()
    app = build_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", timeout_graceful_shutdown=10)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, headers=operator_headers) as http:
        try:
            yield url, Running(app, http, app.state.audit)
        finally:
            server.should_exit = True
            await task
