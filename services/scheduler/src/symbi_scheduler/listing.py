"""``GET /v1/tasks``: the tasks of the replica's one state, filtered by state and agent (no I/O).

States as an operator sees them: ``queued`` (waiting for a host, or for the policy to allow it again),
``running`` (placed: assigned or paused in place), ``finished`` (completed or cancelled). Queued tasks come
in scheduling order of priority (critical first), then the one that entered the queue first; running ones oldest first; finished
ones newest first. Without a state filter: queued, then running, then finished.

Paging: a page that is not the last carries ``next_after``, an opaque cursor naming the sort key of its last
task (the task id breaks ties); passing it back as ``after`` lists the tasks that sort after that one. A task
that stays in its state keeps its key, so paging neither skips nor repeats it; tasks that change state
meanwhile may appear on no page or on two.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

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
    #: How many tasks matched the filters (``items`` holds at most ``limit`` of them, after ``after``).
    total: int
    #: The cursor to pass as ``after`` for the next page; None on the last page.
    next_after: str | None = None


def check_filters(state: str | None, limit: int) -> None:
    """:class:`ValidationError` naming the field if ``state`` or ``limit`` is not one the list takes."""
    if state is not None and state not in STATES:
        raise ValidationError(f"must be one of {', '.join(STATES)}, got {state!r}", field="state")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"must be between 1 and {MAX_LIMIT}, got {limit}", field="limit")


_Key = tuple[Any, ...]


def _key(rec: TaskRec, state: str) -> _Key:
    if state == "queued":
        return (-rec.level, rec.queued_seq, rec.task_id)  # entered the queue first
    if state == "running":
        return (rec.submitted_at, rec.task_id)
    return (-(rec.finished_at or rec.submitted_at), rec.task_id)


def _ordered(recs: list[TaskRec], state: str) -> list[TaskRec]:
    return sorted(recs, key=lambda r: _key(r, state))


def encode_cursor(state: str, key: _Key) -> str:
    """The opaque ``after`` cursor of the task with sort ``key`` in ``state``."""
    raw = json.dumps([state, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(after: str, names: list[str]) -> tuple[int, _Key]:
    """The position in ``names`` and sort key an ``after`` cursor names; :class:`ValidationError` if not one."""
    try:
        raw = base64.urlsafe_b64decode(after + "=" * (-len(after) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        value = None
    shapes = {"queued": (int, int, str), "running": (float, str), "finished": (float, str)}
    if isinstance(value, list) and value and value[0] in names:
        state, key = value[0], tuple(value[1:])
        types = shapes[state]
        if len(key) == len(types) and all(
            isinstance(k, t) or (t is float and isinstance(k, int) and not isinstance(k, bool))
            for k, t in zip(key, types, strict=True)
        ):
            return names.index(state), key
    raise ValidationError("is not a cursor of this listing (pass back a next_after)", field="after")


def list_tasks(
    model: Model, now: float, *, state: str | None, agent: str | None, limit: int, after: str | None = None
) -> TaskList:
    """The tasks in ``state`` (every state when None) of ``agent`` (every agent when None), at most ``limit``,
    those that sort after the cursor ``after`` (a ``next_after``) when given."""
    check_filters(state, limit)
    groups: dict[str, list[TaskRec]] = {name: [] for name in STATES}
    for rec in model.tasks.values():
        if agent is not None and rec.agent_id != agent:
            continue
        for name, statuses in STATES.items():
            if rec.status in statuses:
                groups[name].append(rec)
    names = [state] if state is not None else list(STATES)
    start = decode_cursor(after, names) if after is not None else None
    matched = [(i, name, rec) for i, name in enumerate(names) for rec in _ordered(groups[name], name)]
    rest = [m for m in matched if start is None or (m[0], _key(m[2], m[1])) > start]
    page = rest[:limit]
    next_after = encode_cursor(page[-1][1], _key(page[-1][2], page[-1][1])) if len(rest) > limit else None
    return TaskList(items=[task_view(model, r, now) for _, _, r in page], total=len(matched), next_after=next_after)
