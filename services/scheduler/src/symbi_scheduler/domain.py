"""The task aggregate (``task.<task_id>``): events, state and the pure ``decide``/``apply`` functions.

A task's life, as its events tell it::

    task.submitted ─► task.assigned ─► task.completed            (outcome from the terminal execution event)
         ▲   │            │   │
         │   │            │   └─► task.preempted (requeued) ──► back to the queue, attempt + 1
         │   │            └─────► task.suspended (paused in place) ─► task.resumed (runs on) ─► …
         │   │                      reason ``preempted``: room for critical work, resumed when there is CPU
         │   │                      reason ``agent_suspended``: the agent was suspended while it ran
         │   │                      reason ``action_denied``: the policy denied a request of the workload
         │   │                        (the sandbox froze it; the agent is suspended; resumed once the agent
         │   │                        is resumed and the sandbox allows the request on a second look)
         │   └──────────────────► task.suspended (``task.allocate`` denied; the agent is suspended too)
         │                             └─► task.resumed (the agent's policy violation was cleared) ─┐
         └──────────────────────────────────────────────────────────────────────────────────────────┘
    queued or denied ─► task.cancelled
    assigned or paused ─► task.stop_requested (cancelled)  ─► its attempt's end is reported ─►
                               task.completed (as it ended: ``killed``), or task.cancelled if it never started
    assigned ─► task.stop_requested (preempted, for critical work) ─► its attempt's end is reported ─►
                               task.preempted (requeued)

A stop request comes before the host is asked to stop the attempt: the sandbox-agent never starts an attempt
with one, so the task keeps its place (and its host's resources) until the host reports the attempt's end,
and nothing can run it again while the old attempt may still be starting or running.

No I/O here: :mod:`symbi_scheduler.application` loads and appends through a repository.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import ClassVar

import msgspec
from symbi_common.caps import lower_to_caps
from symbi_common.decisions import DecisionRecord
from symbi_common.domain import AggregateType
from symbi_common.errors import AlreadyExists, DomainError, InfrastructureError, NotFound, ValidationError
from symbi_common.ids import ID_RE
from symbi_common.key_names import agent_data_key
from symbi_contracts.lifecycle.config import CPU_CORES, EXECUTION_TIMEOUT_S, MEMORY_MB, PRIORITIES, ResourceLimits
from symbi_contracts.scheduler.events import (
    AGGREGATE_TYPE,
    CODEC,
    MAX_INPUT_BYTES,
    STOP_REASONS,
    ResourceRequest,
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

#: A task id is one NATS subject token (it names ``evt.task.<id>`` and ``evt.execution.<id>``).
TASK_ID_RE = ID_RE

LEVEL: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}
CRITICAL = LEVEL["critical"]

TIERS = ("tier1", "tier2")
#: Outcomes of ``task.completed``: the terminal execution event's kind, or ``lost`` with the host.
OUTCOMES = ("succeeded", "failed", "timed_out", "oom_killed", "killed", "refused", "lost")


class TaskError(DomainError):
    """Root of the scheduler's domain errors."""

    code = "task_error"


class TaskNotAssignable(TaskError):
    """The task cannot be given to its agent (no workload, agent not ready, or the task is finished)."""

    code = "task_not_assignable"
    http_status = 409


class CancelPending(InfrastructureError):
    """A cancel could not be confirmed: the task's host did not answer the stop of its run. The stop request is
    recorded (the run never starts if it has not yet) and the host is asked again; the run may still go on until
    it answers. Cancel it again to ask now."""

    code = "cancel_pending"
    http_status = 503


class TaskFinished(TaskError):
    """The task already completed or was cancelled; nothing can change it any more."""

    code = "task_finished"
    http_status = 409

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(f"task {task_id} is {status}; it cannot change any more", task_id=task_id, status=status)


class TaskStatus(enum.StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    PAUSED = "paused"  # suspended in place (cgroup freezer): preempted, agent suspended, or action denied
    DENIED = "denied"  # task.allocate denied: waits for the agent's policy violation to be cleared
    COMPLETED = "completed"
    CANCELLED = "cancelled"


FINISHED = (TaskStatus.COMPLETED, TaskStatus.CANCELLED)

#: ``task.suspended`` reasons that pause a placed task in place; ``policy_denied`` parks an unplaced one.
PAUSE_REASONS = ("preempted", "agent_suspended", "action_denied")


def check_request(request: ResourceRequest | None) -> list[str]:
    """Problems with a resource request (empty if it is fine), each naming its field."""
    if request is None:
        return []
    problems = []
    for field, value, (lo, hi) in (
        ("resources.cpu_cores", request.cpu_cores, CPU_CORES),
        ("resources.memory_mb", request.memory_mb, MEMORY_MB),
        ("resources.execution_timeout_s", request.execution_timeout_s, EXECUTION_TIMEOUT_S),
    ):
        if value is not None and not lo <= value <= hi:
            problems.append(f"{field}: must be between {lo:g} and {hi:g}, got {value:g}")
    return problems


def effective_limits(agent: ResourceLimits, request: ResourceRequest | None) -> ResourceLimits:
    """The limits a task runs with: its request where given, capped by the agent's own limits.

    The same rule as a policy's ``cap_resources`` (:func:`symbi_common.caps.lower_to_caps`): the agent's
    limits lowered to what the task asks for, never raised."""
    if request is None:
        return agent
    asked = {name: value for name, value in msgspec.structs.asdict(request).items() if value is not None}
    return lower_to_caps(agent, asked)


# --- state -----------------------------------------------------------------------------------------


class TaskState(msgspec.Struct, frozen=True, kw_only=True):
    """A task as its events left it; ``status`` is None until it is submitted. Snapshot-able.

    This is the one derivation of a task's state from its events: the write path checks commands against
    it and the replica's model (what the leader decides on and what the API shows) keeps one per task,
    folded with the same :func:`apply`. Fields are added with defaults only (snapshots stay readable)."""

    task_id: str
    status: TaskStatus | None = None
    agent_id: str = ""
    priority: str = "normal"
    resources: ResourceRequest | None = None
    schedule: str = ""
    submitted_by: str = ""
    input_size: int = 0
    attempt: int = 0
    #: The host of the latest assignment (kept after a preemption: the attempt may still hold resources there).
    host_id: str = ""
    tier: str = ""
    risk_score: float | None = None
    #: The decision record of the latest assignment, or of the ``task.allocate`` denial.
    decision: DecisionRecord | None = None
    #: Why the task was last paused in place: ``preempted``, ``agent_suspended`` or ``action_denied``.
    pause_reason: str = ""
    outcome: str = ""
    exit_code: int | None = None
    detail: str = ""
    #: The stop request of the current attempt (cancelled or preempted), if one was made.
    stop: TaskStopRequested | None = None

    @property
    def exists(self) -> bool:
        return self.status is not None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def placed(self) -> bool:
        """Assigned to a host or paused there: the current attempt holds resources on ``host_id``."""
        return self.status in (TaskStatus.ASSIGNED, TaskStatus.PAUSED)


def initial(task_id: str) -> TaskState:
    return TaskState(task_id=task_id)


def apply(state: TaskState, event: TaskEvent) -> TaskState:
    """The state after ``event``. Pure."""
    r = msgspec.structs.replace
    match event:
        case TaskSubmitted():
            return TaskState(
                task_id=state.task_id,
                status=TaskStatus.QUEUED,
                agent_id=event.agent_id,
                priority=event.priority,
                resources=event.resources,
                schedule=event.schedule,
                submitted_by=event.submitted_by,
                input_size=len(event.input),
            )
        case TaskAssigned():
            return r(
                state,
                status=TaskStatus.ASSIGNED,
                attempt=event.attempt,
                host_id=event.host_id,
                tier=event.tier,
                risk_score=event.risk_score,
                decision=event.decision,
                stop=None,
            )
        case TaskStopRequested():
            return r(state, stop=event)
        case TaskPreempted():
            return r(state, status=TaskStatus.QUEUED, stop=None)
        case TaskSuspended():
            if event.reason in PAUSE_REASONS:
                return r(state, status=TaskStatus.PAUSED, pause_reason=event.reason)
            return r(state, status=TaskStatus.DENIED, decision=event.decision)
        case TaskResumed():
            return r(state, status=TaskStatus.ASSIGNED if state.status == TaskStatus.PAUSED else TaskStatus.QUEUED)
        case TaskCompleted():
            return r(
                state,
                status=TaskStatus.COMPLETED,
                outcome=event.outcome,
                exit_code=event.exit_code,
                detail=event.detail,
                decision=event.decision if event.decision is not None else state.decision,
            )
        case TaskCancelled():
            return r(state, status=TaskStatus.CANCELLED, outcome="cancelled", detail=event.reason)
    raise AssertionError(f"unknown event {event!r}")  # pragma: no cover - the union is exhaustive


def agent_outcome(task_outcome: str) -> str:
    """The outcome the lifecycle's ``complete_task`` is told for a task that ended with ``task_outcome``."""
    return task_outcome if task_outcome in ("succeeded", "cancelled") else "failed"


# --- commands --------------------------------------------------------------------------------------


class Submit(msgspec.Struct, frozen=True, kw_only=True):
    name: ClassVar[str] = "submit"
    event: TaskSubmitted


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """Record a scheduling decision (anything after submission), checked against the task's state."""

    name: ClassVar[str] = "record"
    event: TaskEvent


Command = Submit | Record

#: Which events each state accepts.
ACCEPTS: dict[TaskStatus, tuple[type[TaskEvent], ...]] = {
    TaskStatus.QUEUED: (TaskAssigned, TaskSuspended, TaskCompleted, TaskCancelled),
    # A placed task is asked to stop first; ``task.cancelled`` only once its stopped attempt never started.
    TaskStatus.ASSIGNED: (TaskPreempted, TaskSuspended, TaskCompleted, TaskStopRequested, TaskCancelled),
    TaskStatus.PAUSED: (TaskResumed, TaskPreempted, TaskCompleted, TaskStopRequested, TaskCancelled),
    TaskStatus.DENIED: (TaskResumed, TaskCancelled),
    TaskStatus.COMPLETED: (),
    TaskStatus.CANCELLED: (),
}


def check_submission(event: TaskSubmitted) -> None:
    """Raise :class:`ValidationError` naming the field if the submission is malformed."""
    if event.priority not in LEVEL:
        raise ValidationError(f"must be one of {', '.join(PRIORITIES)}, got {event.priority!r}", field="priority")
    if len(event.input) > MAX_INPUT_BYTES:
        raise ValidationError(f"at most {MAX_INPUT_BYTES} bytes, got {len(event.input)}", field="input")
    for problem in check_request(event.resources):
        field, _, message = problem.partition(": ")
        raise ValidationError(message, field=field)


def decide(state: TaskState, command: Command) -> list[TaskEvent]:
    """The events ``command`` causes, or a typed error."""
    if isinstance(command, Submit):
        if state.exists:
            raise AlreadyExists(f"task {state.task_id} already exists; pick another id", task_id=state.task_id)
        check_submission(command.event)
        return [command.event]
    if state.status is None:
        raise NotFound(f"task {state.task_id} does not exist", task_id=state.task_id)
    if state.status in FINISHED:
        raise TaskFinished(state.task_id, state.status.value)
    event = command.event
    if not isinstance(event, ACCEPTS[state.status]):
        raise TaskNotAssignable(
            f"task {state.task_id} is {state.status.value}; {type(event).__name__} does not apply",
            task_id=state.task_id,
            status=state.status.value,
        )
    if isinstance(event, TaskSuspended) and (event.reason in PAUSE_REASONS) != (state.status == TaskStatus.ASSIGNED):
        # Only a placed task is paused in place; only a queued one is denied its placement.
        raise TaskNotAssignable(
            f"task {state.task_id} is {state.status.value}; task.suspended for {event.reason!r} does not apply",
            task_id=state.task_id,
            status=state.status.value,
        )
    if isinstance(event, TaskAssigned) and event.attempt != state.attempt + 1:
        raise ValidationError(f"must be {state.attempt + 1}, got {event.attempt}", field="attempt")
    if (
        isinstance(event, TaskPreempted | TaskSuspended | TaskResumed | TaskCompleted | TaskStopRequested)
        and event.attempt != state.attempt
    ):
        # Decided on an older attempt (e.g. by a leader deposed meanwhile): it says nothing of this one.
        raise TaskNotAssignable(
            f"task {state.task_id} is at attempt {state.attempt}; {type(event).__name__} of attempt "
            f"{event.attempt} does not apply",
            task_id=state.task_id,
            status=state.status.value,
        )
    if isinstance(event, TaskCompleted) and event.outcome not in OUTCOMES:
        raise ValidationError(f"must be one of {', '.join(OUTCOMES)}", field="outcome")
    if isinstance(event, TaskStopRequested):
        return _stop_request(state, event)
    if isinstance(event, TaskCancelled) and state.placed and (state.stop is None or state.stop.reason != "cancelled"):
        # A placed task ends only once its host reported its attempt's end, after a cancel was requested.
        raise TaskNotAssignable(
            f"task {state.task_id} is {state.status.value}; it is cancelled by a stop request of its attempt",
            task_id=state.task_id,
            status=state.status.value,
        )
    if isinstance(event, TaskResumed | TaskSuspended) and state.stop is not None:
        raise TaskNotAssignable(
            f"task {state.task_id} is being stopped ({state.stop.reason}); {type(event).__name__} does not apply",
            task_id=state.task_id,
            status=state.status.value,
        )
    return [event]


def _stop_request(state: TaskState, event: TaskStopRequested) -> list[TaskEvent]:
    """A stop request of the current attempt: recorded once; a cancel also after a preemption's request (the task
    then ends instead of going back to the queue), nothing after a cancel's."""
    if event.reason not in STOP_REASONS:
        raise ValidationError(f"must be one of {', '.join(STOP_REASONS)}, got {event.reason!r}", field="reason")
    if event.host_id != state.host_id:
        raise ValidationError(f"must be the task's host {state.host_id!r}, got {event.host_id!r}", field="host_id")
    if state.stop is not None and (state.stop.reason == "cancelled" or event.reason == "preempted"):
        return []  # asked already: the host is being asked to stop this attempt
    return [event]


#: The task aggregate type, as :class:`symbi_common.aggregate.Repository` expects it.
TASK: AggregateType[TaskState, Command, TaskEvent] = AggregateType(
    AGGREGATE_TYPE, CODEC, TaskState, initial, apply, decide
)


def task_data_key(state: TaskState, events: Sequence[TaskEvent]) -> str | None:
    """A task is sealed with its agent's key (:mod:`symbi_common.key_names`): its submission names the agent."""
    agent = state.agent_id or next((e.agent_id for e in events if isinstance(e, TaskSubmitted)), "")
    return agent_data_key(AGGREGATE_TYPE, agent) if agent else None
