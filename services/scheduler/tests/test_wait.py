"""Waiting for a task instead of asking again: ``?wait=`` on a task and on its output, over HTTP and NATS."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from nats.aio.client import Client as NatsClient
from schedkit import App, register_agent, until_status
from symbi_common.commands import CommandClient


async def _submit(s: App, task_id: str) -> None:
    await s.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "hi", "task_id": task_id}, status=201)


async def test_a_query_with_wait_answers_when_the_task_ends(
    lifecycle: App, start_scheduler: Any, hosts: Any, nc: NatsClient
) -> None:
    """The reply comes once the task has ended (well before ``wait``), and is then the ended task and its whole
    output; no client asks twice. Over NATS the same."""
    await register_agent(lifecycle, "worker")
    await hosts("h1", delay=1.0)
    client = CommandClient(nc, timeout=20.0)
    async with start_scheduler() as s:
        await _submit(s, "t-get")
        started = time.monotonic()
        view = await s.json("GET", "/v1/tasks/t-get?wait=15")
        assert view["status"] == "completed"
        assert time.monotonic() - started < 10

        # The output: each answer comes once there is more of it or the task has ended; a client follows it to
        # the end in a request per change (the output, then the end), not in a loop of polls.
        await _submit(s, "t-out")
        got, after, asked = b"", 0, 0
        while True:
            page = await s.json("GET", f"/v1/tasks/t-out/output?after={after}&wait=15")
            asked += 1
            got, after = got + base64.b64decode(page["data_base64"]), page["next_offset"]
            if page["done"]:
                break
        assert got == b"HI"
        assert asked <= 3

        await _submit(s, "t-nats")
        view = await client.call("scheduler", "get", {"task_id": "t-nats", "wait": 15}, dict)
        assert view["status"] == "completed"


async def test_a_query_with_wait_answers_after_wait_when_nothing_changes(
    lifecycle: App, start_scheduler: Any, hosts: Any
) -> None:
    """A task that goes on running is answered as it is once ``wait`` has passed, and several queries wait at
    once without holding each other up."""
    await register_agent(lifecycle, "worker")
    await hosts("h1", hold=True)
    async with start_scheduler() as s:
        await _submit(s, "t-held")
        await until_status(s, "t-held", "assigned")
        started = time.monotonic()
        views = await asyncio.gather(
            s.json("GET", "/v1/tasks/t-held?wait=1"),
            s.json("GET", "/v1/tasks/t-held?wait=2"),
            s.json("GET", "/v1/tasks/t-held/output?wait=1"),
        )
        took = time.monotonic() - started
        assert [views[0]["status"], views[1]["status"]] == ["assigned", "assigned"]
        assert views[2]["done"] is False
        assert 2 <= took < 6


async def test_a_wait_out_of_bounds_is_refused_at_once(lifecycle: App, start_scheduler: Any) -> None:
    await register_agent(lifecycle, "worker")
    async with start_scheduler() as s:  # no host: the task stays queued
        await _submit(s, "t-q")
        for path, status in (
            ("/v1/tasks/t-q?wait=31", 422),
            ("/v1/tasks/t-q/output?wait=-1", 422),
            ("/v1/tasks/t-q?wait=soon", 400),
        ):
            started = time.monotonic()
            r = await s.http.get(path)
            assert r.status_code == status, (path, r.text)
            assert r.json()["error"]["details"]["field"] == "wait"
            assert time.monotonic() - started < 1
        r = await s.http.get("/v1/tasks/ghost?wait=5")
        assert r.status_code == 404
