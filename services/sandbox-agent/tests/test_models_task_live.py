"""The model gateway refuses the calls of a task that is over or no longer this host's, although what the task's
events said before is cached: the scheduler's ``task.completed`` (a failed run too), ``task.cancelled``,
``task.preempted``, or a ``task.assigned`` of a later attempt on another host, written after a first call, refuse
the next one. Each call reads only the task's events after the cached tip. Real NATS (the task's events, signed as
the scheduler writes them), real Cedar, a real HTTPS provider."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from symbi_common.decisions import DecisionRecord
from symbi_common.eventstore import EventStore
from symbi_contracts.lifecycle.config import AgentBudget, Workload
from symbi_contracts.scheduler.events import CODEC as TASKS
from symbi_contracts.scheduler.events import (
    TaskAssigned,
    TaskCancelled,
    TaskCompleted,
    TaskEvent,
    TaskPreempted,
    TaskStopRequested,
)
from symbi_sandbox_agent.models.gateway import ModelGateway

from .conftest import IMAGE, Agent, limits
from .models_support import assign, body_of, caller, chat, gateway, models_settings, post
from .test_models_gateway import Upstream, daemon, model_settings, upstream

__all__ = ["daemon", "model_settings", "upstream"]  # fixtures, used by name

BUDGET = AgentBudget(tokens_per_day=100_000)


def assigned(host_id: str, attempt: int) -> TaskAssigned:
    decision = DecisionRecord(action="task.allocate", effect="allow", policy_version=0)
    return TaskAssigned(
        host_id=host_id,
        tier="tier1",
        risk_score=0.1,
        risk_factors={},
        workload=Workload(image=IMAGE, command=("true",)),
        limits=limits(),
        attempt=attempt,
        decision=decision,
        budget=BUDGET,
    )


@pytest.fixture
async def gw(daemon: Agent, upstream: Upstream) -> AsyncIterator[ModelGateway]:
    built = gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca))
    yield built
    await built.aclose()


async def record(store: EventStore, task_id: str, *events: TaskEvent) -> None:
    """Append ``events`` to the task as the scheduler does (after what it holds)."""
    tip = (await store.load("task", task_id, TASKS))[-1].tip
    await store.append("task", task_id, list(events), TASKS, expected=tip)


async def call(gw: ModelGateway, task_id: str, attempt: int = 1) -> tuple[int, dict[str, Any]]:
    who = dataclasses.replace(caller(task_id), attempt=attempt)
    answer = await gw.handle(who, post("/v1/chat/completions", chat()))
    return answer.status, json.loads(await body_of(answer))


@pytest.mark.parametrize(
    ("ending", "named"),
    [
        (TaskCompleted(outcome="failed", attempt=1, detail="exit 1"), "task.completed (failed)"),
        (TaskCompleted(outcome="exited", attempt=1, exit_code=0), "task.completed (exited)"),
        (TaskCancelled(reason="withdrawn by the test"), "task.cancelled"),
        (TaskPreempted(host_id="", attempt=1, reason="host_lost"), "task.preempted (host_lost)"),
        # A stop request: the run is being stopped (or never starts), so it calls no more models meanwhile.
        (TaskStopRequested(host_id="", attempt=1, reason="cancelled"), "task.stop_requested (cancelled)"),
        (TaskStopRequested(host_id="", attempt=1, reason="preempted"), "task.stop_requested (preempted)"),
    ],
)
async def test_a_task_that_is_over_may_no_longer_call_models(
    daemon: Agent, upstream: Upstream, gw: ModelGateway, make_store: Any, ending: TaskEvent, named: str
) -> None:
    """A first call is allowed (and what the task's events said is cached); once the task is over the next call
    is refused as denied, saying why, before anything is reserved or sent. Before, the cached entry let the ended
    task's workload go on calling on its agent's budget."""
    scheduler = await make_store("scheduler")
    task = await assign(scheduler, daemon.host_id, budget=BUDGET)
    status, _ = await call(gw, task)
    assert status == 200
    await record(scheduler, task, ending)
    status, body = await call(gw, task)
    assert status == 403, body
    assert body["error"]["code"] == "denied"
    assert f"task {task} of agent agent-1 is over (attempt 1: {named})" in body["error"]["message"]
    assert upstream.provider.calls == 1
    await gw.drain()
    assert (await gw.ledger.state("default")).usage[("agent-1", "test/small")].calls == 1  # none reserved since


async def test_a_task_assigned_anew_elsewhere_may_no_longer_call_models_here(
    daemon: Agent, upstream: Upstream, gw: ModelGateway, make_store: Any
) -> None:
    """The task's host was lost and its next attempt runs on another host: the run here is not the current one
    and is refused. Assigned back to this host (a later attempt again), only that attempt's run may call: the
    first run, still stopping here, is refused."""
    scheduler = await make_store("scheduler")
    task = await assign(scheduler, daemon.host_id, budget=BUDGET)
    assert (await call(gw, task))[0] == 200
    await record(
        scheduler,
        task,
        TaskPreempted(host_id=daemon.host_id, attempt=1, reason="host_lost"),
        assigned("host-elsewhere", 2),
    )
    status, body = await call(gw, task)
    assert status == 403, body
    message = body["error"]["message"]
    assert f"is now attempt 2 on host host-elsewhere; its run on host {daemon.host_id} is no longer" in message
    await record(
        scheduler,
        task,
        TaskPreempted(host_id="host-elsewhere", attempt=2, reason="host_lost"),
        assigned(daemon.host_id, 3),
    )
    status, body = await call(gw, task)
    assert status == 403, body
    assert "is now attempt 3; the run of attempt 1 is no longer the current one" in body["error"]["message"]
    assert (await call(gw, task, attempt=3))[0] == 200
    assert upstream.provider.calls == 2


class CountingLoads:
    """The event store, counting the task events each load returned and where it started."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.loads: list[tuple[int, int]] = []  # (after sequence, events returned)

    async def load(self, aggregate_type: str, aggregate_id: str, codec: Any, *, after: Any = None) -> Any:
        records = await self.store.load(aggregate_type, aggregate_id, codec, after=after)
        if aggregate_type == "task":
            self.loads.append((after.sequence if after is not None else 0, len(records)))
        return records


async def test_each_call_reads_only_the_task_events_after_the_cached_tip(
    daemon: Agent, upstream: Upstream, gw: ModelGateway, make_store: Any
) -> None:
    """The cache keeps its cost: the first call reads the task's two events, later ones only what came after
    (nothing, until the task ends: then that one event)."""
    counting = CountingLoads(gw.callers.store)
    gw.callers.store = counting  # type: ignore[assignment]
    scheduler = await make_store("scheduler")
    task = await assign(scheduler, daemon.host_id, budget=BUDGET)
    for _ in range(3):
        assert (await call(gw, task))[0] == 200
    await record(scheduler, task, TaskCancelled(reason="withdrawn"))
    assert (await call(gw, task))[0] == 403
    assert (await call(gw, task))[0] == 403
    (first, _), *_ = counting.loads
    assert first == 0
    assert [n for _, n in counting.loads] == [2, 0, 0, 1, 0]
    assert all(after > 0 for after, _ in counting.loads[1:])
