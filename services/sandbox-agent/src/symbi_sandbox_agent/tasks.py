"""Reading the scheduler's ``task.<task_id>`` events: only the fields a sandbox needs. Pure.

The scheduler owns these events; the types here declare the fields this daemon reads (see the
contract in docs/contracts/tasks.md) with defaults, ignore any other field, and map event types
they do not know to :class:`OtherTaskEvent`, so the scheduler can add fields and events freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from symbi_common.decisions import DecisionRecord
from symbi_common.events import Event, EventCodec


class WorkloadSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The container each task runs in (``AgentConfig.workload``)."""

    image: str = ""
    command: tuple[str, ...] = ()
    env: dict[str, str] = msgspec.field(default_factory=dict)
    workdir: str = "/"
    actions: bool = False
    """Whether the workload uses the action gateway (stdin is then its reply channel)."""


class LimitSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The effective limits (``AgentConfig.resources`` after the scheduler's defaults and caps)."""

    memory_mb: int = 512
    cpu_cores: float = 1.0
    disk_io_mbps: int = 100
    network_io_mbps: int = 10
    execution_timeout_s: float = 300.0


class TaskSubmitted(Event, frozen=True, kw_only=True, tag="task.submitted"):
    agent_id: str = ""
    input: bytes = b""
    priority: str = "normal"
    submitted_by: str = ""


class TaskAssigned(Event, frozen=True, kw_only=True, tag="task.assigned"):
    host_id: str = ""
    tier: str = ""
    attempt: int = 1
    risk_score: float | None = None
    risk_factors: dict[str, float] = msgspec.field(default_factory=dict)
    workload: WorkloadSpec | None = None
    limits: LimitSpec = msgspec.field(default_factory=LimitSpec)
    network_access: tuple[str, ...] = ()
    """The definition's network allow-list; empty means the sandbox gets no network."""
    decision: DecisionRecord | None = None


class TaskPreempted(Event, frozen=True, kw_only=True, tag="task.preempted"):
    pass


class TaskSuspended(Event, frozen=True, kw_only=True, tag="task.suspended"):
    pass


class TaskResumed(Event, frozen=True, kw_only=True, tag="task.resumed"):
    pass


class TaskCompleted(Event, frozen=True, kw_only=True, tag="task.completed"):
    outcome: str = ""


class TaskCancelled(Event, frozen=True, kw_only=True, tag="task.cancelled"):
    pass


class OtherTaskEvent(Event, frozen=True, kw_only=True, tag="task.other"):
    """A task event type this daemon does not read."""

    event_type: str = ""


TaskEvent = (
    TaskSubmitted
    | TaskAssigned
    | TaskPreempted
    | TaskSuspended
    | TaskResumed
    | TaskCompleted
    | TaskCancelled
    | OtherTaskEvent
)


class _TolerantCodec(EventCodec[TaskEvent]):
    def decode(
        self,
        data: bytes,
        *,
        event_type: str,
        schema_version: int | None = None,
        sequence: int | None = None,
        subject: str | None = None,
    ) -> Any:
        if event_type not in self.tags:
            return OtherTaskEvent(event_type=event_type)
        return super().decode(
            data, event_type=event_type, schema_version=schema_version, sequence=sequence, subject=subject
        )


TASK_CODEC: EventCodec[TaskEvent] = _TolerantCodec(
    [TaskSubmitted, TaskAssigned, TaskPreempted, TaskSuspended, TaskResumed, TaskCompleted, TaskCancelled]
)


@dataclass(frozen=True, slots=True)
class TaskView:
    """What the sandbox-agent needs to know about a task, folded from its events."""

    task_id: str
    submitted: TaskSubmitted | None
    assigned: TaskAssigned | None
    ended: bool
    """Completed, cancelled or preempted after the latest assignment: nothing should run."""

    @property
    def input(self) -> bytes:
        return self.submitted.input if self.submitted is not None else b""

    @property
    def agent_id(self) -> str:
        return self.submitted.agent_id if self.submitted is not None else ""


def fold_task(task_id: str, events: list[TaskEvent]) -> TaskView:
    submitted: TaskSubmitted | None = None
    assigned: TaskAssigned | None = None
    ended = False
    for event in events:
        if isinstance(event, TaskSubmitted):
            submitted = event
        elif isinstance(event, TaskAssigned):
            assigned, ended = event, False
        elif isinstance(event, TaskCompleted | TaskCancelled | TaskPreempted):
            ended = True
    return TaskView(task_id, submitted, assigned, ended)
