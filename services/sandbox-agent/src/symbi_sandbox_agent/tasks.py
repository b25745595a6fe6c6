"""Reading the scheduler's ``task.<task_id>`` events (its contract, :mod:`symbi_contracts.scheduler.events`). Pure.

Event types this daemon does not know are read as :class:`OtherTaskEvent` instead of refused, and fields it
does not know are ignored, so the scheduler can add events and fields (with defaults) freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from symbi_common.events import Event, EventCodec
from symbi_contracts.scheduler.events import (
    EVENT_TYPES,
    TaskAssigned,
    TaskCancelled,
    TaskCompleted,
    TaskPreempted,
    TaskStopRequested,
    TaskSubmitted,
)
from symbi_contracts.scheduler.events import TaskEvent as KnownTaskEvent


class OtherTaskEvent(Event, frozen=True, kw_only=True, tag="task.other"):
    """A task event type this daemon's contracts do not name (written by a newer scheduler)."""

    event_type: str = ""


TaskEvent = KnownTaskEvent | OtherTaskEvent


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


TASK_CODEC: EventCodec[TaskEvent] = _TolerantCodec(EVENT_TYPES)


@dataclass(frozen=True, slots=True)
class TaskView:
    """What the sandbox-agent needs to know about a task, folded from its events."""

    task_id: str
    submitted: TaskSubmitted | None
    assigned: TaskAssigned | None
    ended: bool
    """Completed, cancelled or preempted after the latest assignment: nothing should run."""
    stop: TaskStopRequested | None = None
    """The stop request (cancel or preemption) of the latest assignment's attempt: it must not start."""

    @property
    def input(self) -> bytes:
        return self.submitted.input if self.submitted is not None else b""

    @property
    def agent_id(self) -> str:
        return self.submitted.agent_id if self.submitted is not None else ""


def fold_task(task_id: str, events: list[TaskEvent]) -> TaskView:
    submitted: TaskSubmitted | None = None
    assigned: TaskAssigned | None = None
    stop: TaskStopRequested | None = None
    ended = False
    for event in events:
        if isinstance(event, TaskSubmitted):
            submitted = event
        elif isinstance(event, TaskAssigned):
            assigned, ended, stop = event, False, None
        elif isinstance(event, TaskStopRequested):
            if assigned is not None and event.attempt == assigned.attempt:
                stop = event
        elif isinstance(event, TaskCompleted | TaskCancelled | TaskPreempted):
            ended = True
    return TaskView(task_id, submitted, assigned, ended, stop)


def refusal_reason(stop: TaskStopRequested) -> str:
    """Why an attempt with a stop request was refused, as its ``execution.refused`` says: who asked, and why."""
    by = f" by {stop.requested_by}" if stop.requested_by else ""
    why = f": {stop.detail}" if stop.detail else ""
    return f"stop requested before it started ({stop.reason}{by}){why}"
