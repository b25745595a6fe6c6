"""Reads the pages share, each one or a few public API calls."""

from __future__ import annotations

import asyncio
from typing import Any

from symbi_cli.console.services import ServiceCallFailed, Services

#: The most pages of audit events one listing reads (1000 events each).
MAX_PAGES = 20


async def audit_events(services: Services, *, newest: int = 50, **filters: Any) -> list[dict[str, Any]]:
    """The newest ``newest`` events matching ``filters`` (audit API metadata), oldest first."""
    after, rows = 0, []
    for _ in range(MAX_PAGES):
        page = await services.get("audit", "/v1/audit/events", after=after, limit=1000, **filters)
        rows.extend(page["items"])
        rows = rows[-newest:]
        if page.get("next_after") is None or not page["items"]:
            break
        after = page["next_after"]
    return rows


#: The task groups of the tasks page, as the scheduler's ``GET /v1/tasks`` names its states.
TASK_STATES = ("queued", "running", "finished")


async def recent_tasks(services: Services, newest: int = 50) -> list[dict[str, Any]]:
    """The ``newest`` tasks most recently submitted, oldest first (the scheduler's list of every task)."""
    page = await services.get("scheduler", "/v1/tasks", limit=1000)
    tasks: list[dict[str, Any]] = sorted(page["items"], key=lambda t: t.get("submitted_at") or 0)
    return tasks[-newest:]


async def task_groups(services: Services, limit: int = 50) -> dict[str, dict[str, Any]]:
    """Queued (by priority), running and finished (newest first) tasks, as the scheduler orders them."""
    pages = await asyncio.gather(
        *(services.get("scheduler", "/v1/tasks", state=state, limit=limit) for state in TASK_STATES)
    )
    return dict(zip(TASK_STATES, pages, strict=True))


async def host_of(services: Services) -> dict[str, Any] | None:
    """The sandbox host this runtime runs (None if it has none)."""
    try:
        host: dict[str, Any] = await services.get("sandbox-agent", "/v1/host")
        return host
    except ServiceCallFailed as exc:
        if exc.status in (0, 404):
            return None
        raise
