"""Cancelling a task: who asked and why is recorded on the task, and a placed task's run is stopped or never starts."""

from __future__ import annotations

from typing import Any

from schedkit import App, FakeHost, register_agent, task_events, until_status
from symbi_contracts.scheduler.events import TaskCancelled, TaskCompleted, TaskStopRequested
from symbi_scheduler.domain import CancelPending


async def test_a_cancel_while_the_host_is_still_starting_the_task_is_recorded_and_the_run_never_starts(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    """The host does not know the run yet when asked to stop it; the stop request recorded first makes it refuse
    the attempt once it has checked it, so the task ends cancelled without ever running."""
    await register_agent(lifecycle, "worker")
    host: FakeHost = await hosts("h1", hold=True, starting=1.5)
    async with start_scheduler() as s:
        task_id = (await s.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "x"}, status=201))["task_id"]
        await until_status(s, task_id, "assigned")
        view = await s.json("POST", f"/v1/tasks/{task_id}/cancel", {"reason": "not needed"})
        assert (view["status"], view["stopping"]) == ("assigned", "cancelled")
        done = await until_status(s, task_id, "cancelled")
        assert (done["outcome"], done["detail"]) == ("cancelled", "not needed")
    assert host.started == []
    assert host.refused_for_stop == [(task_id, 1)]
    events = await task_events(await make_store("scheduler"), task_id)
    stops = [e for e in events if isinstance(e, TaskStopRequested)]
    assert [(e.attempt, e.host_id, e.reason, e.detail) for e in stops] == [(1, "h1", "cancelled", "not needed")]
    assert stops[0].requested_by
    cancelled = [e for e in events if isinstance(e, TaskCancelled)]
    assert [(e.reason, e.cancelled_by) for e in cancelled] == [("not needed", stops[0].requested_by)]
    assert not [e for e in events if isinstance(e, TaskCompleted)]


async def test_a_cancelled_run_on_a_host_that_ignores_the_request_is_stopped_and_completes_as_killed(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    """A host that starts the attempt anyway (it does not read stop requests) is asked again until it stopped
    the run; the task completes as killed, the stop request saying who asked and why."""
    await register_agent(lifecycle, "worker")
    host: FakeHost = await hosts("h1", hold=True, starting=0.5, honours_stop=False)
    async with start_scheduler() as s:
        task_id = (await s.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "x"}, status=201))["task_id"]
        await until_status(s, task_id, "assigned")
        await s.json("POST", f"/v1/tasks/{task_id}/cancel", {"reason": "wrong input"})
        done = await until_status(s, task_id, "completed", timeout=15.0)
        assert done["outcome"] == "killed"
    assert host.started == [(task_id, 1)]
    assert task_id not in host.running
    assert host.commands.count(("terminate", task_id)) >= 2
    events = await task_events(await make_store("scheduler"), task_id)
    assert [(e.reason, e.detail) for e in events if isinstance(e, TaskStopRequested)] == [("cancelled", "wrong input")]


async def test_a_cancel_the_host_does_not_answer_is_retryable_and_the_run_is_still_stopped(
    lifecycle: App, start_scheduler: Any, hosts: Any
) -> None:
    """No answer from the host: the caller gets a retryable error, and the recorded request is carried out all
    the same (before, nothing asked the host again and the task ran on)."""
    await register_agent(lifecycle, "worker")
    host: FakeHost = await hosts("h1", hold=True, fail_once=("terminate",))
    async with start_scheduler() as s:
        task_id = (await s.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "x"}, status=201))["task_id"]
        await host.wait_running(task_id)
        r = await s.http.post(f"/v1/tasks/{task_id}/cancel", json={"reason": "not needed"})
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == CancelPending.code
        done = await until_status(s, task_id, "completed", timeout=15.0)
        assert done["outcome"] == "killed"
        assert "the cancel is recorded" in error["message"]
    assert task_id not in host.running
    assert host.commands.count(("terminate", task_id)) == 2


async def test_a_cancel_of_a_task_that_ended_changes_nothing(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    await register_agent(lifecycle, "worker")
    host: FakeHost = await hosts("h1")
    async with start_scheduler() as s:
        task_id = (await s.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "x"}, status=201))["task_id"]
        assert (await until_status(s, task_id, "completed"))["outcome"] == "succeeded"
        store = await make_store("scheduler")
        before = await task_events(store, task_id)
        r = await s.http.post(f"/v1/tasks/{task_id}/cancel", json={"reason": "too late"})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "task_finished"
        assert (await s.json("GET", f"/v1/tasks/{task_id}"))["outcome"] == "succeeded"
    assert await task_events(store, task_id) == before
    assert ("terminate", task_id) not in host.commands
