"""Agents, the task lists and running the main job (one task's page: :mod:`symbi_cli.console.pages_task`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from symbi_common.errors import BadRequest

from symbi_cli.console import paging
from symbi_cli.console.app import Ctx, CtxDep, path_id
from symbi_cli.console.reads import (
    TASK_STATES,
    agent_actions,
    agent_memories,
    audit_events,
    recent_tasks,
    task_groups,
)
from symbi_cli.console.views import agent_messages, agent_risk

router = APIRouter()

DEFAULT_DEFINITION = """agent hello_agent(name: String) -> String {
  version = "1.0.0"
  description = "A minimal agent that greets whoever its input names"
  capabilities = [text.generate]
  workload = {image: "symbi/busybox:1", command: ["sh", "-c", "read name; echo hello $name"]}

  with sandbox = tier1, timeout = 30s, memory = 256MB, cpu = 0.5, network_io = 0 {
  }
}
"""


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/agents", status_code=303)


@router.get("/agents", response_class=HTMLResponse)
async def agents(c: CtxDep, cursor: str = "") -> Response:
    """One page of agents (ordered by id) and a link to the next: the lifecycle's cursor, passed through."""
    after = paging.cursor(cursor, "agents list")
    page = await c.services.get("lifecycle", "/v1/agents", limit=paging.AGENTS_PAGE, cursor=after)
    latest: dict[str, dict[str, Any]] = {}
    for task in await recent_tasks(c.services, newest=1000):
        latest[task["agent_id"]] = task  # oldest first: the last one wins
    rows = [{"agent": a, "risk": agent_risk(a.get("config")), "task": latest.get(a["id"])} for a in page["items"]]
    more = page.get("next_cursor")
    return c.page(
        "agents.html",
        rows=rows,
        paged=after is not None,
        next_link=paging.link("/agents", cursor=more) if more else None,
    )


@router.get("/agents/{agent_id}", response_class=HTMLResponse)
async def agent(agent_id: str, c: CtxDep, after: str = "") -> Response:
    """The agent, one page of its lifecycle timeline (oldest first, from version ``after`` on) with links to
    the older, newer and newest pages, and its related events, memory and messages."""
    path_id(agent_id, "agent")
    since = paging.position(after, "timeline")
    view = await c.services.get("lifecycle", f"/v1/agents/{agent_id}")
    size = paging.TIMELINE_PAGE
    path = f"/v1/agents/{agent_id}/events"
    read = (await c.services.get("lifecycle", path, after_version=since, limit=size + 1))["items"]
    history, more = read[:size], len(read) > size
    audited = await _audited(c, agent_id, history)
    timeline = [{"event": h, "audit": audited.get(h["sequence"])} for h in history]
    related = [e for e in await audit_events(c.services, newest=1000, agent=agent_id) if e["aggregate_type"] != "agent"]
    memories = await agent_memories(c.services, agent_id)
    messages = agent_messages(await agent_actions(c.services, agent_id, c.session.claims.sub))
    here = f"/agents/{agent_id}"
    newest = max(0, int(view.get("aggregate_version") or 0) - size)
    return c.page(
        "agent.html",
        agent=view,
        timeline=timeline,
        pages={
            "older": paging.link(here, after=max(0, since - size)) if since > 0 else None,
            "newer": paging.link(here, after=history[-1]["aggregate_version"]) if more and history else None,
            "newest": paging.link(here, after=newest) if more and newest > since else None,
        },
        related=related,
        risk=agent_risk(view.get("config")),
        memories=memories,
        messages=messages,
    )


async def _audited(c: Ctx, agent_id: str, history: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The audit service's record of each of these lifecycle events (by sequence): the agent's own events
    from the first of them on, as many as there are."""
    if not history:
        return {}
    first = int(history[0]["sequence"]) - 1
    page = await c.services.get(
        "audit", "/v1/audit/events", aggregate=f"agent.{agent_id}", after=first, limit=len(history)
    )
    return {int(e["sequence"]): e for e in page["items"]}


@router.get("/tasks", response_class=HTMLResponse)
async def tasks(c: CtxDep, state: str = "", after: str = "") -> Response:
    return c.page("tasks.html", **(await _tasks(c, state, after)))


@router.get("/tasks/live", response_class=HTMLResponse)
async def tasks_live(c: CtxDep, state: str = "", after: str = "") -> Response:
    return c.page("tasks_live.html", **(await _tasks(c, state, after)))


async def _tasks(c: Ctx, state: str, after: str) -> dict[str, Any]:
    """Every group's first page; or, with ``state``, that group's page after the scheduler's cursor ``after``.
    Each group links to its next page."""
    if state and state not in TASK_STATES:
        raise BadRequest(f"{state[:40]!r} is not a task group (one of {', '.join(TASK_STATES)})", field="state")
    if after and not state:
        raise BadRequest("a tasks cursor belongs to one group: name its state too", field="state")
    cursor = paging.cursor(after, "tasks list")
    status = await c.services.get("scheduler", "/v1/status")
    groups = await task_groups(c.services, (state,) if state else TASK_STATES, cursor, paging.TASKS_PAGE)
    nexts = {
        name: paging.link("/tasks", state=name, after=page["next_after"])
        for name, page in groups.items()
        if page.get("next_after")
    }
    here = paging.link("/tasks/live", state=state, after=after) if state else "/tasks/live"
    return {"groups": groups, "status": status, "nexts": nexts, "paged": bool(state), "live": here}


@router.get("/run", response_class=HTMLResponse)
async def run_form(c: CtxDep) -> Response:
    c.writer()
    await c.probe()
    return c.page("run.html", definition=DEFAULT_DEFINITION)


@router.post("/run")
async def run(
    definition: Annotated[str, Form()],
    c: CtxDep,
    task_input: Annotated[str, Form(alias="input")] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """The main job: register the agent from its definition, then queue one task for it with the input."""
    c.change(csrf)
    agent = await c.services.post("lifecycle", "/v1/agents", {"definition": definition, "file": "console.symbi"})
    if agent.get("state") != "Ready":
        return c.page("run.html", definition=definition, refused=agent)
    body = {"agent_id": agent["id"], "priority": "normal", "input": task_input}
    submitted = await c.services.post(
        "scheduler", "/v1/tasks", body, headers={"X-Submitted-By": f"console:{c.session.claims.sub}"}
    )
    return RedirectResponse(f"/tasks/{submitted['task_id']}", status_code=303)
