"""The e2e benchmark's side of the runtime: tasks submitted to the scheduler's HTTP API, each one's events
watched as ``symbi task run`` follows a task, and its output fetched."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import nats
from _e2e_workload import COMMAND, IMAGE, INPUT, BenchError, Limits
from nats.js.api import DeliverPolicy
from symbi_common.eventstore import H_EVENT_TYPE
from symbi_common.nats_client import server_options


class TaskWatch:
    """When each watched task's events were stored: ordered JetStream consumers on ``evt.task.>`` and
    ``evt.execution.>`` (headers only), as ``symbi task run`` follows a task."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[float, str]]] = {}
        self.completed: dict[str, asyncio.Future[float]] = {}
        self.nc: Any = None

    async def start(self, nats_url: str) -> None:
        self.nc = await nats.connect(**server_options(nats_url), max_reconnect_attempts=0, connect_timeout=5)
        js = self.nc.jetstream()
        for subject in ("evt.task.>", "evt.execution.>"):
            await js.subscribe(
                subject, cb=self._on_event, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW, headers_only=True
            )

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    def expect(self, task_id: str) -> asyncio.Future[float]:
        self.events[task_id] = []
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.completed[task_id] = future
        return future

    def finish(self, task_id: str) -> list[tuple[float, str]]:
        self.completed.pop(task_id, None)
        return self.events.pop(task_id, [])

    async def _on_event(self, msg: Any) -> None:
        now = time.perf_counter()
        task_id = msg.subject.split(".", 2)[2]
        events = self.events.get(task_id)
        if events is None:
            return
        kind = (msg.headers or {}).get(H_EVENT_TYPE, "")
        events.append((now, kind))
        future = self.completed.get(task_id)
        if kind == "task.completed" and future is not None and not future.done():
            future.set_result(now)


@dataclass
class TaskTiming:
    total: float
    #: Seconds from the submit to the first time each event type was stored, plus "accepted" (the
    #: submit's HTTP reply) and "result" (the output fetched).
    marks: dict[str, float] = field(default_factory=dict)


class Ours:
    """Submits tasks through the scheduler's HTTP API and waits for each one's result."""

    def __init__(self, http: httpx.AsyncClient, watch: TaskWatch) -> None:
        self.http = http
        self.watch = watch
        self.output_retries = 0

    async def submit(self, agent_id: str, task_id: str) -> httpx.Response:
        body = {"agent_id": agent_id, "input": INPUT.decode(), "task_id": task_id}
        return await self.http.post("/v1/tasks", json=body, headers={"X-Submitted-By": "bench:e2e"})

    async def run(self, agent_id: str) -> TaskTiming:
        task_id = f"e2e-{uuid.uuid4().hex[:16]}"
        done = self.watch.expect(task_id)
        try:
            started = time.perf_counter()
            r = await self.submit(agent_id, task_id)
            accepted = time.perf_counter()
            if r.status_code != 201:
                raise BenchError(f"submit to {agent_id} refused ({r.status_code}): {r.text[:300]}")
            await asyncio.wait_for(done, 120)
            view = await self._output(task_id)
            took = time.perf_counter() - started
        finally:
            events = self.watch.finish(task_id)
        data = base64.b64decode(view["data_base64"])
        if view.get("outcome") != "succeeded" or data != INPUT:
            raise BenchError(f"task {task_id}: outcome {view.get('outcome')}, stdout {data[:80]!r}")
        marks = {"accepted": accepted - started, "result": took}
        for at, kind in events:
            marks.setdefault(kind, at - started)
        return TaskTiming(took, marks)

    async def _output(self, task_id: str) -> dict[str, Any]:
        """The task's stdout; asked again (briefly) if the scheduler has not applied the completion yet."""
        for _ in range(200):
            r = await self.http.get(f"/v1/tasks/{task_id}/output")
            if r.status_code != 200:
                raise BenchError(f"output of {task_id} ({r.status_code}): {r.text[:300]}")
            view: dict[str, Any] = r.json()
            if view.get("done"):
                return view
            self.output_retries += 1
            await asyncio.sleep(0.005)
        raise BenchError(f"task {task_id}: task.completed is stored but the scheduler's output is not done")

    async def warm_up(self, agent_id: str) -> None:
        """One task, retried while the scheduler does not know the freshly registered agent yet."""
        deadline = time.monotonic() + 60
        while True:
            try:
                await self.run(agent_id)
                return
            except BenchError as exc:
                if time.monotonic() > deadline or ("(404)" not in str(exc) and "(409)" not in str(exc)):
                    raise
                await asyncio.sleep(0.2)


async def register_agent(http: httpx.AsyncClient, agent_id: str, tier: str, limits: Limits) -> None:
    config = {
        "name": agent_id,
        "version": "1.0.0",
        "description": "the e2e benchmark's trivial workload: its result is its input",
        "security_tier": tier,
        "resources": limits.config(),
        "network_access": [],
        "workload": {"image": IMAGE, "command": list(COMMAND)},
    }
    r = await http.post("/v1/agents", json={"agent_id": agent_id, "config": config})
    if r.status_code != 201 or r.json().get("state") != "Ready":
        raise BenchError(f"registering {agent_id}: {r.status_code} {r.text[:400]}")
