"""The scheduler's view of the world, folded from events: tasks, their executions, agents, hosts.

Every replica folds the same events (``evt.task.>``, ``evt.execution.>``, ``evt.agent.>``,
``evt.schedule.>``) in stream order into one :class:`Model`, so a replica that takes over the lease
— or a restarted one — has the queues and placements the previous leader had. An event is applied
at most once: each aggregate's version is remembered and older or repeated versions are ignored (the
leader applies its own appends at once and sees them again on the stream).

What is left to do from this state (the leader's chores) is derived in :mod:`symbi_scheduler.chores`.

No I/O here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from symbi_contracts.lifecycle.config import AgentConfig, ResourceLimits
from symbi_contracts.lifecycle.events import (
    AgentConfigured,
    AgentEvent,
    AgentFailed,
    AgentReady,
    AgentRegistered,
    AgentResumed,
    AgentStatus,
    AgentSuspended,
    AgentTaskAssigned,
    AgentTaskCompleted,
    AgentTerminated,
)
from symbi_contracts.sandbox_agent.events import (
    TERMINAL_TYPES,
    ExecutionAction,
    ExecutionEvent,
    ExecutionOutput,
    ExecutionPaused,
    ExecutionResumed,
    ExecutionStarted,
)
from symbi_contracts.sandbox_agent.risk import RiskAssessment
from symbi_contracts.scheduler.events import (
    ResourceRequest,
    TaskAssigned,
    TaskCancelled,
    TaskCompleted,
    TaskEvent,
    TaskPreempted,
    TaskResumed,
    TaskSubmitted,
    TaskSuspended,
)

from symbi_scheduler.core import (
    CRITICAL,
    AgingQueue,
    Entry,
    Host,
    Placer,
    PreemptMode,
    Running,
    Scheduler,
    Strategy,
    Verdict,
)
from symbi_scheduler.domain import LEVEL, PAUSE_REASONS, TaskStatus, effective_limits
from symbi_scheduler.risk import assess_agent
from symbi_scheduler.schedules import ScheduleEvent, ScheduleFired

#: The W3C trace context headers kept per task (the latest event's), so the leader's reactions continue it.
TRACE_HEADERS = ("traceparent", "tracestate")

_TERMINAL_TAGS = {t.__struct_config__.tag for t in TERMINAL_TYPES}


class HostInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A host's heartbeat in the ``HOSTS`` KV bucket (rewritten every second by its sandbox-agent)."""

    host_id: str
    cpu_cores: float
    memory_mb: int
    tiers: tuple[str, ...] = ()
    running: tuple[str, ...] = ()
    heartbeat_at: float | str = 0.0

    def heartbeat_s(self) -> float:
        """The heartbeat as Unix seconds (the value may be a number or an ISO 8601 time)."""
        if isinstance(self.heartbeat_at, str):
            try:
                return dt.datetime.fromisoformat(self.heartbeat_at.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return 0.0
        return float(self.heartbeat_at)


@dataclass(slots=True)
class Hold:
    """Resources one attempt holds on a host until its terminal execution event (or the host's loss)."""

    host_id: str
    cpu: float
    memory_mb: int
    paused: bool = False
    stopping: bool = False


@dataclass(slots=True)
class TaskRec:
    task_id: str
    agent_id: str
    priority: str
    input_size: int
    resources: ResourceRequest | None
    submitted_at: float
    submitted_by: str = ""
    schedule: str = ""
    status: TaskStatus = TaskStatus.QUEUED
    version: int = 0
    #: Stream sequence at which the task last entered the queue (submission, requeue, resume).
    queued_seq: int = 0
    denied_seq: int = 0
    attempt: int = 0
    host_id: str = ""
    tier: str = ""
    assigned_at: float = 0.0
    holds: dict[int, Hold] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)
    #: attempt -> (terminal event type, exit code, reason)
    ended: dict[int, tuple[str, int | None, str]] = field(default_factory=dict)
    #: Attempts the sandbox refused because the policy denied ``sandbox.start`` (a policy violation).
    refused_by_policy: set[int] = field(default_factory=set)
    exec_version: int = 0
    output_bytes: dict[str, int] = field(default_factory=dict)
    outcome: str = ""
    exit_code: int | None = None
    detail: str = ""
    finished_at: float = 0.0
    finished_seq: int = 0
    assigned_seq: int = 0
    #: Why a paused task is paused: ``preempted``, ``agent_suspended`` or ``action_denied``.
    pause_reason: str = ""
    decision: Any = None
    risk_score: float | None = None
    #: Stream sequences: the attempt last (re)started running (``task.assigned``/``task.resumed``), and
    #: the task was last paused in place (``task.suspended``).
    running_seq: int = 0
    paused_seq: int = 0
    #: The latest ``execution.action`` denied for the current attempt: its sequence and what it asked.
    action_denied_seq: int = 0
    action_denial: ExecutionAction | None = None
    #: Sequence of the latest ``execution.resumed`` of the current attempt.
    exec_resumed_seq: int = 0
    #: W3C trace headers of the task's latest event (task or execution): the trace its handling continues.
    trace: dict[str, str] = field(default_factory=dict)

    @property
    def level(self) -> int:
        return LEVEL[self.priority]


@dataclass(slots=True)
class AgentRec:
    agent_id: str
    config: AgentConfig | None = None
    status: AgentStatus | None = None
    version: int = 0
    current_task: str | None = None
    #: Stream sequences of its latest task assignment, suspension and resumption.
    assigned_seq: int = 0
    suspended_seq: int = 0
    resumed_seq: int = 0
    #: When it became Ready (its schedules count from here).
    enabled_at: float = 0.0
    assessment: RiskAssessment | None = None


class Model:
    """Tasks, agents and hosts as the events left them, plus the scheduling core over them."""

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
    ) -> None:
        self.tasks: dict[str, TaskRec] = {}
        self.agents: dict[str, AgentRec] = {}
        self.host_info: dict[str, HostInfo] = {}
        self.placer = Placer(strategy, reserve)
        self.queue = AgingQueue(aging_s)
        self.core = Scheduler(self.placer, self.queue, preemption, max_running=max_running)
        self.parked: dict[str, list[Entry]] = {}
        #: Tasks not yet completed or cancelled (the only ones chores look at).
        self.active: set[str] = set()
        #: agent id -> the task of ours that holds it (assigned or paused).
        self.busy: dict[str, str] = {}
        #: schedule aggregate (agent id) -> version; (agent id, schedule name) -> last fired instant (Unix s)
        self.schedule_versions: dict[str, int] = {}
        self.last_fired: dict[tuple[str, str], float] = {}
        #: Firings whose task is not submitted yet: task id -> (agent id, firing).
        self.fired_pending: dict[str, tuple[str, ScheduleFired]] = {}
        self.host_lost_after_s = host_lost_after_s
        self.default_tier = default_tier
        self.position = 0
        #: host id -> tasks holding resources there
        self._by_host: dict[str, set[str]] = {}
        #: Until this time a host we have no heartbeat from yet is not declared lost (start-up grace).
        self.grace_until = 0.0

    # --- folding ---------------------------------------------------------------------------------

    def apply(self, kind: str, aggregate_id: str, version: int, sequence: int, at: float, event: Any) -> bool:
        """Apply one verified event; False if it was applied before (or is out of order, which is ignored)."""
        self.position = max(self.position, sequence)
        if kind == "task":
            rec = self.tasks.get(aggregate_id)
            if (rec.version if rec else 0) + 1 != version:
                return False
            self._task(aggregate_id, event, sequence, at)
            return True
        if kind == "execution":
            task = self.tasks.get(aggregate_id)
            if task is None or task.exec_version + 1 != version:
                return False
            task.exec_version = version
            self._execution(task, event, sequence)
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

    def skip(self, kind: str, aggregate_id: str, version: int) -> None:
        """An event this build cannot read still takes its version (later ones must not look out of order)."""
        if kind == "execution" and aggregate_id in self.tasks:
            task = self.tasks[aggregate_id]
            task.exec_version = max(task.exec_version, version)
        elif kind == "agent":
            agent = self.agents.setdefault(aggregate_id, AgentRec(aggregate_id))
            agent.version = max(agent.version, version)

    def _task(self, task_id: str, event: TaskEvent, sequence: int, at: float) -> None:
        if isinstance(event, TaskSubmitted):
            rec = TaskRec(
                task_id=task_id,
                agent_id=event.agent_id,
                priority=event.priority,
                input_size=len(event.input),
                resources=event.resources,
                submitted_at=at,
                submitted_by=event.submitted_by,
                schedule=event.schedule,
                version=1,
                queued_seq=sequence,
            )
            self.tasks[task_id] = rec
            self.active.add(task_id)
            self.fired_pending.pop(task_id, None)
            self._enqueue(rec)
            return
        rec = self.tasks[task_id]
        rec.version += 1
        match event:
            case TaskAssigned():
                self.queue.remove(task_id)
                self._unpark_task(rec)
                rec.status, rec.assigned_seq, rec.running_seq = TaskStatus.ASSIGNED, sequence, sequence
                rec.attempt, rec.host_id, rec.tier, rec.assigned_at = event.attempt, event.host_id, event.tier, at
                rec.decision, rec.risk_score = event.decision, event.risk_score
                rec.holds[event.attempt] = Hold(event.host_id, event.limits.cpu_cores, event.limits.memory_mb)
                self.busy[rec.agent_id] = task_id
                self._sync_hold(rec, event.attempt)
            case TaskPreempted():
                rec.status, rec.queued_seq = TaskStatus.QUEUED, sequence
                hold = rec.holds.get(event.attempt)
                if hold is not None:
                    # Nothing will report the end of an attempt that never started or whose host is gone.
                    gone = event.reason == "host_lost" or event.attempt not in rec.started
                    if gone or event.attempt in rec.ended:
                        del rec.holds[event.attempt]
                    else:
                        hold.stopping = True
                self._sync_hold(rec, event.attempt)
                self._release_agent(rec)
                self._enqueue(rec)
            case TaskSuspended():
                if event.reason in PAUSE_REASONS:
                    rec.status, rec.pause_reason, rec.paused_seq = TaskStatus.PAUSED, event.reason, sequence
                    hold = rec.holds.get(event.attempt)
                    if hold is not None:
                        hold.paused = True
                    self._sync_hold(rec, event.attempt)
                else:
                    self.queue.remove(task_id)
                    self._unpark_task(rec)
                    rec.status, rec.denied_seq, rec.decision = TaskStatus.DENIED, sequence, event.decision
            case TaskResumed():
                if rec.status == TaskStatus.PAUSED:
                    rec.status, rec.running_seq = TaskStatus.ASSIGNED, sequence
                    hold = rec.holds.get(event.attempt)
                    if hold is not None:
                        hold.paused = False
                    self._sync_hold(rec, event.attempt)
                else:
                    rec.status, rec.queued_seq = TaskStatus.QUEUED, sequence
                    self._enqueue(rec)
            case TaskCompleted():
                rec.status, rec.outcome, rec.exit_code, rec.detail = (
                    TaskStatus.COMPLETED,
                    event.outcome,
                    event.exit_code,
                    event.detail,
                )
                rec.finished_at, rec.finished_seq = at, sequence
                self.active.discard(task_id)
                rec.holds.pop(event.attempt, None)
                self._sync_hold(rec, event.attempt)
                self.queue.remove(task_id)
                self._release_agent(rec)
            case TaskCancelled():
                rec.status, rec.outcome, rec.detail, rec.finished_at = (
                    TaskStatus.CANCELLED,
                    "cancelled",
                    event.reason,
                    at,
                )
                self.queue.remove(task_id)
                self._unpark_task(rec)
                self._release_agent(rec)

    def _execution(self, task: TaskRec, event: ExecutionEvent, sequence: int) -> None:
        attempt = getattr(event, "attempt", task.attempt) or task.attempt
        if isinstance(event, ExecutionAction):
            if event.outcome == "denied" and attempt == task.attempt:
                task.action_denied_seq, task.action_denial = sequence, event
        elif isinstance(event, ExecutionStarted):
            task.started.add(attempt)
        elif isinstance(event, ExecutionOutput):
            task.output_bytes[event.stream] = max(
                task.output_bytes.get(event.stream, 0), event.offset + len(event.data)
            )
        elif isinstance(event, ExecutionResumed):
            if attempt == task.attempt:
                task.exec_resumed_seq = sequence
        elif isinstance(event, ExecutionPaused):
            pass
        elif type(event).__struct_config__.tag in _TERMINAL_TAGS:
            kind = str(type(event).__struct_config__.tag)
            task.ended[attempt] = (kind, getattr(event, "exit_code", None), getattr(event, "reason", ""))
            decision = getattr(event, "decision", None)
            if getattr(event, "code", "") == "policy_denied" or getattr(decision, "effect", "") == "deny":
                task.refused_by_policy.add(attempt)
            hold = task.holds.get(attempt)
            if hold is not None and hold.stopping:  # a preempted attempt is gone: free its resources
                del task.holds[attempt]
                self._sync_hold(task, attempt)

    def _agent(self, agent: AgentRec, event: AgentEvent, sequence: int, at: float) -> None:
        match event:
            case AgentRegistered():
                agent.config, agent.status = event.config, AgentStatus.INITIALIZING
                agent.assessment = assess_agent(event.config, self.default_tier)
            case AgentReady():
                agent.status, agent.enabled_at = AgentStatus.READY, at
                if event.config is not None:  # the final config (compiled from a definition, capped by policy)
                    agent.config = event.config
                    agent.assessment = assess_agent(event.config, self.default_tier)
            case AgentConfigured():
                agent.config = event.config
                agent.assessment = assess_agent(event.config, self.default_tier)
            case AgentFailed():
                agent.status = AgentStatus.FAILED
            case AgentTaskAssigned():
                agent.status, agent.current_task, agent.assigned_seq = AgentStatus.RUNNING, event.task_id, sequence
            case AgentTaskCompleted():
                agent.status, agent.current_task = AgentStatus.READY, None
            case AgentSuspended():
                agent.status, agent.suspended_seq = AgentStatus.SUSPENDED, sequence
            case AgentResumed():
                agent.status, agent.resumed_seq = AgentStatus.RUNNING, sequence
            case AgentTerminated():
                agent.status, agent.current_task = AgentStatus.TERMINATED, None
        self._unpark_agent(agent.agent_id)

    def _schedule(self, agent_id: str, event: ScheduleEvent) -> None:
        if isinstance(event, ScheduleFired):
            key = (agent_id, event.schedule)
            self.last_fired[key] = max(self.last_fired.get(key, 0.0), event.fire_at)
            if event.task_id not in self.tasks:
                self.fired_pending[event.task_id] = (agent_id, event)

    # --- hosts -----------------------------------------------------------------------------------

    def host_seen(self, info: HostInfo) -> None:
        """A heartbeat from the ``HOSTS`` bucket."""
        self.host_info[info.host_id] = info
        host = self.placer.hosts.get(info.host_id)
        if host is None:
            host = Host(info.host_id, info.cpu_cores, info.memory_mb, frozenset(info.tiers))
            self.placer.upsert(host)
            self._recount(host)
        else:
            host.cpu_cores, host.memory_mb, host.tiers = info.cpu_cores, info.memory_mb, frozenset(info.tiers)

    def host_gone(self, host_id: str) -> None:
        """The host's key was deleted: it is treated as lost at once."""
        info = self.host_info.get(host_id)
        if info is not None:
            self.host_info[host_id] = msgspec.structs.replace(info, heartbeat_at=0.0)

    def check_hosts(self, now: float) -> None:
        """Mark hosts alive or lost by the age of their heartbeat."""
        for host_id, host in self.placer.hosts.items():
            info = self.host_info.get(host_id)
            if info is None:
                host.alive = now < self.grace_until
            else:
                host.alive = now - info.heartbeat_s() <= self.host_lost_after_s

    def _host(self, host_id: str) -> Host:
        host = self.placer.hosts.get(host_id)
        if host is None:  # placed before we saw a heartbeat (replay): it counts as lost until one arrives
            host = Host(host_id, 0.0, 0, frozenset())
            self.placer.upsert(host)
        return host

    def _holds_on(self, host_id: str) -> Iterator[tuple[TaskRec, int, Hold]]:
        for task_id in self._by_host.get(host_id, ()):
            rec = self.tasks[task_id]
            for attempt, hold in rec.holds.items():
                if hold.host_id == host_id:
                    yield rec, attempt, hold

    def _recount(self, host: Host) -> None:
        cpu = cpu_rel = 0.0
        mem = mem_rel = 0
        for _, _, hold in self._holds_on(host.host_id):
            mem += hold.memory_mb
            if not hold.paused:
                cpu += hold.cpu
            if hold.stopping:
                cpu_rel += hold.cpu
                mem_rel += hold.memory_mb
        host.cpu_used, host.memory_used, host.cpu_releasing, host.memory_releasing = cpu, mem, cpu_rel, mem_rel

    def _sync_hold(self, rec: TaskRec, attempt: int) -> None:
        """Bring host usage and the running set in line with ``rec``'s holds after a change."""
        hosts = {h.host_id for h in rec.holds.values()} | ({rec.host_id} if rec.host_id else set())
        for host_id in hosts:
            index = self._by_host.setdefault(host_id, set())
            if any(h.host_id == host_id for h in rec.holds.values()):
                index.add(rec.task_id)
            else:
                index.discard(rec.task_id)
            self._recount(self._host(host_id))
        current = rec.holds.get(rec.attempt)
        if current is not None and rec.status in (TaskStatus.ASSIGNED, TaskStatus.PAUSED):
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

    # --- queue -----------------------------------------------------------------------------------

    def limits_of(self, rec: TaskRec) -> ResourceLimits | None:
        agent = self.agents.get(rec.agent_id)
        if agent is None or agent.config is None:
            return None
        return effective_limits(agent.config.resources, rec.resources)

    def assessment_of(self, agent: AgentRec) -> RiskAssessment:
        if agent.assessment is None:
            agent.assessment = assess_agent(agent.config, self.default_tier)
        return agent.assessment

    def _enqueue(self, rec: TaskRec) -> None:
        agent = self.agents.get(rec.agent_id)
        limits = self.limits_of(rec)
        if agent is None or limits is None:
            return
        entry = Entry(
            rec.task_id,
            rec.agent_id,
            rec.level,
            rec.submitted_at,
            limits.cpu_cores,
            limits.memory_mb,
            self.assessment_of(agent).tier,
        )
        self.queue.push(entry)

    def _release_agent(self, rec: TaskRec) -> None:
        if self.busy.get(rec.agent_id) == rec.task_id:
            del self.busy[rec.agent_id]
            self._unpark_agent(rec.agent_id)

    def _unpark_agent(self, agent_id: str) -> None:
        for entry in self.parked.pop(agent_id, ()):
            rec = self.tasks.get(entry.task_id)
            if rec is not None and rec.status == TaskStatus.QUEUED:
                self.queue.push(entry)

    def _unpark_task(self, rec: TaskRec) -> None:
        parked = self.parked.get(rec.agent_id)
        if parked:
            self.parked[rec.agent_id] = [e for e in parked if e.task_id != rec.task_id]

    def park(self, entry: Entry) -> None:
        """Keep ``entry`` out of the queue until its agent's next event."""
        self.parked.setdefault(entry.agent_id, []).append(entry)

    def agent_verdict(self, entry: Entry) -> Verdict:
        """``take`` if the task's agent can start it now, else ``park`` it until the agent changes."""
        agent = self.agents.get(entry.agent_id)
        rec = self.tasks.get(entry.task_id)
        ok = (
            agent is not None
            and rec is not None
            and entry.agent_id not in self.busy
            and (
                agent.status == AgentStatus.READY
                or (
                    agent.status == AgentStatus.RUNNING
                    and agent.current_task == entry.task_id
                    and agent.assigned_seq > rec.queued_seq
                )
            )
        )
        if ok:
            return "take"
        self.park(entry)
        return "park"

    def depths(self) -> dict[str, int]:
        counts = dict.fromkeys(LEVEL, 0)
        for rec in self.tasks.values():
            if rec.status == TaskStatus.QUEUED:
                counts[rec.priority] += 1
        return counts

    def critical_waiting(self) -> bool:
        """Whether a critical task is queued (paused tasks then stay paused)."""
        return any(e.level >= CRITICAL for e in self.queue.entries.values())

    def release_lost_stopped(self) -> None:
        """Free what stopped attempts held on lost hosts: their end will never be reported."""
        for lost in [h for h in self.placer.hosts.values() if not h.alive]:
            for rec, attempt, hold in list(self._holds_on(lost.host_id)):
                if hold.stopping and attempt != rec.attempt:
                    del rec.holds[attempt]
                    self._sync_hold(rec, attempt)

    def holds_on(self, host_id: str) -> list[str]:
        """The tasks holding resources on ``host_id``."""
        return sorted(self._by_host.get(host_id, ()))
