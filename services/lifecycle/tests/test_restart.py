"""Crash recovery of the real service process: ``kill -9`` in the middle of a burst, restart, compare.

After the restart every agent's state rebuilt from the stream (a fresh ``Repository.load``) must
equal the read model, every agent's projected history must be exactly its stream history (versions
1..n, no duplicates, no gaps), and every write that was acknowledged before the kill must be there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from symbi_common.aggregate import Repository
from symbi_common.operator_tokens import bearer_header, issue_local_token
from symbi_fixtures.runtimes import take_free_port
from symbi_lifecycle.domain import AGENT

from .conftest import service_env
from .test_api import GOOD

AGENTS = 16
CYCLE = [
    ("assign-task", {"task_id": "job"}),
    ("suspend", {"reason": "policy violation"}),
    ("resume", {}),
    ("complete-task", {}),
]


class ServiceProcess:
    """``python -m symbi_lifecycle`` as a child process, like production."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {**os.environ, **env}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "symbi_lifecycle"], env=self.env, stdout=fh, stderr=subprocess.STDOUT
            )

    async def wait_ready(self, http: httpx.AsyncClient, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"service not ready in {timeout} s: {self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def test_kill_9_mid_burst_then_restart_rebuilds_consistently(
    nats_url: str, database_url: str, keys_dir: Path, tmp_path: Path, make_store: Any, js: Any
) -> None:
    port = take_free_port()
    service = ServiceProcess(service_env(nats_url, database_url, keys_dir, port), tmp_path / "service.log")
    headers = bearer_header(issue_local_token(keys_dir))
    acknowledged: dict[str, int] = {}  # agent id -> highest aggregate version a reply confirmed
    done = 0
    enough = asyncio.Event()

    async def burst(http: httpx.AsyncClient, agent_id: str) -> None:
        nonlocal done
        r = await http.post("/v1/agents", json={"agent_id": agent_id, "config": GOOD})
        assert r.status_code == 201, r.text
        acknowledged[agent_id] = r.json()["aggregate_version"]
        for i in range(200):
            action, body = CYCLE[i % len(CYCLE)]
            r = await http.post(f"/v1/agents/{agent_id}/{action}", json=body)
            assert r.status_code == 200, r.text
            acknowledged[agent_id] = r.json()["aggregate_version"]
            done += 1
            if done >= 150:
                enough.set()

    service.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=headers) as http:
            await service.wait_ready(http)
            tasks = [asyncio.create_task(burst(http, f"agent-{n:02d}")) for n in range(AGENTS)]
            await asyncio.wait_for(enough.wait(), 60)
            service.kill9()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            # Every burst was cut short by the kill (transport errors), none finished or failed otherwise.
            assert all(isinstance(r, httpx.TransportError) for r in results), results

        service.start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=headers) as http:
            await service.wait_ready(http)
            info = await js.stream_info("EVENTS", subjects_filter="evt.agent.>")
            per_subject: dict[str, int] = dict(info.state.subjects or {})
            last = info.state.last_seq
            page = (await http.get("/v1/agents", params={"min_sequence": last, "limit": 500})).json()
            assert {a["id"] for a in page["items"]} == {s.removeprefix("evt.agent.") for s in per_subject}
            assert set(acknowledged) <= {a["id"] for a in page["items"]}

            repo = Repository(await make_store("lifecycle"), AGENT)
            total = 0
            for view in page["items"]:
                agent_id = view["id"]
                loaded = await repo.load(agent_id, fresh=True)
                state = loaded.state
                assert state.status is not None
                assert view["state"] == state.status.value
                assert view["current_task"] == state.current_task
                assert view["tasks_completed"] == state.tasks_completed
                assert view["suspension_reason"] == state.suspension_reason
                assert view["aggregate_version"] == loaded.tip.version
                assert view["sequence"] == loaded.tip.sequence
                assert loaded.tip.version >= acknowledged.get(agent_id, 0)  # no acknowledged write lost

                events = (await http.get(f"/v1/agents/{agent_id}/events", params={"limit": 500})).json()["items"]
                assert [e["aggregate_version"] for e in events] == list(range(1, loaded.tip.version + 1))
                assert len(events) == per_subject[f"evt.agent.{agent_id}"]
                total += len(events)
            assert total == sum(per_subject.values())
            assert sum(acknowledged.values()) > 150
    finally:
        service.stop()
