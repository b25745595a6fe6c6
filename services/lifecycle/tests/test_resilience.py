"""The service rides out a nats-server restart: commands, the projection and readiness recover."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from symbi_cli.nats_server import NatsServer
from symbi_cli.provisioning import provision_nats_async
from symbi_common.operator_tokens import bearer_header, issue_local_token
from symbi_common.settings import load_settings
from symbi_fixtures.runtimes import take_free_port
from symbi_lifecycle.main import build_app

from .conftest import service_env
from .test_api import GOOD


async def _ready(http: httpx.AsyncClient, timeout: float = 20.0) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + timeout
    body: dict[str, object] = {}
    while asyncio.get_running_loop().time() < deadline:
        r = await http.get("/readyz")
        body = r.json()
        if r.status_code == 200:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"not ready again: {body}")


async def test_nats_server_restart(tmp_path: Path, database_url: str, keys_dir: Path) -> None:
    port = take_free_port()
    store = tmp_path / "nats"
    server = NatsServer(store, port=port, log_file=tmp_path / "nats.log").start()
    await provision_nats_async(server.url)
    try:
        app = build_app(load_settings(env=service_env(server.url, database_url, keys_dir)))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://lifecycle",
                headers=bearer_header(issue_local_token(keys_dir)),
            ) as http,
        ):
            await _ready(http)
            r = await http.post("/v1/agents", json={"agent_id": "before", "config": GOOD})
            assert r.status_code == 201, r.text

            server.stop()
            await asyncio.sleep(0.5)
            down = await http.get("/readyz")
            assert down.status_code == 503
            assert down.json()["checks"]["nats"] is False
            server = NatsServer(store, port=port, log_file=tmp_path / "nats2.log").start()

            await _ready(http)
            r = await http.post("/v1/agents/before/assign-task", json={"task_id": "t1"})
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "Running"
            r = await http.post("/v1/agents", json={"agent_id": "after", "config": GOOD})
            assert r.status_code == 201, r.text
            seq = r.json()["sequence"]
            got = await http.get("/v1/agents/after", params={"min_sequence": seq})
            assert got.status_code == 200, got.text
            assert got.json()["state"] == "Ready"
            before = await http.get("/v1/agents/before", params={"min_sequence": seq})
            assert before.json()["state"] == "Running"
            history = (await http.get("/v1/agents/before/events")).json()["items"]
            assert [e["type"] for e in history] == ["agent.registered", "agent.ready", "agent.task_assigned"]
    finally:
        server.stop()
