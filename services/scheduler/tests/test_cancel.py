"""Cancelling a placed task: the answer is never "done" while the task may still run."""

from __future__ import annotations

from typing import Any

import pytest
import symbi_scheduler.application as application
from schedkit import App, FakeHost, register_agent, until_status
from symbi_scheduler.domain import CancelPending


async def test_a_cancel_while_the_host_is_still_starting_the_task_stops_it(
    lifecycle: App, start_scheduler: Any, hosts: Any
) -> None:
    await register_agent(lifecycle, "worker")
    host: FakeHost = await hosts("h1", hold=True, starting=1.5)
    async with start_scheduler() as s:
        task_id = (await s.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "x"}, status=201))["task_id"]
        await until_status(s, task_id, "assigned")
        await s.json("POST", f"/v1/tasks/{task_id}/cancel", {"reason": "not needed"})
        # The host did not know the run when first asked; it was asked again until it stopped it.
        assert task_id not in host.running
        done = await until_status(s, task_id, "completed")
        assert done["outcome"] == "killed"
        assert host.commands.count(("terminate", task_id)) >= 2


async def test_a_cancel_the_host_cannot_confirm_is_a_retryable_error(
    lifecycle: App, start_scheduler: Any, hosts: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(application, "CANCEL_WAIT_S", 1.0, raising=False)
    await register_agent(lifecycle, "worker")
    await hosts("h1", hold=True, starting=30.0)
    async with start_scheduler() as s:
        task_id = (await s.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "x"}, status=201))["task_id"]
        await until_status(s, task_id, "assigned")
        r = await s.http.post(f"/v1/tasks/{task_id}/cancel", json={"reason": "not needed"})
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == CancelPending.code
        assert "cancel it again" in error["message"]
        assert (await s.json("GET", f"/v1/tasks/{task_id}"))["status"] == "assigned"
