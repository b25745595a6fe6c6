"""The scheduler's state, folded from events: tasks, their executions, agents, schedules, hosts (no I/O).

Every replica folds the same events (``evt.task.>``, ``evt.execution.>``, ``evt.agent.>``,
``evt.schedule.>``) in stream order into one :class:`Model`, so a replica that takes over the lease
— or a restarted one — has the queues and placements the previous leader had. An event is applied
at most once: each aggregate's version is remembered and older or repeated versions are ignored (the
leader applies its own appends at once and sees them again on the stream).

This is the one state of the replica: the leader decides on it and the API answers from it. Each task's
own state is folded by the task aggregate's pure ``apply`` (:mod:`symbi_scheduler.domain`), each agent's
schedule state by the schedule aggregate's (:mod:`symbi_scheduler.schedules`), the same functions the
write path checks commands against; the model adds only the indices over them (queue, running set,
host usage, busy agents; the queue-side ones and the admission rules in :mod:`symbi_scheduler.admission`).
What is left to do from it is derived in :mod:`symbi_scheduler.chores`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from symbi_contracts.lifecycle.events import AgentEvent
from symbi_contracts.sandbox_agent.events import TERMINAL_TYPES, ExecutionEvent
from symbi_contracts.scheduler.events import (
    TaskAssigned,
    TaskCancelled,
    TaskCompleted,
    TaskEvent,
    TaskPreempted,
    TaskResumed,
    TaskStopRequested,
    TaskSubmitted,
    TaskSuspended,
)

from symbi_scheduler.admission import Admission
from symbi_scheduler.capacity import Capacity
from symbi_scheduler.core import Placer, PreemptMode, Running, Scheduler, Strategy
from symbi_scheduler.domain import TaskStatus
from symbi_scheduler.domain import apply as apply_task
from symbi_scheduler.domain import initial as initial_task
from symbi_scheduler.quotas import QuotaLimits
from symbi_scheduler.records import (
    AgentRec,
    Hold,
    HostInfo,
    TaskRec,
    attempt_of,
    fold_agent,
    fold_execution,
    host_may_report,
)
from symbi_scheduler.schedules import SCHEDULE, ScheduleEvent, ScheduleFired, ScheduleState

__all__ = ["AgentRec", "Hold", "HostInfo", "Model", "TaskRec"]

#: The W3C trace context headers kept per task (the latest event's), so the leader's reactions continue it.
TRACE_HEADERS = ("traceparent", "tracestate")


def _nobody(task_id: str) -> None:
    """No query waits for any task (a model nobody serves queries from)."""


class Model(Admission):
    """Tasks, agents and hosts as the events left them, plus the scheduling core over them; what may start
    and where the rest waits is :class:`~symbi_scheduler.admission.Admission`'s."""

    def __init__(
        self,
        *,
        strategy: Strategy = "best_fit",
        reserve: float = 0.2,
        aging_s: float = 30.0,
        preemption: PreemptMode = "requeue",
        host_lost_after_s: float = 5.0,
        default_tier: str = "gvisor",
        max_running: int = 10_000,
        tenant_quotas: Mapping[str, QuotaLimits] | None = None,
    ) -> None:
        super().__init__(aging_s=aging_s, default_tier=default_tier, tenant_quotas=tenant_quotas)
        self.placer = Placer(strategy, reserve)
        #: The hosts: heartbeats, and what is held on each (their usage, on the placer's hosts).
        self.capacity = Capacity(self.placer, host_lost_after_s)
        self.core = Scheduler(self.placer, self.queue, preemption, max_running=max_running)
        #: agent id -> its schedule aggregate's state (the last instant each schedule fired for) and version
        self.schedules: dict[str, ScheduleState] = {}
        self.schedule_versions: dict[str, int] = {}
        #: Firings whose task is not submitted yet: task id -> (agent id, firing).
        self.fired_pending: dict[str, tuple[str, ScheduleFired]] = {}
        self.position = 0
        #: Told the id of each task an applied event changed (its own events or its execution's): the queries
        #: waiting for a task to change look again (:class:`symbi_scheduler.waiting.TaskChanges`).
        self.task_changed: Callable[[str], None] = _nobody

    # --- folding ---------------------------------------------------------------------------------

    def has(self, kind: str, aggregate_id: str, version: int, sequence: int) -> bool:
        """Whether the aggregate's ``version`` is applied already (an event this process appended and applied
        itself, coming back from the stream): then it moves the position to ``sequence`` and nothing else."""
        if kind == "task":
            rec = self.tasks.get(aggregate_id)
            applied = rec.version if rec else 0
        elif kind == "execution":
            task = self.tasks.get(aggregate_id)
            applied = task.exec_version if task else 0
        elif kind == "agent":
            agent = self.agents.get(aggregate_id)
            applied = agent.version if agent else 0
        else:
            applied = self.schedule_versions.get(aggregate_id, 0)
        if version < 1 or version > applied:
            return False
        self.position = max(self.position, sequence)
        return True

    def apply(self, kind: str, aggregate_id: str, version: int, sequence: int, at: float, event: Any) -> bool:
        """Apply one verified event; False if it was applied before (or is out of order, which is ignored)."""
        self.position = max(self.position, sequence)
        if kind == "task":
            rec = self.tasks.get(aggregate_id)
            if (rec.version if rec else 0) + 1 != version:
                return False
            self._task(aggregate_id, event, sequence, at)
            self.task_changed(aggregate_id)
            return True
        if kind == "execution":
            task = self.tasks.get(aggregate_id)
            if task is None or task.exec_version + 1 != version:
                return False
            task.exec_version = version
            self._execution(task, event, sequence)
            if isinstance(event, TERMINAL_TYPES) and event.usage.cpu_seconds > 0:
                self.cpu.record(task.agent_id, self.tenant_of(task.agent_id), at, event.usage.cpu_seconds)
            self.task_changed(aggregate_id)
            return True
        if kind == "agent":
            agent = self.agents.setdefault(aggregate_id, AgentRec(aggregate_id))
            if agent.version + 1 != version:
                return False
            agent.version = version
            self._agent(agent, event, sequence, at)
            return True
        if kind == "schedule":
            if self.schedule_versions.get(aggregate_id, 0) + 1 != version:
                return False
            self.schedule_versions[aggregate_id] = version
            self._schedule(aggregate_id, event)
            return True
        return False

    def note_trace(self, kind: str, aggregate_id: str, headers: Mapping[str, str] | None) -> None:
        """Remember the trace context a task's (or its execution's) newest event carries."""
        if kind not in ("task", "execution") or not headers or "traceparent" not in headers:
            return
        rec = self.tasks.get(aggregate_id)
        if rec is not None:
            rec.trace = {k: headers[k] for k in TRACE_HEADERS if k in headers}

    def signed_elsewhere(self, task_id: str, event: ExecutionEvent, signer_host: str | None) -> str | None:
        """Why an execution event signed by a key bound to sandbox host ``signer_host`` does not count: the attempt
        it reports on was placed on another host, or on none. None: it counts (or its key is the service's own,
        which every host of a deployment without host keys signs with)."""
        if signer_host is None:
            return None
        task = self.tasks.get(task_id)
        if task is None:
            return f"task {task_id} is not known"
        attempt = attempt_of(task, event)
        if host_may_report(task, attempt, signer_host):
            return None
        placed = task.attempt_hosts.get(attempt) or "no host"
        return f"attempt {attempt} of task {task_id} was placed on {placed}, not on {signer_host}"

    def skip(self, kind: str, aggregate_id: str, version: int) -> None:
        """An event this build cannot read still takes its version (later ones must not look out of order)."""
        if kind == "execution" and aggregate_id in self.tasks:
            task = self.tasks[aggregate_id]
            task.exec_version = max(task.exec_version, version)
        elif kind == "agent":
            agent = self.agents.setdefault(aggregate_id, AgentRec(aggregate_id))
            agent.version = max(agent.version, version)

    def _task(self, task_id: str, event: TaskEvent, sequence: int, at: float) -> None:
        """Fold the task's state with the aggregate's ``apply``, then bring the indices in line with it."""
        if isinstance(event, TaskSubmitted):
            rec = TaskRec(apply_task(initial_task(task_id), event), submitted_at=at, queued_seq=sequence)
            self.tasks[task_id] = rec
            self.active.add(task_id)
            self.fired_pending.pop(task_id, None)
            self._enqueue(rec)
            return
        rec = self.tasks[task_id]
        before = rec.status
        rec.version += 1
        rec.state = apply_task(rec.state, event)
        match event:
            case TaskStopRequested():
                hold = rec.holds.get(event.attempt)
                if hold is not None:  # its resources are released once the host reports the attempt's end
                    hold.stopping = True
                self._sync_hold(rec)
            case TaskAssigned():
                self.queue.remove(task_id)
                self._unpark_task(rec)
                rec.assigned_seq = rec.running_seq = sequence
                rec.assigned_at = at
                rec.holds[event.attempt] = Hold(event.host_id, event.limits.cpu_cores, event.limits.memory_mb)
                rec.attempt_hosts[event.attempt] = event.host_id
                self.busy[rec.agent_id] = task_id
                self._sync_hold(rec)
            case TaskPreempted():
                rec.queued_seq = sequence
                hold = rec.holds.get(event.attempt)
                if hold is not None:
                    # Nothing will report the end of an attempt that never started or whose host is gone.
                    gone = event.reason == "host_lost" or event.attempt not in rec.started
                    if gone or event.attempt in rec.ended:
                        del rec.holds[event.attempt]
                    else:
                        hold.stopping = True
                self._sync_hold(rec)
                self._release_agent(rec)
                self._enqueue(rec)
            case TaskSuspended():
                if rec.status == TaskStatus.PAUSED:
                    rec.paused_seq = sequence
                    self._set_paused(rec, event.attempt, paused=True)
                else:
                    self.queue.remove(task_id)
                    self._unpark_task(rec)
                    rec.denied_seq = sequence
            case TaskResumed():
                if before == TaskStatus.PAUSED:
                    rec.running_seq = sequence
                    self._set_paused(rec, event.attempt, paused=False)
                else:
                    rec.queued_seq = sequence
                    self._enqueue(rec)
            case TaskCompleted():
                rec.finished_at, rec.finished_seq = at, sequence
                self.active.discard(task_id)
                rec.holds.pop(event.attempt, None)
                self._sync_hold(rec)
                self.queue.remove(task_id)
                self._release_agent(rec)
            case TaskCancelled():
                rec.finished_at = at
                # A placed task is cancelled once its stopped attempt never started: nothing holds its resources.
                for attempt in [a for a in rec.holds if a in rec.ended or a not in rec.started]:
                    del rec.holds[attempt]
                self._sync_hold(rec)
                self.active.discard(task_id)
                self.queue.remove(task_id)
                self._unpark_task(rec)
                self._release_agent(rec)

    def _set_paused(self, rec: TaskRec, attempt: int, *, paused: bool) -> None:
        hold = rec.holds.get(attempt)
        if hold is not None:
            hold.paused = paused
        self._sync_hold(rec)

    def _execution(self, task: TaskRec, event: ExecutionEvent, sequence: int) -> None:
        ended = fold_execution(task, event, sequence)
        if ended is not None:
            hold = task.holds.get(ended)
            # A preempted attempt is gone: free its resources. (The current attempt of a placed task, one with
            # a stop request, keeps them until the task's own event says what became of it.)
            if hold is not None and hold.stopping and (ended != task.attempt or not task.state.placed):
                del task.holds[ended]
                self._sync_hold(task)

    def _agent(self, agent: AgentRec, event: AgentEvent, sequence: int, at: float) -> None:
        fold_agent(agent, event, sequence, at, self.default_tier)
        self._unpark_agent(agent.agent_id)
        self._undefer()  # its quota may have changed

    def _schedule(self, agent_id: str, event: ScheduleEvent) -> None:
        state = self.schedules.get(agent_id) or SCHEDULE.initial(agent_id)
        self.schedules[agent_id] = SCHEDULE.apply(state, event)
        if isinstance(event, ScheduleFired) and event.task_id not in self.tasks:
            self.fired_pending[event.task_id] = (agent_id, event)

    def last_fired(self, agent_id: str, schedule: str) -> float | None:
        """The last instant ``schedule`` of the agent fired for (None: never)."""
        state = self.schedules.get(agent_id)
        return state.last_fired.get(schedule) if state is not None else None

    # --- hosts -----------------------------------------------------------------------------------

    def host_seen(self, info: HostInfo, now: float) -> bool:
        """A heartbeat from the ``HOSTS`` bucket; whether it changes what placement sees (a new host, other
        capacity or tiers, a host not counted alive until now)."""
        return self.capacity.seen(info, now)

    def host_gone(self, host_id: str) -> None:
        """The host's key was deleted: it is treated as lost at once."""
        self.capacity.gone(host_id)

    def check_hosts(self, now: float) -> None:
        """Mark hosts alive or lost by the age of their heartbeat."""
        self.capacity.check(now)

    def _sync_hold(self, rec: TaskRec) -> None:
        """Bring host usage and the running set in line with ``rec``'s holds after a change."""
        self.capacity.recount_for(rec)
        current = rec.holds.get(rec.attempt)
        if current is not None and rec.state.placed:
            self.core.running[rec.task_id] = Running(
                rec.task_id,
                current.host_id,
                rec.level,
                rec.assigned_at,
                current.cpu,
                current.memory_mb,
                paused=current.paused,
                stopping=current.stopping,
            )
        else:
            self.core.running.pop(rec.task_id, None)

    def release_lost_stopped(self) -> None:
        """Free what stopped attempts held on lost hosts: their end will never be reported."""
        for lost in [h for h in self.placer.hosts.values() if not h.alive]:
            for rec, attempt, hold in list(self.capacity.holding(lost.host_id)):
                if hold.stopping and (attempt != rec.attempt or rec.state.finished):
                    del rec.holds[attempt]
                    self._sync_hold(rec)

    def holds_on(self, host_id: str) -> list[str]:
        """The tasks holding resources on ``host_id``."""
        return self.capacity.holds_on(host_id)
