"""The scheduler's metrics on ``/metrics`` and its part of a task's trace."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NatsClient
from schedkit import App, DenyAgents, FakeHost, eventually, register_agent, until_status
from symbi_common.streams import EVENTS_STREAM, read_subject
from symbi_common.telemetry import capture_spans, trace_id_of


async def test_metrics_count_tasks_by_outcome_queues_hosts_latencies_and_denials(
    lifecycle: App, start_scheduler: Any, hosts: Any, scrape_metrics: Any
) -> None:
    for agent in ("worker", "other", "shady"):
        await register_agent(lifecycle, agent)
    host: FakeHost = await hosts("h1", hold=True)
    point = DenyAgents("shady")
    async with start_scheduler(decisions=point) as scheduler:
        before = await scrape_metrics(scheduler.http)

        async def submit(agent: str, text: str) -> str:
            view = await scheduler.json("POST", "/v1/tasks", {"agent_id": agent, "input": text}, status=201)
            return str(view["task_id"])

        a = await submit("worker", "a")
        b = await submit("worker", "b")  # waits: the agent runs one task at a time
        c = await submit("other", "c")
        await host.wait_running(a)
        await host.wait_running(c)
        during = await scrape_metrics(scheduler.http)
        assert during.value("symbi_scheduler_running_tasks") == 2
        assert during.value("symbi_scheduler_queue_depth", priority="normal") == 1
        assert during.value("symbi_scheduler_queue_depth", priority="critical") == 0
        assert during.value("symbi_scheduler_hosts_known") == 1
        assert during.value("symbi_scheduler_hosts_live") == 1
        assert during.value("symbi_scheduler_leader") == 1
        assert during.since(before, "symbi_scheduler_submit_to_assign_seconds_count") == 2

        await scheduler.json("POST", f"/v1/tasks/{b}/cancel", {"reason": "not needed"})
        await host.finish(a)
        await host.finish(c, exit_code=3)
        d = await submit("shady", "d")
        await until_status(scheduler, a, "completed")
        await until_status(scheduler, c, "completed")
        await until_status(scheduler, d, "denied")
        after = await scrape_metrics(scheduler.http)
        assert after.since(before, "symbi_scheduler_tasks_total", outcome="succeeded") == 1
        assert after.since(before, "symbi_scheduler_tasks_total", outcome="failed") == 1
        assert after.since(before, "symbi_scheduler_tasks_total", outcome="cancelled") == 1
        assert after.since(before, "symbi_scheduler_allocate_denials_total") == 1
        assert after.since(before, "symbi_scheduler_submit_to_complete_seconds_count") == 2
        assert after.since(before, "symbi_scheduler_submit_to_complete_seconds_sum") > 0
        assert after.since(before, "symbi_scheduler_submit_to_assign_seconds_count") == 2
        assert after.value("symbi_scheduler_running_tasks") == 0
        assert after.value("symbi_scheduler_queue_depth", priority="normal") == 0
        assert after.value("symbi_scheduler_denied_tasks") == 1

    # A restarted replica rebuilds the gauges from the stream and counts no task a second time.
    async with start_scheduler(decisions=point) as again:
        await eventually(lambda: _leading(again))
        restarted = await scrape_metrics(again.http)
        assert restarted.value("symbi_scheduler_denied_tasks") == 1
        assert restarted.value("symbi_scheduler_hosts_known") == 1
        for outcome in ("succeeded", "failed", "cancelled"):
            assert restarted.since(before, "symbi_scheduler_tasks_total", outcome=outcome) == 1
        assert restarted.since(before, "symbi_scheduler_submit_to_complete_seconds_count") == 2


async def _leading(app: App) -> bool:
    return bool((await app.json("GET", "/v1/status"))["leader"])


def _trace_id(traceparent: str) -> str:
    return traceparent.split("-")[1]


async def test_a_task_is_one_trace_from_submission_through_the_sandbox_to_completion(
    lifecycle: App, start_scheduler: Any, hosts: Any, nc: NatsClient
) -> None:
    await register_agent(lifecycle, "worker")
    host: FakeHost = await hosts("h1")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with capture_spans() as spans:
        async with start_scheduler() as scheduler:
            r = await scheduler.http.post(
                "/v1/tasks",
                json={"agent_id": "worker", "input": "traced"},
                headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
            )
            assert r.status_code == 201, r.text
            task_id = r.json()["task_id"]
            await until_status(scheduler, task_id, "completed")
    stored = [m for batch in [b async for b in read_subject(nc, EVENTS_STREAM, f"evt.task.{task_id}")] for m in batch]
    types = [m.headers["Symbi-Event-Type"] for m in stored]
    assert types == ["task.submitted", "task.assigned", "task.completed"], types
    assert [_trace_id(m.headers["traceparent"]) for m in stored] == [trace_id] * 3
    # The work item carries it to the sandbox, whose events carry it back.
    assert _trace_id(host.work_headers[(task_id, 1)]["traceparent"]) == trace_id
    executions = [m for b in [x async for x in read_subject(nc, EVENTS_STREAM, f"evt.execution.{task_id}")] for m in b]
    assert executions
    assert {_trace_id(m.headers["traceparent"]) for m in executions} == {trace_id}
    # Each step is its own span of that trace: the submission, the placement, the sandbox, the completion.
    assert len({m.headers["traceparent"].split("-")[2] for m in stored}) == 3
    ours = {s.name for s in spans if trace_id_of(s) == trace_id}
    assert {"POST /v1/tasks", "scheduler.place", "sandbox.run", "scheduler.Complete"} <= ours, ours
