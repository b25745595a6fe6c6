"""``GET /v1/tasks``: the scheduler's tasks from its one state — queued by priority, running, finished —
filtered by state and agent, behind the operator token like every other route."""

from __future__ import annotations

from typing import Any

import httpx
from schedkit import App, FakeHost, eventually, register_agent


async def _ids(s: App, **params: Any) -> list[str]:
    page = await s.json("GET", "/v1/tasks?" + "&".join(f"{k}={v}" for k, v in params.items()))
    return [t["task_id"] for t in page["items"]]


async def test_tasks_are_listed_by_state_priority_and_agent(lifecycle: App, start_scheduler: Any, hosts: Any) -> None:
    await register_agent(lifecycle, "worker")
    await register_agent(lifecycle, "other")
    async with start_scheduler() as s:  # no host yet: every task stays queued
        for task_id, agent, priority in (
            ("w-low", "worker", "low"),
            ("w-normal-1", "worker", "normal"),
            ("o-critical", "other", "critical"),
            ("w-normal-2", "worker", "normal"),
            ("w-high", "worker", "high"),
            ("w-gone", "worker", "high"),
        ):
            body = {"agent_id": agent, "task_id": task_id, "priority": priority}
            await s.json("POST", "/v1/tasks", body, status=201)
        await s.json("POST", "/v1/tasks/w-gone/cancel", {"reason": "not needed"})

        assert await _ids(s, state="queued") == ["o-critical", "w-high", "w-normal-1", "w-normal-2", "w-low"]
        assert await _ids(s, state="queued", agent="worker") == ["w-high", "w-normal-1", "w-normal-2", "w-low"]
        assert await _ids(s, state="finished") == ["w-gone"]
        assert await _ids(s, state="running") == []
        everything = await s.json("GET", "/v1/tasks")
        assert [t["task_id"] for t in everything["items"]][-1] == "w-gone"  # queued first, finished last
        assert everything["total"] == 6
        first = await s.json("GET", "/v1/tasks?state=queued&limit=2")
        assert [t["task_id"] for t in first["items"]] == ["o-critical", "w-high"]
        assert first["total"] == 5
        assert first["items"][0]["status"] == "queued"
        assert first["items"][0]["wait_reason"] == "no sandbox host is alive"  # the same view as GET /v1/tasks/{id}
        assert await _ids(s, agent="nobody") == []

        for query, field in (("state=done", "state"), ("limit=0", "limit"), ("limit=100000", "limit")):
            r = await s.http.get(f"/v1/tasks?{query}")
            assert r.status_code == 422, r.text
            assert r.json()["error"]["details"]["field"] == field
        assert (await s.http.get("/v1/tasks?limit=ten")).status_code == 400

        # A host that holds what it runs: the first placed task of each agent runs, the rest stay queued.
        host: FakeHost = await hosts("h1", hold=True)

        async def running() -> list[str]:
            ids = await _ids(s, state="running")
            return ids if len(ids) == 2 else []

        placed = await eventually(running)
        assert sorted(placed) == sorted(host.running)
        assert "o-critical" in placed
        assert "w-high" in placed  # the worker's highest-priority task went first
        queued = await _ids(s, state="queued")
        assert queued == ["w-normal-1", "w-normal-2", "w-low"]


async def test_the_task_list_needs_an_operator_token(lifecycle: App, start_scheduler: Any) -> None:
    async with start_scheduler() as s:
        transport = httpx.ASGITransport(app=s.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://scheduler") as anonymous:
            r = await anonymous.get("/v1/tasks")
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthenticated"


async def _all_pages(s: App, query: str, limit: int) -> list[str]:
    ids: list[str] = []
    after = ""
    for _ in range(100):
        page = await s.json("GET", f"/v1/tasks?{query}&limit={limit}" + (f"&after={after}" if after else ""))
        ids += [t["task_id"] for t in page["items"]]
        if page["next_after"] is None:
            return ids
        after = page["next_after"]
    raise AssertionError("paging did not end")


async def test_the_task_list_pages_with_a_cursor(lifecycle: App, start_scheduler: Any) -> None:
    await register_agent(lifecycle, "worker")
    async with start_scheduler() as s:  # no host: every task stays queued
        priorities = ("low", "normal", "high", "critical")
        for n in range(11):
            body = {"agent_id": "worker", "task_id": f"t-{n:02}", "priority": priorities[n % 4]}
            await s.json("POST", "/v1/tasks", body, status=201)
        for n in (3, 8):
            await s.json("POST", f"/v1/tasks/t-{n:02}/cancel", {"reason": "not needed"})

        whole = await _ids(s, state="queued", limit=1000)
        assert len(whole) == 9
        for limit in (1, 2, 4, 9):
            assert await _all_pages(s, "state=queued", limit) == whole
        assert await _all_pages(s, "state=finished", 1) == await _ids(s, state="finished")
        everything = await _ids(s, limit=1000)
        assert await _all_pages(s, "agent=worker", 3) == everything  # across states too

        first = await s.json("GET", "/v1/tasks?state=queued&limit=4")
        assert first["total"] == 9
        assert first["next_after"]
        # A task on the first page leaves the queue: the next page starts where the first ended anyway.
        await s.json("POST", f"/v1/tasks/{whole[1]}/cancel", {"reason": "changed my mind"})
        second = await s.json("GET", f"/v1/tasks?state=queued&limit=4&after={first['next_after']}")
        assert [t["task_id"] for t in second["items"]] == whole[4:8]
        last = await s.json("GET", f"/v1/tasks?state=queued&limit=4&after={second['next_after']}")
        assert [t["task_id"] for t in last["items"]] == whole[8:]
        assert last["next_after"] is None

        for after in ("nonsense", first["next_after"] + "x"):
            r = await s.http.get(f"/v1/tasks?state=queued&after={after}")
            assert r.status_code == 422, r.text
            assert r.json()["error"]["details"]["field"] == "after"
        r = await s.http.get(f"/v1/tasks?state=running&after={first['next_after']}")  # a cursor of another state
        assert r.status_code == 422, r.text
