"""Agents, the task lists and running the main job (one task's page: :mod:`symbi_cli.console.pages_task`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from symbi_cli.console.app import Ctx, CtxDep, path_id
from symbi_cli.console.reads import agent_actions, agent_memories, audit_events, recent_tasks, task_groups
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
async def agents(c: CtxDep) -> Response:
    page = await c.services.get("lifecycle", "/v1/agents", limit=200)
    latest: dict[str, dict[str, Any]] = {}
    for task in await recent_tasks(c.services, newest=1000):
        latest[task["agent_id"]] = task  # oldest first: the last one wins
    rows = [{"agent": a, "risk": agent_risk(a.get("config")), "task": latest.get(a["id"])} for a in page["items"]]
    return c.page("agents.html", rows=rows)


@router.get("/agents/{agent_id}", response_class=HTMLResponse)
async def agent(agent_id: str, c: CtxDep) -> Response:
    path_id(agent_id, "agent")
    view = await c.services.get("lifecycle", f"/v1/agents/{agent_id}")
    history = (await c.services.get("lifecycle", f"/v1/agents/{agent_id}/events", limit=500))["items"]
    audited = {e["sequence"]: e for e in await audit_events(c.services, newest=1000, agent=agent_id)}
    timeline = [{"event": h, "audit": audited.get(h["sequence"])} for h in history]
    related = [e for seq, e in sorted(audited.items()) if e["aggregate_type"] != "agent"]
    memories = await agent_memories(c.services, agent_id)
    messages = agent_messages(await agent_actions(c.services, agent_id, c.session.claims.sub))
    return c.page(
        "agent.html",
        agent=view,
        timeline=timeline,
        related=related,
        risk=agent_risk(view.get("config")),
        memories=memories,
        messages=messages,
    )


@router.get("/tasks", response_class=HTMLResponse)
async def tasks(c: CtxDep) -> Response:
    return c.page("tasks.html", **(await _tasks(c)))


@router.get("/tasks/live", response_class=HTMLResponse)
async def tasks_live(c: CtxDep) -> Response:
    return c.page("tasks_live.html", **(await _tasks(c)))


async def _tasks(c: Ctx) -> dict[str, Any]:
    status = await c.services.get("scheduler", "/v1/status")
    return {"groups": await task_groups(c.services), "status": status}


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
