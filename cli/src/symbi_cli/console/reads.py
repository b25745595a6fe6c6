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


async def task_groups(
    services: Services, states: tuple[str, ...] = TASK_STATES, after: str | None = None, limit: int = 50
) -> dict[str, dict[str, Any]]:
    """One page of each of ``states`` — queued (by priority), running, finished (newest first), as the scheduler
    orders them — after the scheduler's cursor ``after`` when given (a cursor of one state's list)."""
    pages = await asyncio.gather(
        *(services.get("scheduler", "/v1/tasks", state=state, limit=limit, after=after) for state in states)
    )
    return dict(zip(states, pages, strict=True))


async def host_of(services: Services) -> dict[str, Any] | None:
    """The sandbox host this runtime runs (None if it has none)."""
    try:
        host: dict[str, Any] = await services.get("sandbox-agent", "/v1/host")
        return host
    except ServiceCallFailed as exc:
        if exc.status in (0, 404):
            return None
        raise


async def agent_memories(services: Services, agent_id: str, limit: int = 50) -> dict[str, Any]:
    """The agent's own memories as the context service lists them to it (``memory.read`` decided there);
    ``{"error": …}`` when the context service refuses or cannot be reached (a 401 still ends the session)."""
    try:
        page: dict[str, Any] = await services.get("context", "/v1/memories", agent_id=agent_id, limit=limit)
        return page
    except ServiceCallFailed as exc:
        if exc.status == 401:
            raise
        return {"error": str(exc), "items": [], "total": 0}


async def agent_actions(services: Services, agent_id: str, operator: str, newest: int = 200) -> list[dict[str, Any]]:
    """The agent's gateway actions (``execution.action`` events) with their payloads where the policy lets this
    operator read them (``data.read``, decided by the audit service for the operator itself, never as the agent)."""
    latest = await audit_events(services, newest=newest, agent=agent_id, event_type="execution.action")
    if not latest:
        return []
    # Details only for the newest ones: the page that starts just before the first of them.
    after = int(latest[0]["sequence"]) - 1
    params = {"agent": agent_id, "event_type": "execution.action", "details": "true", "after": after, "limit": newest}
    response = await services.call(
        "audit", "GET", "/v1/audit/events", params=params, headers={"X-Symbi-Principal": operator}
    )
    rows: list[dict[str, Any]] = response.json()["items"]
    return rows
