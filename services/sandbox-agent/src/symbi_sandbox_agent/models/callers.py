"""Who calls, as far as budgets go, and whether its task may still call at all.

The tenant and the agent's own budget come from the task's latest ``task.assigned`` (the scheduler copies them
from the agent's definition), never from the request. A caller may call while that assignment is to this host
and nothing has ended it since: the rule the write path starts a sandbox by (:func:`~symbi_sandbox_agent.tasks.
fold_task`, ``SandboxService.dispatch``). A task completed (failed runs complete too, ``task.completed`` says
how), cancelled or preempted, asked to stop (``task.stop_requested`` of its attempt: it is being stopped), or
assigned anew to another host (a later attempt), is refused, whatever was read before.

What a task's events said is cached with their tip, and every call reads only the events after that tip (one
direct get when there are none, as :class:`~.ledger.BudgetLedger` catches up with a budget day) and folds them
in: an end or a reassignment is seen by the next call, without reading the task's history again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from symbi_common.errors import InfrastructureError
from symbi_common.eventstore import EventStore, Recorded
from symbi_common.sealing import ChainTip
from symbi_contracts.scheduler.events import (
    AGGREGATE_TYPE,
    TaskCancelled,
    TaskCompleted,
    TaskPreempted,
    TaskStopRequested,
)

from symbi_sandbox_agent.egress.internal import Caller
from symbi_sandbox_agent.models.budget import TENANT, Limit
from symbi_sandbox_agent.models.errors import ModelDenied, ModelUnavailable
from symbi_sandbox_agent.tasks import TASK_CODEC, TaskEvent, fold_task


@dataclass(frozen=True, slots=True)
class Budgeted:
    """A caller with the tenant its budget counts against, its agent's own limit and the attempt it runs as."""

    agent_id: str
    task_id: str
    tenant: str
    limit: Limit
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class TaskSeen:
    """What a task's events said up to ``tip``: its agent, its latest assignment (attempt 0: none) and whether
    something ended it since (``ended``: the event that did, e.g. ``task.cancelled``; empty: nothing)."""

    agent_id: str
    attempt: int
    host_id: str
    tenant: str
    limit: Limit
    ended: str
    tip: ChainTip


def _ending(events: list[TaskEvent]) -> str:
    """The last event of ``events`` that ends a task, named for a refusal (``task.completed (failed)``)."""
    for event in reversed(events):
        if isinstance(event, TaskCompleted):
            return f"task.completed ({event.outcome[:40]})"
        if isinstance(event, TaskPreempted):
            return f"task.preempted ({event.reason[:40]})"
        if isinstance(event, TaskCancelled):
            return "task.cancelled"
        if isinstance(event, TaskStopRequested):
            return f"task.stop_requested ({event.reason[:40]})"
    return "ended"


def _stopped(events: list[TaskEvent], attempt: int) -> bool:
    """Whether ``events`` hold a stop request (cancel, preemption) of ``attempt``: its run may call no more."""
    return any(isinstance(e, TaskStopRequested) and e.attempt == attempt for e in events)


def seen_after(task_id: str, before: TaskSeen | None, records: list[Recorded[TaskEvent]]) -> TaskSeen | None:
    """``before`` with the events of ``records`` (those after its tip) folded in by :func:`fold_task`; None if
    there is still nothing to go by. Pure."""
    if not records:
        return before
    events = [r.event for r in records]
    view = fold_task(task_id, events)
    agent = before.agent_id if before is not None else ""
    tip = records[-1].tip
    if view.assigned is not None:  # a new assignment: what it says replaces what the earlier one said
        a = view.assigned
        limit = Limit(a.budget.tokens_per_day, a.budget.micro_usd_per_day)
        ended = _ending(events) if view.ended or view.stop is not None else ""
        return TaskSeen(agent or view.agent_id, a.attempt, a.host_id, a.tenant, limit, ended, tip)
    if before is None:
        return TaskSeen(view.agent_id, 0, "", "", Limit(), _ending(events) if view.ended else "", tip)
    ended = before.ended or (_ending(events) if view.ended or _stopped(events, before.attempt) else "")
    return TaskSeen(agent or view.agent_id, before.attempt, before.host_id, before.tenant, before.limit, ended, tip)


class CallerDirectory:
    """Reads (and follows) each task's tenant, agent budget and liveness for the callers of ``host_id``."""

    def __init__(self, store: EventStore, *, host_id: str, size: int = 4096) -> None:
        self.store = store
        self.host_id = host_id
        self.size = size
        self._known: OrderedDict[str, TaskSeen] = OrderedDict()

    async def of(self, caller: Caller) -> Budgeted:
        """:class:`ModelDenied` for a caller whose task is not this agent's, not assigned to this host, ended
        (completed, failed, cancelled, preempted) or of another tenant; :class:`ModelUnavailable` if the task's
        events cannot be read now."""
        task_id = caller.task_id
        before = self._known.get(task_id)
        try:
            records = await self.store.load(
                AGGREGATE_TYPE, task_id, TASK_CODEC, after=before.tip if before is not None else None
            )
        except InfrastructureError as exc:
            raise ModelUnavailable(f"the events of task {task_id} cannot be read now: {exc}", retry_after=1.0) from exc
        seen = seen_after(task_id, before, records)
        if seen is None:
            raise ModelDenied(f"task {task_id} is not a running task of agent {caller.agent_id}")
        self._remember(task_id, seen)
        return self._admit(caller, seen)

    def _remember(self, task_id: str, seen: TaskSeen) -> None:
        known = self._known.get(task_id)
        if known is None or known.tip.sequence <= seen.tip.sequence:  # a slower concurrent read never goes back
            self._known[task_id] = seen
        self._known.move_to_end(task_id)
        while len(self._known) > self.size:
            self._known.popitem(last=False)

    def _admit(self, caller: Caller, seen: TaskSeen) -> Budgeted:
        task_id, agent = caller.task_id, caller.agent_id
        if seen.attempt == 0 or seen.agent_id != agent:
            raise ModelDenied(f"task {task_id} is not a running task of agent {agent}")
        if seen.ended:
            raise ModelDenied(
                f"task {task_id} of agent {agent} is over (attempt {seen.attempt}: {seen.ended}); "
                "its runs may no longer call models"
            )
        if seen.host_id != self.host_id:
            raise ModelDenied(
                f"task {task_id} of agent {agent} is now attempt {seen.attempt} on host {seen.host_id[:64]}; "
                f"its run on host {self.host_id} is no longer the current one and may not call models"
            )
        if caller.attempt != seen.attempt:
            raise ModelDenied(
                f"task {task_id} of agent {agent} is now attempt {seen.attempt}; the run of attempt {caller.attempt}"
                " is no longer the current one and may not call models"
            )
        if not TENANT.match(seen.tenant):
            raise ModelDenied(f"the tenant {seen.tenant[:80]!r} of agent {agent} is not a valid tenant name")
        if caller.tenant != seen.tenant and caller.tenant != "default":
            raise ModelDenied(f"the caller's tenant {caller.tenant!r} is not its agent's ({seen.tenant!r})")
        return Budgeted(agent, task_id, seen.tenant, seen.limit, seen.attempt)
