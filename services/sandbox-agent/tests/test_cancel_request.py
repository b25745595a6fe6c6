"""A task attempt with a stop request (``task.stop_requested``: cancelled or preempted) never starts on its host.

The scheduler records the request before it asks the host to stop the run, and the daemon reads the task again
once the run is listed as its own, just before it starts it: a request made while the task was being checked is
seen then (the attempt is refused), or finds the run listed when the host is asked to stop it.
"""

from __future__ import annotations

from typing import Any

from symbi_common.decisions import DecisionRecord
from symbi_contracts.lifecycle.config import ResourceLimits, Workload
from symbi_contracts.sandbox_agent.events import ExecutionRefused, ExecutionStarted
from symbi_contracts.scheduler.events import CODEC as TASKS
from symbi_contracts.scheduler.events import (
    STOP_REFUSED,
    TaskAssigned,
    TaskPreempted,
    TaskStopRequested,
    TaskSubmitted,
)
from symbi_sandbox_agent.domain import WorkItem
from symbi_sandbox_agent.tasks import TASK_CODEC, fold_task

from .conftest import Agent, Scheduler, containers_of


async def _request_stop(scheduler: Scheduler, task_id: str, host_id: str, attempt: int = 1) -> None:
    """Append the scheduler's stop request of ``attempt`` to the task (after what ``submit`` appended)."""
    stop = TaskStopRequested(
        attempt=attempt, host_id=host_id, reason="cancelled", requested_by="ops", detail="wrong input"
    )
    recs = await scheduler.store.append("task", task_id, [stop], TASKS, expected=scheduler.tips[task_id])
    scheduler.tips[task_id] = recs[-1].tip


async def test_an_attempt_cancelled_before_its_host_took_it_is_refused_and_never_starts(
    agent: Agent, scheduler: Scheduler, docker_client: Any
) -> None:
    task_id = await scheduler.submit(agent.host_id, ["sh", "-c", "echo ran"], publish=False)
    await _request_stop(scheduler, task_id, agent.host_id)
    await scheduler.publish(agent.host_id, task_id, 1)
    result = await scheduler.result(task_id)
    assert not result.of(ExecutionStarted)
    refused = result.terminal
    assert isinstance(refused, ExecutionRefused)
    assert (refused.attempt, refused.code) == (1, STOP_REFUSED)
    assert "cancelled by ops" in refused.reason
    assert "wrong input" in refused.reason
    assert not containers_of(docker_client, agent.host_id)


async def test_a_stop_requested_while_the_host_was_checking_the_task_is_seen_before_it_starts(
    agent: Agent, scheduler: Scheduler, docker_client: Any
) -> None:
    """The daemon read the task before the request was made (as it does when it takes the work item) and checked
    it; it reads the task again before it starts the run, so the run never starts (before, it ran to its end)."""
    task_id = await scheduler.submit(agent.host_id, ["sh", "-c", "echo ran"], publish=False)
    read_before = await scheduler.store.load("task", task_id, TASK_CODEC)
    await _request_stop(scheduler, task_id, agent.host_id)
    service = agent.daemon.service
    assert await service.dispatch(WorkItem(task_id=task_id, attempt=1), read_before)
    assert task_id not in service.running
    events = await scheduler.events(task_id)
    assert [type(e) for e in events] == [ExecutionRefused]
    assert (events[0].attempt, events[0].code) == (1, STOP_REFUSED)
    assert not containers_of(docker_client, agent.host_id)


async def test_a_stop_request_of_an_earlier_attempt_does_not_hold_back_the_next_one(
    agent: Agent, scheduler: Scheduler
) -> None:
    """Attempt 1 was stopped for a preemption and the task requeued: attempt 2 runs."""
    task_id = await scheduler.submit(agent.host_id, ["sh", "-c", "echo ran"], publish=False)
    preempt = TaskStopRequested(attempt=1, host_id=agent.host_id, reason="preempted", by_task="t-critical")
    requeued = TaskPreempted(host_id=agent.host_id, attempt=1, reason="preempted", by_task="t-critical")
    recs = await scheduler.store.append("task", task_id, [preempt, requeued], TASKS, expected=scheduler.tips[task_id])
    scheduler.tips[task_id] = recs[-1].tip
    await scheduler.submit(agent.host_id, ["sh", "-c", "echo ran"], task_id=task_id, attempt=2)
    result = await scheduler.result(task_id)
    assert result.outcome == "execution.exited"
    assert result.stdout == b"ran\n"
    assert [e.attempt for e in result.of(ExecutionStarted)] == [2]


def test_the_fold_keeps_the_stop_request_of_the_latest_assignment_only() -> None:
    submitted = TaskSubmitted(agent_id="a1", input=b"", priority="normal")
    first = _assigned(1)
    stop = TaskStopRequested(attempt=1, host_id="h1", reason="cancelled", requested_by="ops")
    assert fold_task("t1", [submitted, first]).stop is None
    view = fold_task("t1", [submitted, first, stop])
    assert view.stop == stop
    assert not view.ended
    again = fold_task("t1", [submitted, first, stop, TaskPreempted(host_id="h1", attempt=1, reason="x"), _assigned(2)])
    assert again.stop is None
    assert not again.ended
    late = TaskStopRequested(attempt=1, host_id="h1", reason="cancelled")
    assert fold_task("t1", [submitted, first, _assigned(2), late]).stop is None  # about an earlier attempt


def _assigned(attempt: int) -> TaskAssigned:
    return TaskAssigned(
        host_id="h1",
        tier="tier1",
        risk_score=0.1,
        risk_factors={},
        workload=Workload(image="symbi/busybox:1", command=("true",)),
        limits=ResourceLimits(),
        attempt=attempt,
        decision=DecisionRecord(action="task.allocate", effect="allow", policy_version=0),
    )
