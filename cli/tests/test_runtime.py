"""The local runtime as ``symbi up`` runs it: real nats-server, PostgreSQL and lifecycle processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from symbi_cli.runtime import LocalRuntime, RuntimeOptions
from symbi_cli.supervisor import RestartPolicy


async def _readyz(url: str) -> int:
    async with httpx.AsyncClient(timeout=2) as http:
        return (await http.get(f"{url}/readyz")).status_code


async def test_runtime_restarts_a_killed_service_and_stops_everything(
    runtime_home: Path, free_base_port: int, alive: Callable[[int], bool], mentioning: Callable[[str], list[int]]
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SYMBI_DATABASE_URL"}
    env["SYMBI_LOG_LEVEL"] = "warning"
    options = RuntimeOptions(
        home=runtime_home,
        services=["lifecycle"],
        base_port=free_base_port,
        nats_port=None,
        grace_period=5.0,
        restart=RestartPolicy(initial_backoff=0.1),
        env=env,
    )
    rt = LocalRuntime(options)
    try:
        await rt.start()
        await rt.wait_ready(timeout=30)
        assert rt.supervisor is not None
        url = rt.url_of("lifecycle")
        assert await _readyz(url) == 200
        state = json.loads(rt.state_file.read_text())
        first = state["services"]["lifecycle"]["pid"]
        nats_pid = state["nats"]["pid"]
        pg_pid = state["postgres"]["pid"]
        assert all(alive(p) for p in (first, nats_pid, pg_pid))

        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not (rt.supervisor.status("lifecycle").starts == 2 and rt.supervisor.status("lifecycle").ready):
            assert time.monotonic() < deadline, rt.supervisor.tail("lifecycle")
            await asyncio.sleep(0.05)
        second = rt.supervisor.status("lifecycle").pid
        assert second is not None
        assert second != first
        assert not alive(first)
        assert await _readyz(url) == 200
        assert json.loads(rt.state_file.read_text())["services"]["lifecycle"]["pid"] == second
    finally:
        await rt.stop()

    assert not alive(second)
    assert not alive(nats_pid)
    assert not alive(pg_pid)
    assert mentioning(str(runtime_home)) == []
    assert not rt.state_file.exists()
