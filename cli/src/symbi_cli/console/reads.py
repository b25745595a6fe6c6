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


async def recent_tasks(services: Services, newest: int = 50) -> list[dict[str, Any]]:
    """The scheduler's view of the tasks most recently submitted (found through their audit events)."""
    submitted = await audit_events(services, newest=newest, event_type="task.submitted")

    async def one(task_id: str) -> dict[str, Any] | None:
        try:
            task: dict[str, Any] = await services.get("scheduler", f"/v1/tasks/{task_id}")
            return task
        except ServiceCallFailed as exc:
            if exc.status == 404:
                return None
            raise

    found = await asyncio.gather(*(one(e["aggregate_id"]) for e in submitted))
    return [t for t in found if t is not None]


async def host_of(services: Services) -> dict[str, Any] | None:
    """The sandbox host this runtime runs (None if it has none)."""
    try:
        host: dict[str, Any] = await services.get("sandbox-agent", "/v1/host")
        return host
    except ServiceCallFailed as exc:
        if exc.status in (0, 404):
            return None
        raise
