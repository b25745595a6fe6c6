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
    queued or denied ─► task.cancelled         (a placed task is terminated instead and completes as killed)

No I/O here: :mod:`symbi_scheduler.application` loads and appends through a repository.
"""

from __future__ import annotations

import enum
import re
from typing import ClassVar

import msgspec
from symbi_common.aggregate import AggregateType
from symbi_common.caps import lower_to_caps
from symbi_common.decisions import DecisionRecord
from symbi_common.errors import AlreadyExists, DomainError, NotFound, ValidationError
from symbi_common.events import Event, EventCodec
from symbi_lifecycle.config import CPU_CORES, EXECUTION_TIMEOUT_S, MEMORY_MB, ResourceLimits, Workload

AGGREGATE_TYPE = "task"

#: A task id is one NATS subject token (it names ``evt.task.<id>`` and ``evt.execution.<id>``).
TASK_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

PRIORITIES: tuple[str, ...] = ("low", "normal", "high", "critical")
LEVEL: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}
CRITICAL = LEVEL["critical"]

TIERS = ("tier1", "tier2")
#: Outcomes of ``task.completed``: the terminal execution event's kind, or ``lost`` with the host.
OUTCOMES = ("succeeded", "failed", "timed_out", "oom_killed", "killed", "refused", "lost")
MAX_INPUT_BYTES = 192 * 1024


class TaskError(DomainError):
    """Root of the scheduler's domain errors."""

    code = "task_error"


class TaskNotAssignable(TaskError):
    """The task cannot be given to its agent (no workload, agent not ready, or the task is finished)."""

    code = "task_not_assignable"
    http_status = 409


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


class ResourceRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one task asks for, instead of its agent's configured limits (each at most the agent's)."""

    cpu_cores: float | None = None
    memory_mb: int | None = None
    execution_timeout_s: float | None = None


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


# --- events ----------------------------------------------------------------------------------------


class TaskSubmitted(Event, frozen=True, tag="task.submitted"):
    """A task entered the queue. ``schedule`` names the agent's schedule that fired it, if any."""

    agent_id: str
    input: bytes
    priority: str
    resources: ResourceRequest | None = None
    submitted_by: str = ""
    schedule: str = ""


class TaskAssigned(Event, frozen=True, tag="task.assigned"):
    """The task was placed on a host; the sandbox-agent of ``host_id`` runs attempt ``attempt``."""

    host_id: str
    tier: str
    risk_score: float
    risk_factors: dict[str, float]
    workload: Workload
    limits: ResourceLimits
    attempt: int
    decision: DecisionRecord
    network_access: tuple[str, ...] = ()
    """The definition's network allow-list; empty: the sandbox gets no network."""
    risk_reason: str = ""


class TaskPreempted(Event, frozen=True, tag="task.preempted"):
    """The attempt was stopped and the task went back to the queue (``requeued``).

    ``reason`` is ``preempted`` (evicted for ``by_task``) or ``host_lost`` (its host stopped heartbeating).
    """

    host_id: str
    attempt: int
    reason: str
    by_task: str = ""
    requeued: bool = True


class TaskSuspended(Event, frozen=True, tag="task.suspended"):
    """The task stopped without leaving its place.

    ``reason`` ``preempted``: paused in place on ``host_id`` for ``by_task`` (its memory stays reserved).
    ``reason`` ``agent_suspended``: paused in place because its agent was suspended while it ran.
    ``reason`` ``action_denied``: the policy denied a request of the running workload (``decision``); the
    sandbox froze it already and the agent is suspended.
    ``reason`` ``policy_denied``: ``task.allocate`` was denied (``decision``); the agent is suspended too.
    """

    reason: str
    attempt: int
    host_id: str = ""
    by_task: str = ""
    decision: DecisionRecord | None = None


class TaskResumed(Event, frozen=True, tag="task.resumed"):
    """A paused task runs again on its host, or a denied task goes back to the queue."""

    reason: str
    attempt: int
    host_id: str = ""


class TaskCompleted(Event, frozen=True, tag="task.completed"):
    """The task ended; appended after the terminal execution event, before the capacity is freed."""

    outcome: str
    attempt: int
    host_id: str = ""
    exit_code: int | None = None
    detail: str = ""


class TaskCancelled(Event, frozen=True, tag="task.cancelled"):
    """The task was withdrawn (by a person, or because its agent was terminated)."""

    reason: str
    cancelled_by: str = ""


TaskEvent = TaskSubmitted | TaskAssigned | TaskPreempted | TaskSuspended | TaskResumed | TaskCompleted | TaskCancelled
EVENT_TYPES: tuple[type[TaskEvent], ...] = (
    TaskSubmitted,
    TaskAssigned,
    TaskPreempted,
    TaskSuspended,
    TaskResumed,
    TaskCompleted,
    TaskCancelled,
)
CODEC: EventCodec[TaskEvent] = EventCodec(EVENT_TYPES)


# --- state -----------------------------------------------------------------------------------------


class TaskState(msgspec.Struct, frozen=True, kw_only=True):
    """A task as its events left it; ``status`` is None until it is submitted. Snapshot-able."""

    task_id: str
    status: TaskStatus | None = None
    agent_id: str = ""
    priority: str = "normal"
    resources: ResourceRequest | None = None
    schedule: str = ""
    attempt: int = 0
    host_id: str = ""
    outcome: str = ""

    @property
    def exists(self) -> bool:
        return self.status is not None


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
            )
        case TaskAssigned():
            return r(state, status=TaskStatus.ASSIGNED, attempt=event.attempt, host_id=event.host_id)
        case TaskPreempted():
            return r(state, status=TaskStatus.QUEUED, host_id="")
        case TaskSuspended():
            return r(state, status=TaskStatus.PAUSED if event.reason in PAUSE_REASONS else TaskStatus.DENIED)
        case TaskResumed():
            return r(state, status=TaskStatus.ASSIGNED if state.status == TaskStatus.PAUSED else TaskStatus.QUEUED)
        case TaskCompleted():
            return r(state, status=TaskStatus.COMPLETED, outcome=event.outcome)
        case TaskCancelled():
            return r(state, status=TaskStatus.CANCELLED, outcome="cancelled")
    raise AssertionError(f"unknown event {event!r}")  # pragma: no cover - the union is exhaustive


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
    # A placed task is stopped on its host instead; it then completes as ``killed``.
    TaskStatus.ASSIGNED: (TaskPreempted, TaskSuspended, TaskCompleted),
    TaskStatus.PAUSED: (TaskResumed, TaskPreempted, TaskCompleted),
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
    if isinstance(event, TaskAssigned) and event.attempt != state.attempt + 1:
        raise ValidationError(f"must be {state.attempt + 1}, got {event.attempt}", field="attempt")
    if isinstance(event, TaskCompleted) and event.outcome not in OUTCOMES:
        raise ValidationError(f"must be one of {', '.join(OUTCOMES)}", field="outcome")
    return [event]


#: The task aggregate type, as :class:`symbi_common.aggregate.Repository` expects it.
TASK: AggregateType[TaskState, Command, TaskEvent] = AggregateType(
    AGGREGATE_TYPE, CODEC, TaskState, initial, apply, decide
)
