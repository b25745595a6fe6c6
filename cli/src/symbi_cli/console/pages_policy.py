"""Policy: the active sets, each set's version history, recent decisions with their reasons, and what-if."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, Response

from symbi_cli.console.app import CtxDep, path_id
from symbi_cli.console.reads import audit_events, recent_tasks
from symbi_cli.console.views import what_if_diff

router = APIRouter()


@router.get("/policy", response_class=HTMLResponse)
async def policy(c: CtxDep) -> Response:
    page = await c.services.get("policy", "/v1/policy-sets", include_retired="true")
    decisions: list[dict[str, Any]] = []
    for task in await recent_tasks(c.services, newest=20):
        if task.get("decision"):
            decisions.append({"subject": f"task {task['task_id']}", "agent": task["agent_id"], **task["decision"]})
    denials = await audit_events(c.services, newest=20, event_type="policy.action_denied")
    logged = await audit_events(c.services, newest=10, event_type="policy.decisions_logged")
    return c.page(
        "policy.html",
        sets=page["items"],
        version=page["policy_version"],
        halted=page.get("halted", {}),
        decisions=list(reversed(decisions)),
        denials=denials,
        logged=logged,
    )


@router.get("/policy/{set_id}", response_class=HTMLResponse)
async def policy_set(set_id: str, c: CtxDep) -> Response:
    path_id(set_id, "policy set")
    view = await c.services.get("policy", f"/v1/policy-sets/{set_id}")
    history = await audit_events(c.services, newest=100, aggregate=f"policy.{set_id}")
    return c.page("policy_set.html", set=view, history=history)


@router.post("/policy/{set_id}/what-if", response_class=HTMLResponse)
async def what_if(set_id: str, cedar: Annotated[str, Form()], c: CtxDep) -> Response:
    """Replays the recorded decisions against the proposed text; nothing is activated (so the auditor may)."""
    path_id(set_id, "policy set")
    report = await c.services.post("policy", f"/v1/policy-sets/{set_id}/what-if", {"cedar": cedar})
    return c.page("whatif.html", report=report, diff=what_if_diff(report))
