"""The records the scheduler's state keeps per task, agent and host, and how each event changes one (no I/O).

A task's own state (status, attempt, host, outcome …) is the task aggregate's :class:`~symbi_scheduler.domain.TaskState`,
folded with the same :func:`~symbi_scheduler.domain.apply` the write path uses: it is derived once. What
:class:`TaskRec` adds is only what the task's events cannot say by themselves: where in the stream they
were (the leader compares sequences across aggregates), when, and what its execution's events reported.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import msgspec
from symbi_common.decisions import DecisionRecord
from symbi_contracts.lifecycle.config import AgentConfig
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
    TERMINAL_TAGS,
    ExecutionAction,
    ExecutionEvent,
    ExecutionResumed,
    ExecutionStarted,
    output_chunks,
)
from symbi_contracts.sandbox_agent.risk import RiskAssessment
from symbi_contracts.scheduler.events import STOP_REFUSED, ResourceRequest

from symbi_scheduler.domain import LEVEL, TaskState, TaskStatus
from symbi_scheduler.risk import assess_agent


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
    """One task: its aggregate state plus stream positions and its execution's facts."""

    state: TaskState
    submitted_at: float
    version: int = 1
    #: Stream sequences: the task last entered the queue (submission, requeue, resume), was denied placement,
    #: was assigned, last (re)started running (``task.assigned``/``task.resumed``), was last paused in place,
    #: and finished.
    queued_seq: int = 0
    denied_seq: int = 0
    assigned_seq: int = 0
    running_seq: int = 0
    paused_seq: int = 0
    finished_seq: int = 0
    assigned_at: float = 0.0
    finished_at: float = 0.0
    holds: dict[int, Hold] = field(default_factory=dict)
    #: attempt -> the host it was placed on (``task.assigned``): only that host's key may report on it.
    attempt_hosts: dict[int, str] = field(default_factory=dict)
    # --- what the execution's events (``execution.<task_id>``) reported -------------------------------
    exec_version: int = 0
    started: set[int] = field(default_factory=set)
    #: attempt -> (terminal event type, exit code, reason)
    ended: dict[int, tuple[str, int | None, str]] = field(default_factory=dict)
    #: Attempts the sandbox refused because the policy denied ``sandbox.start`` (a policy violation).
    refused_by_policy: set[int] = field(default_factory=set)
    #: Attempts the sandbox did not start because a stop was requested for them (they never ran).
    refused_for_stop: set[int] = field(default_factory=set)
    output_bytes: dict[str, int] = field(default_factory=dict)
    #: The latest ``execution.action`` denied for the current attempt: its sequence and what it asked.
    action_denied_seq: int = 0
    action_denial: ExecutionAction | None = None
    #: Sequence of the latest ``execution.resumed`` of the current attempt.
    exec_resumed_seq: int = 0
    #: W3C trace headers of the task's latest event (task or execution): the trace its handling continues.
    trace: dict[str, str] = field(default_factory=dict)

    # The task's own fields, all read from its aggregate state (never kept a second time).

    @property
    def task_id(self) -> str:
        return self.state.task_id

    @property
    def status(self) -> TaskStatus:
        status = self.state.status
        if status is None:  # pragma: no cover - a record exists only from task.submitted on
            raise AssertionError(f"task {self.state.task_id} has no status")
        return status

    @property
    def agent_id(self) -> str:
        return self.state.agent_id

    @property
    def priority(self) -> str:
        return self.state.priority

    @property
    def level(self) -> int:
        return LEVEL[self.state.priority]

    @property
    def resources(self) -> ResourceRequest | None:
        return self.state.resources

    @property
    def schedule(self) -> str:
        return self.state.schedule

    @property
    def submitted_by(self) -> str:
        return self.state.submitted_by

    @property
    def attempt(self) -> int:
        return self.state.attempt

    @property
    def host_id(self) -> str:
        return self.state.host_id

    @property
    def tier(self) -> str:
        return self.state.tier

    @property
    def risk_score(self) -> float | None:
        return self.state.risk_score

    @property
    def decision(self) -> DecisionRecord | None:
        return self.state.decision

    @property
    def pause_reason(self) -> str:
        return self.state.pause_reason

    @property
    def outcome(self) -> str:
        return self.state.outcome

    @property
    def exit_code(self) -> int | None:
        return self.state.exit_code

    @property
    def detail(self) -> str:
        return self.state.detail

    @property
    def executing(self) -> bool:
        """Assigned, and its current attempt has started and not ended on its host."""
        return self.status == TaskStatus.ASSIGNED and self.attempt in self.started and self.attempt not in self.ended


def host_may_report(task: TaskRec, attempt: int, signer_host: str | None) -> bool:
    """Whether an execution event about ``attempt`` of ``task`` signed by a key bound to sandbox host
    ``signer_host`` counts: a host's own key speaks only for the attempts placed on that host. The service's key
    (``signer_host`` None), which every host of a deployment without host keys signs with, speaks for any."""
    return signer_host is None or task.attempt_hosts.get(attempt) == signer_host


def attempt_of(task: TaskRec, event: ExecutionEvent) -> int:
    """The attempt an execution event reports on (the task's current one if the event names none)."""
    return getattr(event, "attempt", task.attempt) or task.attempt


def fold_execution(task: TaskRec, event: ExecutionEvent, sequence: int) -> int | None:
    """Note what an execution event reports; the attempt it ended (None if it ended none)."""
    attempt = attempt_of(task, event)
    for chunk in output_chunks(event):  # an execution.output, or the tail of a terminal event
        task.output_bytes[chunk.stream] = max(task.output_bytes.get(chunk.stream, 0), chunk.offset + len(chunk.data))
    if isinstance(event, ExecutionAction):
        if event.outcome == "denied" and attempt == task.attempt:
            task.action_denied_seq, task.action_denial = sequence, event
    elif isinstance(event, ExecutionStarted):
        task.started.add(attempt)
    elif isinstance(event, ExecutionResumed):
        if attempt == task.attempt:
            task.exec_resumed_seq = sequence
    elif type(event).__struct_config__.tag in TERMINAL_TAGS:
        kind = str(type(event).__struct_config__.tag)
        task.ended[attempt] = (kind, getattr(event, "exit_code", None), getattr(event, "reason", ""))
        decision = getattr(event, "decision", None)
        if getattr(event, "code", "") == STOP_REFUSED:
            task.refused_for_stop.add(attempt)
        elif getattr(event, "code", "") == "policy_denied" or getattr(decision, "effect", "") == "deny":
            task.refused_by_policy.add(attempt)
        return attempt
    return None  # execution.output, execution.paused (and anything newer): nothing the scheduler acts on


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


def fold_agent(agent: AgentRec, event: AgentEvent, sequence: int, at: float, default_tier: str) -> None:
    """Note what an agent event changes about the agent (its config is assessed once per config)."""
    match event:
        case AgentRegistered():
            agent.config, agent.status = event.config, AgentStatus.INITIALIZING
            agent.assessment = assess_agent(event.config, default_tier)
        case AgentReady():
            agent.status, agent.enabled_at = AgentStatus.READY, at
            if event.config is not None:  # the final config (compiled from a definition, capped by policy)
                agent.config = event.config
                agent.assessment = assess_agent(event.config, default_tier)
        case AgentConfigured():
            agent.config = event.config
            agent.assessment = assess_agent(event.config, default_tier)
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
