"""``GET /v1/tasks``: the tasks of the replica's one state, filtered by state and agent (no I/O).

States as an operator sees them: ``queued`` (waiting for a host, or for the policy to allow it again),
``running`` (placed: assigned or paused in place), ``finished`` (completed or cancelled). Queued tasks come
in scheduling order of priority (critical first), then the one that entered the queue first; running ones oldest first; finished
ones newest first. Without a state filter: queued, then running, then finished.
"""

from __future__ import annotations

import msgspec
from symbi_common.errors import ValidationError

from symbi_scheduler.domain import TaskStatus
from symbi_scheduler.model import Model, TaskRec
from symbi_scheduler.projections import TaskView, task_view

STATES: dict[str, frozenset[TaskStatus]] = {
    "queued": frozenset({TaskStatus.QUEUED, TaskStatus.DENIED}),
    "running": frozenset({TaskStatus.ASSIGNED, TaskStatus.PAUSED}),
    "finished": frozenset({TaskStatus.COMPLETED, TaskStatus.CANCELLED}),
}
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


class TaskList(msgspec.Struct, kw_only=True):
    items: list[TaskView]
    #: How many tasks matched the filters (``items`` holds the first ``limit`` of them).
    total: int


def check_filters(state: str | None, limit: int) -> None:
    """:class:`ValidationError` naming the field if ``state`` or ``limit`` is not one the list takes."""
    if state is not None and state not in STATES:
        raise ValidationError(f"must be one of {', '.join(STATES)}, got {state!r}", field="state")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"must be between 1 and {MAX_LIMIT}, got {limit}", field="limit")


def _ordered(recs: list[TaskRec], state: str) -> list[TaskRec]:
    if state == "queued":
        return sorted(recs, key=lambda r: (-r.level, r.queued_seq, r.task_id))  # entered the queue first
    if state == "running":
        return sorted(recs, key=lambda r: (r.submitted_at, r.task_id))
    return sorted(recs, key=lambda r: (-(r.finished_at or r.submitted_at), r.task_id))


def list_tasks(model: Model, now: float, *, state: str | None, agent: str | None, limit: int) -> TaskList:
    """The tasks in ``state`` (every state when None) of ``agent`` (every agent when None), at most ``limit``."""
    check_filters(state, limit)
    groups: dict[str, list[TaskRec]] = {name: [] for name in STATES}
    for rec in model.tasks.values():
        if agent is not None and rec.agent_id != agent:
            continue
        for name, statuses in STATES.items():
            if rec.status in statuses:
                groups[name].append(rec)
    names = [state] if state is not None else list(STATES)
    matched = [rec for name in names for rec in _ordered(groups[name], name)]
    return TaskList(items=[task_view(model, rec, now) for rec in matched[:limit]], total=len(matched))
